"""Defaults a user can trust (issue 23): one image one score, the right variant without asking,
options refused up front, and what a user sees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.files import write_json_atomic

# --- scores --------------------------------------------------------------------------------------

def test_one_image_gets_one_score_whatever_else_is_listed(runner, mnist_dir, tmp_path):
    from vae_edge.data import load_slice

    x, _ = load_slice("mnist:test[0:8]", mnist_dir)
    rt = VAERuntime.load("mlp-mnist")
    alone = rt.score(x[5:6])[0]
    batch = rt.score(np.concatenate([x[:5], x[5:6], x[5:6], x[6:]]))
    assert batch[5] == batch[6] == pytest.approx(alone, abs=1e-4)
    iw = rt.score(np.concatenate([x[5:6], x[:2], x[5:6]]), iw_samples=64)
    assert iw[0] == iw[3] == pytest.approx(rt.score(x[5:6], iw_samples=64)[0], abs=1e-4)
    # the CLI: one file listed six times, a slice alone and listed second
    from PIL import Image

    from vae_edge.runtime.images import save_image, to_uint8

    p = tmp_path / "d.png"
    save_image(Image.fromarray(to_uint8(x[3, 0]), "L"), p)
    res = runner.invoke(cli, ["score", *[str(p)] * 6, "--json"])
    assert res.exit_code == 0, res.output
    assert len({r["neg_elbo"] for r in json.loads(res.output)}) == 1
    one = json.loads(runner.invoke(cli, ["score", "mnist:test[5:6]", "--data-dir", str(mnist_dir), "--json"]).output)
    two = json.loads(runner.invoke(cli, ["score", "mnist:test[0:1]", "mnist:test[5:6]", "--data-dir",
                                         str(mnist_dir), "--json"]).output)
    assert one[0]["neg_elbo"] == two[1]["neg_elbo"]


def test_the_default_score_is_the_pages_estimate(mnist_dir):
    """The page averages 16 fixed draws (those of default_rng(0)); the CLI's default is the same."""
    from vae_edge.data import load_slice
    from vae_edge.web import SCORE_SAMPLES, score_draws

    x, _ = load_slice("mnist:test[0:4]", mnist_dir)
    rt = VAERuntime.load("mlp-mnist")
    mu, logvar = rt.encode(x)
    from vae_edge.runtime.mathops import bce_with_logits, kl_to_prior

    draws = score_draws(rt.latent_dim)
    by_hand = np.mean([bce_with_logits(rt.decode(mu + np.exp(0.5 * logvar) * e, logits=True), x)
                       for e in draws], 0) + kl_to_prior(mu, logvar)
    assert len(draws) == SCORE_SAMPLES
    assert np.allclose(rt.score(x), by_hand, atol=1e-3)


