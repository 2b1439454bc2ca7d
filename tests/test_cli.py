from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.cli import cli


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path", [p for p, _ in _commands(cli)], ids=lambda p: " ".join(p))
def test_every_command_has_help_with_example(runner, path):
    res = runner.invoke(cli, [*path, "--help"])
    assert res.exit_code == 0 and "Example" in res.output, res.output


def test_help_starts_without_torch():
    code = "import sys; from vae_edge.cli import cli; cli(['--help'], standalone_mode=False); assert 'torch' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _one_line_error(res, match: str):
    assert res.exit_code != 0
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in res.output, res.output


def test_on_device_commands(runner, tmp_path, quantized, mnist_dir):
    b = ["--bundle", str(quantized)]
    d = ["--data-dir", str(mnist_dir)]
    out = tmp_path
    r = runner.invoke(cli, ["sample", "-n", "9", *b, "-o", str(out / "s.png"), "--variant", "int8-static"])
    assert r.exit_code == 0, r.output
    with Image.open(out / "s.png") as im:
        assert im.size == (2 * (3 * 30 + 2),) * 2
    r = runner.invoke(cli, ["reconstruct", "mnist:test[0:4]", *d, *b, "-o", str(out / "r.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["interpolate", "mnist:test[0:1]", "mnist:test[1:2]", "--steps", "5", *d, *b, "-o", str(out / "m.gif")])
    assert r.exit_code == 0, r.output
    with Image.open(out / "m.gif") as im:
        assert im.n_frames == 8  # forward and back
    r = runner.invoke(cli, ["denoise", "mnist:test[0:3]", "--noise", "mask:rect", "--demo", *d, *b, "-o", str(out / "d.png")])
    assert r.exit_code == 0 and "MSE" in r.output, r.output
    r = runner.invoke(cli, ["encode", "mnist:test[0:5]", *d, *b, "-o", str(out / "z.npy")])
    assert r.exit_code == 0 and np.load(out / "z.npy").shape == (5, 8), r.output
    r = runner.invoke(cli, ["decode", str(out / "z.npy"), *b, "-o", str(out / "dz.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["score", "mnist:test[0:2]", str(out / "s.png"), *d, *b, "--json"])
    rows = json.loads(r.output)
    assert [x["input"] for x in rows] == ["mnist:test[0:2]#0", "mnist:test[0:2]#1", str(out / "s.png")]
    r = runner.invoke(cli, ["info", *b, "--json"])
    info = json.loads(r.output)
    assert "CPUExecutionProvider" in info["environment"]["providers_available"]
    assert {v["variant"] for v in info["bundle"]["variants"]} == {"fp32", "int8-dynamic", "int8-static", "fp16"}


@pytest.mark.parametrize("args,match", [
    (["sample", "-n", "0"], "n must be between"),
    (["sample", "--digit", "3"], "conditional"),
    (["sample", "--variant", "int3"], "unknown variant"),
    (["sample", "--provider", "tensorrt"], "install onnxruntime-gpu"),
    (["sample", "--provider", "warp"], "unknown provider"),
    (["sample", "--provider-option", "oops"], "key=value"),
    (["reconstruct", "NOFILE.png"], "does not exist"),
    (["denoise", "NOFILE.png", "--noise", "blur:3"], "unknown noise"),
    (["interpolate", "A.png", "B.png", "--steps", "1"], "does not exist"),
    (["reconstruct", "mnist:test[5]"], "is not a dataset slice: write DATASET:SPLIT[A:B]"),
    (["reconstruct", "mnist:tset[0:3]"], "is not a dataset slice"),
    (["reconstruct", "mnist:test[a:b]"], "e.g. mnist:test[0:16]"),
    (["denoise", "mnist:test[0:2]", "--noise", "gaussian:-1"], "gaussian noise takes SIGMA, a positive number"),
    (["denoise", "mnist:test[0:2]", "--noise", "mask:circle"], "mask takes rect"),
    (["sample", "-n", "100000"], "one image file holds at most 4096: write .npy"),
])
def test_errors_are_one_line_and_write_nothing(runner, tmp_path, quantized, args, match):
    out = tmp_path / "out.png"
    res = runner.invoke(cli, [*args, "--bundle", str(quantized), "-o", str(out)])
    _one_line_error(res, match)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_latents_and_output(runner, tmp_path, quantized):
    z = tmp_path / "z.npy"
    np.save(z, np.full((2, 8), np.nan, np.float32))
    _one_line_error(runner.invoke(cli, ["decode", str(z), "--bundle", str(quantized), "-o", str(tmp_path / "o.png")]), "NaN")
    np.save(z, np.zeros((2, 5), np.float32))
    _one_line_error(runner.invoke(cli, ["decode", str(z), "--bundle", str(quantized), "-o", str(tmp_path / "o.png")]), "shape")
    _one_line_error(runner.invoke(cli, ["sample", "--bundle", str(quantized), "-o", str(tmp_path / "o.txt")]), "must end in")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]


def test_tampered_bundle_cli(runner, tmp_path, bundle_copy):
    with open(bundle_copy / "decoder.onnx", "ab") as f:
        f.write(b"x")
    _one_line_error(runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "-o", str(tmp_path / "o.png")]), "sha256")
    _one_line_error(runner.invoke(cli, ["quantize", str(bundle_copy), "--mode", "dynamic"]), "sha256")


def test_train_evaluate_export_quantize_cli(runner, tmp_path, mnist_dir):
    d = ["--data-dir", str(mnist_dir)]
    r = runner.invoke(cli, ["train", "--hidden", "64", "--dec-hidden", "48", "--depth", "2", "--iw-k", "3", "--latent-dim", "4",
                            "--max-steps", "20", "--out", str(tmp_path / "run"), *d])
    assert r.exit_code == 0, r.output
    from vae_edge.train import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["config"]["dec_hidden"] == 48 and ckpt["train_config"]["iw_k"] == 3
    assert ckpt["model"]["dec.2.weight"].shape == (48, 48) and ckpt["model"]["enc.2.weight"].shape == (64, 64)
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "run" / "model.pt"), "--iw-samples", "10", "--limit", "20", "--json", *d])
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["images"] == 20 and res["iw_samples"] == 10
    r = runner.invoke(cli, ["export", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "b"), *d])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["quantize", str(tmp_path / "b"), "--mode", "static", "--calibration-size", "32", "--eval-size", "100", *d])
    assert r.exit_code == 0 and "int8-static" in r.output, r.output
    _one_line_error(runner.invoke(cli, ["quantize", str(tmp_path / "b"), "--calibration-size", "0"]), "calibration")
    _one_line_error(runner.invoke(cli, ["quantize", str(tmp_path / "b"), "--mode", "int4"]), "int4")


