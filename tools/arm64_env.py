"""An emulated ARM64 Python for the tests: Debian's qemu-user-static, Debian's arm64 python3.11
and the libraries it links (unpacked with dpkg -x, no install), and PyPI's aarch64 wheels of the
runtime's dependencies. Cached under ~/.cache/vae-edge/arm64 (or $VAE_EDGE_ARM64_CACHE).

System part (root, once per machine; `.ci/run` does it):
    apt-get install qemu-user-static && dpkg --add-architecture arm64 && apt-get update
Everything else is done here, without root.

onnxruntime 1.27.0: 1.32 crashes at import under qemu 7.2 whatever the CPU model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("VAE_EDGE_ARM64_CACHE", Path.home() / ".cache" / "vae-edge" / "arm64"))
DEBS = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g",
    "libffi8", "libssl3", "libgcc-s1", "libstdc++6", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1",
    "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libnsl2", "libtirpc3", "libkrb5-3",
    "libgssapi-krb5-2", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1",
]
WHEELS = ["onnxruntime==1.27.0", "numpy==2.4.6", "pillow==13.0.0", "click==8.5.1", "cryptography==48.0.0"]
PLATFORMS = ["manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]


class SetupError(RuntimeError):
    pass


@dataclass
class Arm64Python:
    qemu: str
    root: Path
    site: Path

    def command(self, *args: str) -> list[str]:
        return [self.qemu, "-L", str(self.root), str(self.root / "usr/bin/python3.11"), *args]

    def run(self, args: list[str], cpu: str, stage: Path, timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(QEMU_CPU=cpu, PYTHONPATH=f"{stage}:{self.site}", PYTHONDONTWRITEBYTECODE="1",
                   HOME=str(stage.parent))
        return subprocess.run(self.command(*args), env=env, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd or stage.parent)


def _run(cmd: list[str], what: str, cwd=None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise SetupError(f"{what} failed: {' | '.join(tail)}")


def ensure() -> Arm64Python:
    """Build (or reuse) the emulated environment; SetupError says what is missing."""
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        raise SetupError("qemu-aarch64-static not found: apt-get install qemu-user-static")
    root = CACHE / "root"
    done = root / ".complete"
    if not done.is_file() or done.read_text() != "\n".join(DEBS):  # made for another package list: rebuilt
        archs = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True).stdout
        if "arm64" not in archs.split():
            raise SetupError("dpkg has no arm64 architecture: dpkg --add-architecture arm64 && apt-get update")
        debs = CACHE / "debs"
        shutil.rmtree(debs, ignore_errors=True)
        debs.mkdir(parents=True)
        _run(["apt-get", "download", *[f"{d}:arm64" for d in DEBS]], "apt-get download (arm64 packages)", cwd=debs)
        shutil.rmtree(root, ignore_errors=True)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
        (root / ".complete").write_text("\n".join(DEBS))
    key = hashlib.sha256(" ".join(WHEELS).encode()).hexdigest()[:12]
    site = CACHE / f"site-{key}"
    if not (site / ".complete").is_file():
        shutil.rmtree(site, ignore_errors=True)
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), *plat, "--only-binary=:all:",
              "--python-version", "3.11", "--implementation", "cp", *WHEELS], "pip download of aarch64 wheels")
        (site / ".complete").write_text(" ".join(WHEELS))
    return Arm64Python(qemu, root, site)


def stage_project(dest: Path) -> Path:
    """The project's importable code as an installed layout (vae_edge, vae_edge.runtime), for the
    emulated Python's path. export/ stays out: it needs torch, which a device does not have."""
    stage = dest / "stage"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "vae_edge", stage / "vae_edge", ignore=ignore)
    shutil.copytree(ROOT / "runtime", stage / "vae_edge" / "runtime", ignore=ignore)
    return stage