def test_score_table_has_a_header_and_no_advice_already_taken(runner, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (28, 28), 0).save(blank)
    res = runner.invoke(cli, ["score", str(blank), "--complexity"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split() == ["-ELBO", "corrected", "input", "(nats)"]
    assert "use --complexity" not in res.output
    res = runner.invoke(cli, ["reconstruct", str(blank), "-o", str(tmp_path / "r.png")])
    assert res.exit_code == 0 and "1 reconstruction ->" in res.output and "no ink" in res.output


# --- the right variant without asking ----------------------------------------------------------------

def test_auto_never_means_fp16_on_a_cpu(bundle_copy, mnist_dir, runner):
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle

    quantize_bundle(bundle_copy, QuantizeConfig(mode="fp16", eval_size=50), data_dir=mnist_dir)
    m = json.loads((bundle_copy / "manifest.json").read_text())
    assert (m.get("targets") or {}).get("x86", {}).get("variant") != "fp16"
    m.setdefault("targets", {})["x86"] = {"variant": "fp16"}  # what quantize wrote before
    write_json_atomic(bundle_copy / "manifest.json", m)
    rt = VAERuntime.load(bundle_copy, variant="auto", warn=lambda s: None)
    assert rt.variant != "fp16"
    res = runner.invoke(cli, ["info", "--bundle", str(bundle_copy), "--variant", "auto"])
    assert res.exit_code == 0 and "means fp16" not in res.output and "loads fp16" not in res.output


def test_tune_and_auto_never_pick_a_variant_made_for_another_device(tmp_path):
    from vae_edge.bench import tune

    src = Path(str(VAERuntime.load("mlp-mnist").bundle))
    b = tmp_path / "mlp"
    shutil.copytree(src, b)
    (b / "model.sig").unlink()
    m = json.loads((b / "manifest.json").read_text())
    assert m["variants"]["int8-dynamic-arm64"]["target"] == "arm64"
    fake = {"fp32": 5.0, "int8-dynamic": 2.0, "int8-dynamic-arm64": 1.0}  # the ARM variant "fastest"
    res = tune(b, max_elbo_delta=10.0, measure=lambda v, p, t: fake[v], threads=(1,), warn=lambda s: None)
    assert res["choice"]["variant"] == "int8-dynamic"
    assert {r["variant"] for r in res["table"]} == {"fp32", "int8-dynamic"}


def test_opset_17_is_refused_up_front(runner, ckpts, tmp_path):
    res = runner.invoke(cli, ["export", str(ckpts["mlp"]), "--out", str(tmp_path / "b"), "--opset", "17"])
    assert res.exit_code == 2 and "18" in res.output and not (tmp_path / "b").exists()
    from vae_edge import VaeEdgeError
    from vae_edge.export import export_bundle

    with pytest.raises(VaeEdgeError, match="use 18 or newer"):
        export_bundle(ckpts["mlp"], tmp_path / "b", opset=17)


def test_the_suite_ignores_the_users_variables(tmp_path, mnist_dir):
    """A developer with VAE_EDGE_DATA (a documented variable) set gets the same results."""
    env = {**__import__("os").environ, "VAE_EDGE_DATA": str(mnist_dir)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_data.py::test_data_fetch_cli_against_local_server",
                          "tests/test_data.py::test_offline_fashion_mnist_names_its_package"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stdout[-2000:]


# --- denoising images that are already noisy ------------------------------------------------------

def test_denoise_restores_noisy_files_as_they_are(runner, tmp_path, mnist_dir):
    from PIL import Image

    from vae_edge.data import load_slice
    from vae_edge.runtime import corrupt
    from vae_edge.runtime.images import to_uint8

    x, _ = load_slice("mnist:test[0:4]", mnist_dir)
    noisy, _ = corrupt(x, "saltpepper:0.2", seed=3)
    files = []
    for i, im in enumerate(noisy):
        files.append(tmp_path / f"scan{i}.png")
        Image.fromarray(255 - to_uint8(im[0]), "L").save(files[-1])  # dark ink on light paper, as scanned
    np.save(tmp_path / "noisy.npy", noisy)
    res = subprocess.run([sys.executable, "-m", "vae_edge", "denoise", *map(str, files), "--noise", "saltpepper:0.2",
                          "--samples", "128", "-o", str(tmp_path / "r.npy")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "RuntimeWarning" not in res.stderr and "4 images restored" in res.stderr + res.stdout
    restored = np.load(tmp_path / "r.npy")
    assert restored.shape == (4, 1, 28, 28)
    assert np.mean((restored - x) ** 2) < 0.5 * np.mean((noisy - x) ** 2)
    res = runner.invoke(cli, ["denoise", str(tmp_path / "noisy.npy"), "--noise", "saltpepper:0.2", "--samples", "64",
                              "-o", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "r.png").width > 4 * 60  # the rows' labels widen the grid
    big = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(big)
    res = runner.invoke(cli, ["denoise", str(big), "-o", str(tmp_path / "b.png")])
    assert res.exit_code == 1 and "pixel for pixel" in res.output and not (tmp_path / "b.png").exists()
    res = runner.invoke(cli, ["denoise", str(files[0]), "--noise", "mask:rect", "-o", str(tmp_path / "m.png")])
    assert res.exit_code == 1 and "--demo" in res.output


def test_sample_writes_npy(runner, tmp_path):
    res = runner.invoke(cli, ["sample", "-n", "3", "-o", str(tmp_path / "s.npy")])
    assert res.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (3, 1, 28, 28)


# --- x86 CPU families as targets --------------------------------------------------------------------

def test_x86_families_are_targets_chosen_from_the_cpu(tmp_path, bundles, mnist_dir, monkeypatch):
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.runtime import sysinfo
    from vae_edge.runtime.choice import auto_candidates, made_for_here

    family_of = sysinfo.x86_family
    assert family_of({"avx2", "avx512_vnni"}) == "x86-vnni" and family_of({"avx2", "avx_vnni"}) == "x86-vnni"
    assert family_of({"avx2", "fma"}) == "x86-avx2"
    b = tmp_path / "conv"
    shutil.copytree(bundles["conv"], b)
    v, entry = quantize_bundle(b, QuantizeConfig(mode="static", eval_size=100, calibration_size=64, target="x86-vnni"),
                               data_dir=mnist_dir)
    assert v == "int8-static-x86-vnni" and entry["quantization"]["config"]["per_channel"] is True
    v2, entry2 = quantize_bundle(b, QuantizeConfig(mode="static", eval_size=100, calibration_size=64,
                                                   target="x86-avx2"), data_dir=mnist_dir)
    assert v2 == "int8-static-x86-avx2" and entry2["quantization"]["config"]["reduce_range"] is True
    from vae_edge.runtime.bundle import read_manifest

    m = read_manifest(b)
    for family, mine, other in (("x86-vnni", v, v2), ("x86-avx2", v2, v)):
        monkeypatch.setattr(sysinfo, "x86_family", lambda flags=None, f=family: f)
        monkeypatch.setattr(sysinfo, "current_target", lambda: "x86")
        assert made_for_here(m.variants[mine]) and not made_for_here(m.variants[other])
        order, _, _ = auto_candidates(m, None, None, lambda s: None, b)
        assert order[0] == mine and other not in order


def test_the_interpolation_gif_is_large_enough_to_see(runner, tmp_path, mnist_dir):
    from PIL import Image

    res = runner.invoke(cli, ["interpolate", "mnist:test[0:1]", "mnist:test[1:2]", "--steps", "4", "--data-dir",
                              str(mnist_dir), "-o", str(tmp_path / "m.gif")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "m.gif") as im:
        assert im.size == (224, 224) and im.n_frames == 6  # forward, then back