@pytest.mark.parametrize("args,match", [
    (["train", "--epochs", "0", "--out", "x"], "positive"),
    (["train", "--arch", "rnn", "--out", "x"], "rnn"),
    (["train", "--latent-dim", "-2", "--out", "x"], "positive"),
    (["train", "--iw-k", "0", "--out", "x"], "positive"),
    (["train", "--dec-hidden", "-3", "--out", "x"], "decoder hidden width"),
    (["train", "--data-dir", "/nonexistent/mnist", "--out", "RUN"], "does not exist"),
    (["evaluate", "nothing.pt"], "does not exist"),
    (["export", "nothing.pt", "--out", "b"], "does not exist"),
    (["data", "verify", "--data-dir", "/nonexistent"], "does not exist"),
    (["bench", "--batch-sizes", "0"], "positive"),
    (["bench", "--graphs", "middle"], "unknown graph"),
])
def test_bad_options(runner, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and match in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "RUN" / "model.pt").exists()


def test_not_a_checkpoint_cli(runner, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("junk")
    _one_line_error(runner.invoke(cli, ["evaluate", str(bad)]), "not a vae-edge checkpoint")
    _one_line_error(runner.invoke(cli, ["export", str(bad), "--out", str(tmp_path / "b")]), "not a vae-edge checkpoint")
    assert not (tmp_path / "b").exists()


def test_data_commands(runner, mnist_dir):
    r = runner.invoke(cli, ["data", "verify", "--data-dir", str(mnist_dir), "--json"])
    assert json.loads(r.output) == {"dir": str(mnist_dir), "ok": True, "train": 60000, "test": 10000}
    r = runner.invoke(cli, ["data", "info", "--dataset", "fashion-mnist"])
    assert r.exit_code == 0 and "fashion-mnist" in r.output


def test_bench_and_tune_cli(runner, tmp_path, bundle_copy, ckpts):
    r = runner.invoke(cli, ["bench", "--bundle", str(bundle_copy), "--variants", "fp32,int8-dynamic", "--batch-sizes", "1",
                            "--graphs", "decoder", "--min-time", "0.005", "--warmup", "1", "--checkpoint", str(ckpts["mlp"]),
                            "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0 and "vs PyTorch eager" in r.output, r.output
    assert (tmp_path / "rep" / "bench.json").exists() and (tmp_path / "rep" / "latency_decoder.png").exists()
    (tmp_path / "f").write_text("x")
    _one_line_error(runner.invoke(cli, ["bench", "--bundle", str(bundle_copy), "--report", str(tmp_path / "f")]), "is a file")
    r = runner.invoke(cli, ["tune", "--bundle", str(bundle_copy), "--min-time", "0.005", "--threads", "1"])
    assert r.exit_code == 0 and "chosen:" in r.output, r.output


@pytest.mark.slow
def test_pipeline_on_shipped_model(runner, tmp_path, mnist_dir):
    out = tmp_path / "p"
    r = runner.invoke(cli, ["pipeline", "--out", str(out), "--data-dir", str(mnist_dir), "--min-time", "0.01"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["quantization"]) == {"int8-dynamic", "int8-static"}
    # step durations (not start times): each positive, and together about the whole run
    t = rep["timings_s"]
    assert len(t) == 5 and all(v >= 0 for v in t.values()) and "done" not in t
    assert t["export encoder and decoder to ONNX, validate against PyTorch"] > 0.2  # a start time would be 0
    for f in ("samples.png", "reconstructions.png", "interpolation.gif", "report.md", "bench/bench.json"):
        assert (out / f).exists(), f
    cold = json.loads((out / "bench/bench.json").read_text())["cold_start"]
    assert all(c["rss_delta_mb"] > 1 for c in cold), cold  # measured in fresh processes, not 0.0
    assert (out / "report.md").read_text().split("\n## ")[1].startswith("Summary")


def test_train_on_fashion_mnist(runner, tmp_path, monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file():
        pytest.fail("this test needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist "
                    "(.ci/run installs it)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = runner.invoke(cli, ["train", "--dataset", "fashion-mnist", "--hidden", "16", "--latent-dim", "2",
                            "--max-steps", "3", "--quiet", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    from vae_edge.train import load_checkpoint

    assert load_checkpoint(tmp_path / "run")["dataset"] == "fashion-mnist"


# A corpus of bad inputs a user can hand the on-device commands. Each must end in one line, a
# non-zero exit, and no output file. (README: Reliability.)
def _bad_files(tmp: Path, bundle: Path) -> dict[str, list[str]]:
    import hashlib
    import shutil

    def copy(name):
        dest = tmp / name
        shutil.copytree(bundle, dest)
        return dest

    def rewrite(b, fn):
        m = json.loads((b / "manifest.json").read_text())
        fn(m)
        (b / "manifest.json").write_text(json.dumps(m))
        return b

    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.png").write_text("not an image")
    png = tmp / "ok.png"
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(png)
    (tmp / "truncated.png").write_bytes(png.read_bytes()[:60])
    (tmp / "notes.npy").write_text("hello")
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "ints.npy", np.ones((2, 8), np.int64) * 10**9)
    (tmp / "afile").write_text("x")
    notjson = copy("notjson")
    (notjson / "manifest.json").write_text("{")
    schema = rewrite(copy("schema"), lambda m: m.update(schema_version=99))
    escape = rewrite(copy("escape"), lambda m: m["variants"]["fp32"]["files"].update(decoder="../afile"))
    broken = copy("broken")
    (broken / "decoder.onnx").write_bytes(b"\x08\x01garbage" * 10)  # not a graph, checksum recomputed
    data = (broken / "decoder.onnx").read_bytes()
    rewrite(broken, lambda m: m["files"].update({"decoder.onnx": {"sha256": hashlib.sha256(data).hexdigest(),
                                                                  "size": len(data)}}))
    (tmp / "key.pem").write_text("not a key")
    from vae_edge.runtime.trust import keygen

    keygen(tmp / "real.priv.pem", tmp / "real.pub.pem")
    return {
        "empty image file": ["reconstruct", str(tmp / "empty.png")],
        "text file named .png": ["reconstruct", str(tmp / "text.png")],
        "truncated PNG": ["score", str(tmp / "truncated.png")],
        "folder as image": ["reconstruct", str(tmp)],
        "text file as latents": ["decode", str(tmp / "notes.npy")],  # "not a .npy file", not "pickled data"
        "pickled object array as latents": ["decode", str(tmp / "objects.npy")],
        "bundle that is a file": ["sample", "--bundle", str(tmp / "afile")],
        "manifest not JSON": ["sample", "--bundle", str(notjson)],
        "manifest of another schema version": ["sample", "--bundle", str(schema)],
        "manifest naming a file outside the bundle": ["sample", "--bundle", str(escape)],
        "graph that is not ONNX (checksum recomputed)": ["sample", "--bundle", str(broken)],
        "trusted key that is not a PEM file": ["sample", "--trusted-key", str(tmp / "key.pem")],
        "trusted key that does not exist": ["sample", "--trusted-key", str(tmp / "nokey.pem")],
        "unsigned bundle with a trusted key": ["sample", "--bundle", str(bundle), "--trusted-key",
                                               str(tmp / "real.pub.pem")],
        "negative threads": ["sample", "--threads", "-1"],
        "bad dataset slice": ["reconstruct", "mnist:test[5:5]"],
        "IW samples below 0": ["score", "mnist:test[0:2]", "--iw-samples", "-3"],
    }


def test_bad_input_corpus(runner, tmp_path, quantized, mnist_dir):
    (tmp_path / "in").mkdir()
    corpus = _bad_files(tmp_path / "in", quantized)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for what, args in corpus.items():
        out = out_dir / ("o.npy" if args[0] == "encode" else "o.png")
        extra = [] if args[0] in ("decode", "sample") else ["--data-dir", str(mnist_dir)]
        if "--bundle" not in args and args[0] != "sample":
            extra += ["--bundle", str(quantized)]
        cmd = [*args, *extra] + ([] if args[0] == "score" else ["-o", str(out)])
        res = runner.invoke(cli, cmd)
        lines = res.output.strip().splitlines()
        assert res.exit_code not in (0, None) and len(lines) == 1 and lines[0].startswith("Error: "), (what, res.output)
        assert "Traceback" not in res.output and "(run `vae-edge --debug" not in res.output, (what, res.output)
        assert "pickled" not in res.output or "object" in what, (what, res.output)
        assert not list(out_dir.iterdir()), what
    print(f"\nRELIABILITY: {len(corpus)} bad inputs: one line each, non-zero exit, nothing written")


def test_provider_preference_cli_and_broken_pipe(runner, tmp_path, quantized):
    out = tmp_path / "s.png"
    res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(quantized), "--provider", "cuda", "--provider",
                              "cpu", "-o", str(out)])
    assert res.exit_code == 0 and out.is_file() and "skipping provider(s) cuda" in res.output
    # a closed pipe is not an error; `python -m vae_edge.cli` is a way in too
    cmd = f"{sys.executable} -m vae_edge info | head -1"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("onnxruntime") and "Error" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "vae_edge.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Commands:" in r.stdout


def test_unwritable_output_is_one_line(runner, tmp_path, quantized):
    import os

    if os.geteuid() == 0:  # root writes anywhere but /proc
        res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(quantized), "-o", "/proc/s.png"])
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(quantized), "-o", str(ro / "s.png")])
    _one_line_error(res, "cannot write output")
    assert res.exit_code == 1


