"""The project works however it is installed: in a virtualenv as well as system-wide (CI's way).
A copy of the project is installed into a fresh virtualenv; the CLI, the runtime and the peers'
environment (tools/peers_env.py) must all use that copy, not whatever the base interpreter has."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_virtualenv_install_is_what_runs(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "site", "build", "*.egg-info", "__pycache__",
                                                             "runs", "bundles", "pipeline-out", ".pytest_cache"))
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
    py = env / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(copy)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import vae_edge.runtime as r; print(r.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(copy)), where
    cli = subprocess.run([str(env / "bin" / "vae-edge"), "sample", "-n", "2", "-o", str(tmp_path / "s.png")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and (tmp_path / "s.png").is_file(), cli.stderr
    # the peers' environment made from inside the virtualenv sees the virtualenv's packages
    code = (f"import sys, venv, subprocess; sys.path.insert(0, {str(copy)!r}); from tools import peers_env; "
            f"e = {str(tmp_path / 'peers')!r}; venv.EnvBuilder(system_site_packages=True).create(e); "
            "own = subprocess.run([e + '/bin/python', '-c', 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'],"
            " capture_output=True, text=True).stdout.strip(); "
            "open(own + '/_vae_edge_parent.pth', 'w').write(chr(10).join(peers_env._parent_sites()))")
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    seen = subprocess.run([str(tmp_path / "peers" / "bin" / "python"), "-c",
                           "import vae_edge.runtime as r; print(r.__file__)"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert seen.stdout.strip().startswith(str(copy)), (seen.stdout, seen.stderr[-500:])
    assert sys.prefix != str(env)


@pytest.mark.slow
def test_the_wheel_ships_bundles_without_torch_checkpoints(tmp_path):
    """A wheel carries the shipped bundles (signed, verified at load) but not the torch-only
    model.pt files (2.9 MB a device never reads); installed, it samples from a shipped model, and
    what needs a checkpoint says so in one line."""
    import zipfile

    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "site", "build", "*.egg-info", "__pycache__",
                                                             "runs", "bundles", "pipeline-out", ".pytest_cache"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(copy)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("vae_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".pt")], names
    for model in ("mlp-mnist", "conv-mnist", "conv-cond-mnist"):
        assert f"vae_edge/pretrained/{model}/bundle/manifest.json" in names
        assert f"vae_edge/pretrained/{model}/bundle/model.sig" in names
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
    py = env / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    exe = str(env / "bin" / "vae-edge")
    out = subprocess.run([exe, "sample", "-n", "2", "-o", str(tmp_path / "s.png")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "s.png").is_file(), out.stderr
    where = subprocess.run([str(py), "-c", "import vae_edge; print(vae_edge.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert where.stdout.strip().startswith(str(env)), where
    piped = subprocess.run([exe, "pipeline", "--out", str(tmp_path / "p")], capture_output=True, text=True, cwd=tmp_path)
    assert piped.returncode == 1 and "a wheel install leaves them out" in piped.stderr, piped.stderr
    assert len(piped.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
