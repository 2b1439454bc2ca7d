"""A Python with the peer runtimes (ExecuTorch, LiteRT) for tests/test_peers.py: a virtual
environment over this one (torch 2.13 and vae-edge come from here, whether this is a virtualenv or
a system-wide install: tools/envs.py) with the `[peers]` pins installed, cached under
~/.cache/vae-edge/peers (or $VAE_EDGE_PEERS_CACHE). Kept apart from the main environment because
the peers pull in their own pins of shared packages.

The cache is keyed on everything the environment depends on: the pins, this interpreter, its site
folders, and the vae-edge it must import (version, where it is installed, its package layout in
pyproject.toml). An environment that no longer imports what the tests need is rebuilt.

    python tools/peers_env.py      # build it ahead (what .ci/run does)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.envs import env_python, make_child_env, parent_sites  # noqa: E402

PINS = ["executorch==1.5.1", "ai-edge-litert==2.3.0", "litert-torch==0.10.0", "torch==2.13.0"]
CACHE = Path(os.environ.get("VAE_EDGE_PEERS_CACHE", Path.home() / ".cache" / "vae-edge" / "peers"))
ROOT = Path(__file__).resolve().parents[1]
# What the tests import there: the peers, and vae-edge's own packages from this environment.
PROBE = ("import executorch, ai_edge_litert, torch, vae_edge, vae_edge.runtime, vae_edge.export, vae_edge.train; "
         "print(vae_edge.runtime.__file__)")


def _vae_edge_fingerprint() -> str:
    """Where this environment's vae-edge is and how it is laid out (not its code: an editable
    install's edits need no rebuild)."""
    try:
        import vae_edge
        import vae_edge.runtime as runtime

        where = f"{vae_edge.__version__}|{vae_edge.__file__}|{runtime.__file__}"
    except ImportError as e:
        where = f"not importable: {e}"
    layout = (ROOT / "pyproject.toml").read_bytes() if (ROOT / "pyproject.toml").is_file() else b""
    return where + "|" + hashlib.sha256(layout).hexdigest()


def env_key() -> str:
    parts = PINS + [sys.version, sys.prefix, *parent_sites(), _vae_edge_fingerprint()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _works(python: Path) -> bool:
    res = subprocess.run([str(python), "-W", "ignore", "-c", PROBE], capture_output=True, text=True,
                         cwd=str(CACHE.parent), timeout=300)
    return res.returncode == 0


def peers_python() -> Path:
    env = CACHE / f"venv-{env_key()}"
    python = env_python(env)
    if (env / ".complete").is_file() and _works(python):
        return python
    make_child_env(env, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
    if not _works(python):
        res = subprocess.run([str(python), "-W", "ignore", "-c", PROBE], capture_output=True, text=True)
        raise RuntimeError(f"the peers' environment {env} does not import what the tests need: "
                           f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    (env / ".complete").write_text(" ".join(PINS) + "\n")
    return python


if __name__ == "__main__":
    print(peers_python())