@pytest.mark.parametrize("blocked,args", [
    (("torch",), ["quantize", "{b}", "--mode", "fp16", "--eval-size", "50", "--data-dir", "{mnist}"]),
    (("torch", "onnx"), ["bench", "--bundle", "{b}", "--baseline", "none", "--batch-sizes", "1", "--graphs", "decoder",
                         "--variants", "fp32", "--min-time", "0.01", "--warmup", "1"]),
])
def test_commands_need_only_what_they_use(tmp_path, bundle_copy, mnist_dir, blocked, args):
    """fp16 quantization needs onnx, not torch; a benchmark without the torch baseline needs neither."""
    import textwrap

    argv = [a.format(b=bundle_copy, mnist=mnist_dir) for a in args]
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(name + " is blocked in this test", name=name.split(".")[0])
        sys.meta_path.insert(0, Block())
        from vae_edge.cli import cli
        cli({argv!r}, prog_name="vae-edge")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-1500:]


def test_output_paths_one_rule(runner, tmp_path, ckpts, mnist_dir, quantized):
    """The last level of an output path is created, a missing parent is an error, everywhere."""
    d = ["--data-dir", str(mnist_dir)]
    _one_line_error(runner.invoke(cli, ["export", str(ckpts["mlp"]), "--out", str(tmp_path / "no" / "b"), *d]),
                    "only the last level is created")
    _one_line_error(runner.invoke(cli, ["train", "--max-steps", "1", "--out", str(tmp_path / "no" / "run"), *d]),
                    "only the last level is created")
    _one_line_error(runner.invoke(cli, ["bench", "--bundle", str(quantized), "--report", str(tmp_path / "no" / "r"),
                                        "--baseline", "none", "--batch-sizes", "1", "--min-time", "0.01"]),
                    "only the last level is created")
    assert not (tmp_path / "no").exists()
    r = runner.invoke(cli, ["export", str(ckpts["mlp"]), "--out", str(tmp_path / "b"), *d])
    assert r.exit_code == 0 and (tmp_path / "b" / "manifest.json").is_file()
    # the bundle is named after its checkpoint's run, not like a shipped model
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["name"] == ckpts["mlp"].parent.name


