"""The project works however it is installed: in a virtualenv as well as system-wide (CI's way).
A copy of the project is installed into a fresh virtualenv; the CLI, the runtime and the peers'
environment (tools/peers_env.py) must all use that copy, not whatever the base interpreter has."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.envs import make_child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_virtualenv_install_is_what_runs(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "site", "build", "*.egg-info", "__pycache__",
                                                             "runs", "bundles", "pipeline-out", ".pytest_cache"))
    env = tmp_path / "venv"
    py = make_child_env(env)  # sees this environment's packages, a virtualenv's too
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
    code = (f"import sys; sys.path.insert(0, {str(copy)!r}); from tools.envs import make_child_env; "
            f"make_child_env({str(tmp_path / 'peers')!r}, with_pip=False)")
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
    for model in ("mlp-mnist", "conv-mnist", "conv-cond-mnist", "conv-mnist8", "conv-fashion8"):
        assert f"vae_edge/pretrained/{model}/bundle/manifest.json" in names
        assert f"vae_edge/pretrained/{model}/bundle/model.sig" in names
    assert "vae_edge/pretrained/conv-mnist8/bundle/portable.npz" in names  # its files open on any device
    env = tmp_path / "venv"
    py = make_child_env(env)
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


def _requirement_names(reqs: list[str], extras: dict[str, list[str]]) -> set[str]:
    """Distribution names of a requirement list, self-references (vae-edge[a,b]) expanded."""
    import re

    out: set[str] = set()
    for r in reqs:
        name = re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower()
        if name == "vae-edge":
            for extra in re.search(r"\[(.*)\]", r).group(1).split(","):
                out |= _requirement_names(extras[extra.strip()], extras)
        else:
            out.add(name)
    return out


def test_every_install_hint_names_the_extra_that_brings_the_package():
    """One table (vae_edge.PACKAGES) says where each imported package comes from; every entry is
    true of pyproject.toml, and every third-party package the code imports has an entry."""
    import ast

    from vae_edge import PACKAGES, install_hint

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    base = _requirement_names(project["dependencies"], extras)
    for module, (dist, extra) in PACKAGES.items():
        if extra is None:
            assert dist in base, (module, dist)
            assert "base install" in install_hint(module)
        else:
            assert dist in _requirement_names(extras[extra], extras), (module, dist, extra)
            assert f"vae-edge[{extra}]" in install_hint(module)
    imported: set[str] = set()
    for folder in ("vae_edge", "export", "runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"vae_edge", "tools", "__future__"}
    assert third_party <= set(PACKAGES), sorted(third_party - set(PACKAGES))


@pytest.mark.parametrize("missing, says", [("onnxruntime", "pip install 'onnxruntime' (it is part of vae-edge's base"),
                                           ("torch", "pip install 'vae-edge[train]'")])
def test_a_missing_package_is_named_with_what_installs_it(tmp_path, missing, says):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] == {missing!r}:\n"
            f"            raise ModuleNotFoundError('No module named ' + repr(name), name={missing!r})\n"
            "sys.meta_path.insert(0, Block())\n"
            "from vae_edge.cli import main\n"
            "sys.argv = ['vae-edge'] + sys.argv[1:]\n"
            "main()\n")
    args = ["sample", "-n", "1", "-o", str(tmp_path / "s.png")] if missing == "onnxruntime" else [
        "train", "--epochs", "1", "--out", str(tmp_path / "run")]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and says in lines[0], res.stderr


def test_a_stale_peers_environment_is_not_reused(tmp_path, monkeypatch):
    """The peers' environment is keyed on what it depends on (the project's layout among it), and
    one that does not import what the tests need (made by an older revision, say) is rebuilt."""
    from tools import peers_env

    key = peers_env.env_key()
    monkeypatch.setattr(peers_env, "ROOT", tmp_path)  # another layout: another key
    assert peers_env.env_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(peers_env, "CACHE", tmp_path)
    stale = tmp_path / f"venv-{peers_env.env_key()}"
    (stale / "bin").mkdir(parents=True)
    (stale / "bin" / "python").write_text("#!/bin/sh\necho 'No module named vae_edge.runtime' >&2; exit 1\n")
    (stale / "bin" / "python").chmod(0o755)
    (stale / ".complete").write_text("made by an older revision\n")

    def rebuild(env, **kw):
        raise RuntimeError(f"rebuilt {env}")

    monkeypatch.setattr(peers_env, "make_child_env", rebuild)
    with pytest.raises(RuntimeError, match="rebuilt"):
        peers_env.peers_python()
