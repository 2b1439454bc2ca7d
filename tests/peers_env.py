"""A Python with the peer runtimes (ExecuTorch, LiteRT) for tests/test_peers.py: a virtual
environment over this one (--system-site-packages: torch 2.13 and vae-edge come from here) with
the `[peers]` pins installed, cached under ~/.cache/vae-edge/peers (or $VAE_EDGE_PEERS_CACHE).
Kept apart from the main environment because the peers pull in their own pins of shared packages.

    python tests/peers_env.py      # build it ahead (what .ci/run does)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

PINS = ["executorch==1.5.1", "ai-edge-litert==2.3.0", "litert-torch==0.10.0", "torch==2.13.0"]
CACHE = Path(os.environ.get("VAE_EDGE_PEERS_CACHE", Path.home() / ".cache" / "vae-edge" / "peers"))


def peers_python() -> Path:
    key = hashlib.sha256(" ".join(PINS + [sys.version]).encode()).hexdigest()[:12]
    env = CACHE / f"venv-{key}"
    python = env / "bin" / "python"
    if (env / ".complete").is_file():
        return python
    venv.EnvBuilder(system_site_packages=True, clear=True, with_pip=True).create(env)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
    (env / ".complete").write_text(" ".join(PINS) + "\n")
    return python


if __name__ == "__main__":
    print(peers_python())