def test_pipeline_leaves_nothing_on_failure_and_reruns_after_interruption(runner, tmp_path, monkeypatch, mnist_dir):
    from vae_edge import pipeline

    out = tmp_path / "p"

    def boom(*a, **k):
        raise VaeEdgeError("simulated failure in the middle")

    monkeypatch.setattr(pipeline, "_run", boom)
    _one_line_error(runner.invoke(cli, ["pipeline", "--out", str(out)]), "simulated failure")
    assert not out.exists()  # no empty (or half-made) output folder
    out.mkdir()
    (out / pipeline.MARKER).write_text("x")  # what an interrupted run leaves
    (out / "bundle").mkdir()
    monkeypatch.setattr(pipeline, "_run", lambda *a, **k: {"ok": True})
    assert runner.invoke(cli, ["pipeline", "--out", str(out)]).exit_code == 0  # recognised as ours
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    _one_line_error(runner.invoke(cli, ["pipeline", "--out", str(other)]), "not a pipeline output")


def test_info_variant_and_shipped_advice(runner, bundle_copy):
    import json

    r = runner.invoke(cli, ["info", "--variant", "auto"])  # the shipped default: its x86 target's variant
    assert r.exit_code == 0 and "--variant auto loads int8-dynamic here (self-check: passed)" in r.output
    assert "`--variant auto` means int8-dynamic, recorded for this CPU family" in r.output  # the two lines agree
    r = runner.invoke(cli, ["info", "--variant", "auto", "--bundle", "conv-mnist"])
    assert r.exit_code == 0 and "--variant auto loads int8-static here (self-check: passed)" in r.output
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m.pop("targets", None)
    m.pop("tuning", None)
    (bundle_copy / "manifest.json").write_text(json.dumps(m))  # no target recorded, never tuned
    (bundle_copy / "model.sig").unlink(missing_ok=True)
    r = runner.invoke(cli, ["info", "--variant", "auto", "--bundle", str(bundle_copy)])
    assert r.exit_code == 0 and "--variant auto loads fp32 here (self-check: passed)" in r.output
    assert "never tuned, so fp32 is used" in r.output and "`--variant auto` means fp32" in r.output  # said, not silent
    assert "mlp-cond-mnist" not in runner.invoke(cli, ["sample", "--help"]).output  # names only what ships
    assert "needs the test split" in runner.invoke(cli, ["export", "--help"]).output
    r = runner.invoke(cli, ["sample", "--variant", "fp16", "-o", "never.png"])
    _one_line_error(r, "shipped bundles are read-only: copy it")


