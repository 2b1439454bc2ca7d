"""A Python with the peer runtimes (ExecuTorch, LiteRT) for tests/test_peers.py: a virtual
environment over this one (--system-site-packages: torch 2.13 and vae-edge come from here) with
the `[peers]` pins installed, cached under ~/.cache/vae-edge/peers (or $VAE_EDGE_PEERS_CACHE).
Kept apart from the main environment because the peers pull in their own pins of shared packages.

    python tools/peers_env.py      # build it ahead (what .ci/run does)
"""

from __future__ import annotations

import hashlib
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

PINS = ["executorch==1.5.1", "ai-edge-litert==2.3.0", "litert-torch==0.10.0", "torch==2.13.0"]
CACHE = Path(os.environ.get("VAE_EDGE_PEERS_CACHE", Path.home() / ".cache" / "vae-edge" / "peers"))


def _parent_sites() -> list[str]:
    """This interpreter's own site-packages: a virtualenv's, when it runs in one. The peers'
    environment sees them after its own (a .pth file), so torch and vae-edge come from the
    environment the tests run in, whether that is a virtualenv or a system-wide install."""
    sites = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return list(dict.fromkeys(s for s in sites if os.path.isdir(s)))


def peers_python() -> Path:
    key = hashlib.sha256(" ".join(PINS + [sys.version, sys.prefix]).encode()).hexdigest()[:12]
    env = CACHE / f"venv-{key}"
    python = env / "bin" / "python"
    if (env / ".complete").is_file():
        return python
    venv.EnvBuilder(system_site_packages=True, clear=True, with_pip=True).create(env)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    Path(own, "_vae_edge_parent.pth").write_text("\n".join(_parent_sites()) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
    (env / ".complete").write_text(" ".join(PINS) + "\n")
    return python


if __name__ == "__main__":
    print(peers_python())
