"""The documentation cannot drift: the README's quick start runs as written, the CLI reference is
generated from the commands and holds every command and option, and the site builds --strict
(after sqlite-utils' tests/test_docs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from vae_edge.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def _block(markdown: str, heading: str) -> str:
    section = markdown.split(f"\n## {heading}\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 300
    first_screen = "\n".join(lines[:40])
    assert "vae-edge pipeline --out pipeline-out" in first_screen and "python -m pytest -q" in first_screen


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path, mnist_dir):
    """Each line of the README's quick start, in a fresh folder beside a shared/ like the checkout's.
    Costs about 40 s (one epoch of the MLP on 60,000 digits, export, quantize)."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "mnist").symlink_to(mnist_dir)
    block = _block((ROOT / "README.md").read_text(), "Quick start")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (work / "samples.png").is_file() and (work / "recon.png").is_file()
    assert (work / "bundles" / "mlp" / "decoder.int8-dynamic.onnx").is_file()


@pytest.mark.slow
def test_bring_your_own_vae_worked_example_runs_as_written(tmp_path):
    """docs/byo.md's worked example, line by line: a ten-line module to a quantized bundle, its
    commands, the benchmark against the module and the page (about 30 s)."""
    import json

    block = _block((ROOT / "docs" / "byo.md").read_text(), "Worked example: a ten-line module to a page on a phone")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 64
    assert (tmp_path / "mine" / "decoder.int8-static.onnx").is_file() and (tmp_path / "bench" / "bench.md").is_file()
    config = json.loads((tmp_path / "site" / "config.json").read_text())
    assert config["model"]["image_shape"] == [3, 16, 16] and set(config["variants"]) == {"fp32", "int8-static"}


def _commands(group: click.Group, prefix: str = "vae-edge"):
    for name, cmd in group.commands.items():
        yield f"{prefix} {name}", cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, f"{prefix} {name}")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_docs_build_strict_and_reference_every_command_and_option(site):
    html = (site / "cli" / "index.html").read_text()
    missing = []
    for path, cmd in _commands(cli):
        if path.split()[-1] not in html:
            missing.append(path)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in param.opts:
                    if opt not in html:
                        missing.append(f"{path} {opt}")
    assert not missing, f"not in the CLI reference: {missing}"


def test_every_page_is_in_the_nav_and_links_resolve(site):
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"
        assert (site / ("" if page.stem == "index" else page.stem) / "index.html").is_file()
    for link in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_shipped_and_exported_manifests_follow_the_published_schema(bundles):
    """docs/bundle.schema.json is the format's contract for readers in other languages: what vae-edge
    writes must validate, and what its reader refuses, the schema refuses too."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "docs" / "bundle.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    from vae_edge.runtime import shipped_bundles

    for path in [*shipped_bundles().values(), *bundles.values()]:
        jsonschema.validate(json.loads((Path(path) / "manifest.json").read_text()), schema)
    bad = json.loads((Path(bundles["mlp"]) / "manifest.json").read_text())
    for name in ("../decoder.onnx", "/etc/passwd", "sub/x.onnx", ".."):
        bad["variants"]["fp32"]["files"]["decoder"] = name
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