def test_damaged_variant_is_repaired_by_quantize(runner, bundle_copy, mnist_dir, tmp_path):
    (bundle_copy / "decoder.int8-static.onnx").unlink()
    out = tmp_path / "s.png"
    assert runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "-o", str(out)]).exit_code == 0  # fp32 fine
    _one_line_error(runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "--variant", "int8-static",
                                        "-o", str(out)]), "variant int8-static is damaged")
    r = runner.invoke(cli, ["tune", "--bundle", str(bundle_copy), "--min-time", "0.005", "--threads", "1"])
    assert r.exit_code == 0 and "skipping int8-static" in r.output and "chosen:" in r.output
    r = runner.invoke(cli, ["quantize", str(bundle_copy), "--mode", "static", "--eval-size", "100",
                            "--calibration-size", "32", "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    assert runner.invoke(cli, ["sample", "--bundle", str(bundle_copy), "--variant", "int8-static",
                               "-o", str(out)]).exit_code == 0


def test_source_tree_shadowing_the_install_is_explained(tmp_path):
    """Run from a source checkout without the editable install: say what is happening."""
    import textwrap

    root = Path(__file__).resolve().parents[1]
    code = textwrap.dedent(f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                            and "editable" not in repr(f).lower()]
        sys.path.insert(0, {str(root)!r})
        for m in [m for m in sys.modules if m.startswith("vae_edge")]:
            del sys.modules[m]
        from vae_edge.cli import cli
        cli(["sample", "-o", {str(tmp_path / "s.png")!r}], prog_name="vae-edge")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "imported from the source folder" in r.stderr and "pip install -e ." in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_evaluate_says_how_long_it_will_take(runner, ckpts, mnist_dir):
    # K=200: batches of 163 images, two of them (the estimate comes after the first, the warm-up)
    r = runner.invoke(cli, ["evaluate", str(ckpts["mlp"]), "--iw-samples", "200", "--limit", "300",
                            "--data-dir", str(mnist_dir), "--json"])
    assert r.exit_code == 0, r.output
    assert "IW estimate with K=200 on 300 images: about" in r.output
    assert json.loads(r.output.strip().splitlines()[-1])["images"] == 300


