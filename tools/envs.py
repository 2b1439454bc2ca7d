"""Environments a tool or test makes for itself, over the environment it runs in.

A virtual environment made with ``system_site_packages=True`` sees the *base* interpreter's
packages, not those of a virtualenv it was made from: from inside a virtualenv, the packages the
user installed (torch, onnxruntime, vae-edge itself) would be missing. `make_child_env` makes an
environment that sees this interpreter's own site folders, whatever kind of install this is
(virtualenv, conda-like prefix, system-wide), through a ``.pth`` file that runs
``site.addsitedir`` on each, so their own ``.pth`` files (an editable install's finder) take
effect there too. Its own packages come first.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

PTH = "_vae_edge_parent.pth"


def parent_sites() -> list[str]:
    """This interpreter's site folders, in the order it uses them (a virtualenv's own first)."""
    sites = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        sites.append(site.getusersitepackages())
    return list(dict.fromkeys(s for s in sites if os.path.isdir(s)))


def env_python(env: Path) -> Path:
    return Path(env) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def link_parent(env: Path) -> Path:
    """Write the .pth that lets `env` see this interpreter's site folders; returns its path."""
    own = subprocess.run([str(env_python(env)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"import site; site.addsitedir({s!r})" for s in parent_sites()]
    path = Path(own) / PTH
    path.write_text("\n".join(lines) + "\n")
    return path


def make_child_env(env: Path, with_pip: bool = True, clear: bool = False) -> Path:
    """A virtual environment at `env` that sees this interpreter's packages after its own."""
    venv.EnvBuilder(system_site_packages=False, clear=clear, with_pip=with_pip).create(env)
    link_parent(env)
    return env_python(env)


def in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)