def test_every_option_has_help_text():
    """A newcomer reading --help finds every option explained."""
    missing = []

    def walk(cmd, path):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help and p.name not in ("help", "version"):
                missing.append(f"{' '.join(path)} {p.opts[0]}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(cli, ["vae-edge"])
    assert not missing, missing


def test_evaluate_time_estimate_skips_the_warm_up_batch(capsys):
    """The first batch is warm-up: 10 s, then 1 s for each of the 10 batches after it. The
    estimate is 20 s in all (from the first batch alone it said 100 s)."""
    from vae_edge.cli.train import _EvalProgress

    now = [0.0]
    progress = _EvalProgress(5000, clock=lambda: now[0])
    for i in range(11):
        now[0] += 10.0 if i == 0 else 1.0
        progress((i + 1) * 10, 110)
    progress.close()
    err = capsys.readouterr().err
    assert "about 20 s in all" in err and err.count("IW estimate") == 1, err


def test_verbosity_options_set_what_reaches_stderr(runner, tmp_path, bundles, mnist_dir):
    """Library modules log; the CLI sets the level: progress by default, nothing but warnings
    with -q, debug (onnxruntime's calibration output) with -v. The result line is on stdout."""
    import shutil

    def quantize(*flags):  # percentile calibration: onnxruntime prints its progress (kept at debug)
        b = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundles["conv"], b)
        r = runner.invoke(cli, [*flags, "quantize", str(b), "--mode", "static", "--method", "percentile",
                                "--calibration-size", "32", "--eval-size", "100", "--data-dir", str(mnist_dir)])
        assert r.exit_code == 0, r.output
        return r.stdout, r.stderr

    out, err = quantize()
    assert "quantizing encoder: static" in err and "onnxruntime calibration" not in err
    assert out.startswith("int8-static: -ELBO")
    out_q, err_q = quantize("-q")
    assert "quantizing" not in err_q and out_q.startswith("int8-static: -ELBO")
    _, err_v = quantize("-v")
    assert "quantizing encoder: static" in err_v and "onnxruntime calibration" in err_v
    r = runner.invoke(cli, ["-v", "-q", "info"])
    assert r.exit_code == 2 and "choose one" in r.output
