"""Training vae-edge's own architectures on the user's data, at sizes and channel counts that are
not MNIST's, then every stage: a colour conv VAE with a Gaussian decoder on a synthetic colour
dataset the test generates; an MLP on scikit-learn's 8x8 digits (a small real dataset shipped
inside the package); the conv model on Fashion-MNIST. Export parity with the torch model,
quantize on the user's data, the on-device commands, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stages import every_command, page_and_bench

from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.train import load_checkpoint, model_from_checkpoint

FASHION = Path("/usr/share/datasets/fashion-mnist")


def colour_blobs(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3, 16, 16] in [0, 1]: a soft coloured disc on a tinted background, random per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
    out = np.empty((n, 3, 16, 16), np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(2, 5)
        disc = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) - r) * 2))
        fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 0.4, 3)
        out[i] = bg[:, None, None] * (1 - disc) + fg[:, None, None] * disc
    return out


def ok(*args: str):
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    np.save(root / "blobs.npy", colour_blobs(512))
    ok("train", "--arch", "conv", "--data", str(root / "blobs.npy"), "--input-shape", "3,16,16", "--likelihood",
       "gaussian", "--sigma", "0.1", "--latent-dim", "8", "--channels", "8,16", "--epochs", "2", "--batch-size", "64",
       "--quiet", "--out", str(root / "run"))
    ok("export", str(root / "run" / "model.pt"), "--out", str(root / "bundle"))
    return root


def test_a_colour_conv_vae_trained_on_the_users_images(colour):
    ckpt = load_checkpoint(colour / "run" / "model.pt")
    assert ckpt["dataset"] == "custom" and ckpt["config"]["image_shape"] == [3, 16, 16]
    model = model_from_checkpoint(ckpt).eval()
    rt = VAERuntime.load(colour / "bundle", warn=lambda s: None)
    assert rt.image_shape == (3, 16, 16) and rt.likelihood == "gaussian" and rt.sigma == 0.1
    x = colour_blobs(5, seed=9)
    with torch.no_grad():
        mu, _ = model.encode(torch.from_numpy(x))
        mean = torch.sigmoid(model.decode(mu))
    assert np.max(np.abs(rt.encode(x)[0] - mu.numpy())) < 1e-4
    assert np.max(np.abs(rt.reconstruct(x) - mean.numpy())) < 1e-4
    first = json.loads((colour / "run" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    last = json.loads((colour / "run" / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert last < first  # it learned


def test_quantize_and_the_on_device_commands_on_the_users_data(colour, tmp_path):
    b, data = str(colour / "bundle"), str(colour / "blobs.npy")
    r = ok("quantize", b, "--mode", "static", "--calibration-data", data, "--json")
    entry = json.loads(r.output.strip().splitlines()[-1])
    assert entry["variant"] == "int8-static" and "images of 512 images from" in entry["quantization"]["calibration"]["encoder"]
    ok("sample", "--bundle", b, "--variant", "int8-static", "-n", "8", "-o", str(tmp_path / "s.png"))
    ok("reconstruct", data, "--bundle", b, "-o", str(tmp_path / "r.npy"))
    assert np.load(tmp_path / "r.npy").shape == (512, 3, 16, 16)
    rows = json.loads(ok("score", data, "--bundle", b, "--json").output)
    assert "bits_per_dim_8bit" in rows[0]
    np.save(tmp_path / "few.npy", colour_blobs(4, seed=7))
    for variant in ("fp32", "int8-static"):
        (tmp_path / variant).mkdir()
        every_command(colour / "bundle", tmp_path / "few.npy", tmp_path / variant, variant)
    page_and_bench(colour / "bundle", tmp_path, colour_blobs(1, seed=8))


def test_resume_on_the_users_data_is_exact_and_refuses_other_data(tmp_path):
    np.save(tmp_path / "d.npy", colour_blobs(96, seed=1))
    common = ["train", "--arch", "mlp", "--data", str(tmp_path / "d.npy"), "--input-shape", "3,16,16",
              "--likelihood", "gaussian", "--sigma", "0.2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "16",
              "--quiet", "--epochs", "2"]
    ok(*common, "--out", str(tmp_path / "straight"))
    ok(*common, "--max-steps", "7", "--out", str(tmp_path / "split"))
    ok(*common, "--resume", "--out", str(tmp_path / "split"))
    a, b = (load_checkpoint(tmp_path / r / "model.pt")["model"] for r in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.save(tmp_path / "d.npy", colour_blobs(96, seed=2))
    r = CliRunner().invoke(cli, [*common, "--epochs", "3", "--resume", "--out", str(tmp_path / "split")])
    assert r.exit_code == 1 and "other images than the run was started on" in r.output


def test_an_mlp_on_scikit_learns_8x8_digits(tmp_path):
    """Real data at 1x8x8: train, export, sample, score, quantize on the user's digits, and
    compress them losslessly (binarized) with the trained model."""
    from sklearn.datasets import load_digits

    x = (load_digits().images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    np.save(tmp_path / "digits.npy", x)
    ok("train", "--arch", "mlp", "--data", str(tmp_path / "digits.npy"), "--input-shape", "1,8,8", "--hidden", "64",
       "--latent-dim", "4", "--epochs", "5", "--batch-size", "64", "--quiet", "--out", str(tmp_path / "run"))
    ok("export", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "b"))
    b = str(tmp_path / "b")
    rt = VAERuntime.load(b, warn=lambda s: None)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "model.pt")).eval()
    with torch.no_grad():
        probs = torch.sigmoid(model.decode(model.encode(torch.from_numpy(x[:4]))[0]))
    assert np.max(np.abs(rt.reconstruct(x[:4]) - probs.numpy())) < 1e-4
    ok("quantize", b, "--mode", "dynamic", "--calibration-data", str(tmp_path / "digits.npy"))
    ok("sample", "--bundle", b, "--variant", "int8-dynamic", "-n", "16", "-o", str(tmp_path / "s.png"))
    rows = json.loads(ok("score", str(tmp_path / "digits.npy"), "--bundle", b, "--json").output)
    assert len(rows) == len(x) and np.mean([r["neg_elbo"] for r in rows]) < 64 * np.log(2)  # beats 1 bit/pixel
    binary = (x >= 0.5).astype(np.uint8)
    np.save(tmp_path / "bits.npy", binary)
    ok("compress", str(tmp_path / "bits.npy"), "--bundle", b, "-o", str(tmp_path / "d.vaez"))
    ok("decompress", str(tmp_path / "d.vaez"), "--bundle", b, "-o", str(tmp_path / "back.npy"))
    assert np.array_equal(np.load(tmp_path / "back.npy"), binary)
    np.save(tmp_path / "few.npy", x[:4])
    (tmp_path / "cmds").mkdir()
    every_command(tmp_path / "b", tmp_path / "few.npy", tmp_path / "cmds", "int8-dynamic")
    page_and_bench(tmp_path / "b", tmp_path, x[:1])


def test_the_conv_model_on_fashion_mnist(tmp_path):
    if not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.fail("this test needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    ok("train", "--arch", "conv", "--dataset", "fashion-mnist", "--channels", "8,16", "--latent-dim", "8",
       "--max-steps", "30", "--quiet", "--out", str(tmp_path / "run"))
    ok("export", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "b"))
    b = str(tmp_path / "b")
    ok("quantize", b, "--mode", "static", "--eval-size", "200", "--calibration-size", "64")
    rt = VAERuntime.load(b, variant="int8-static", warn=lambda s: None)
    from vae_edge.data import load_slice

    xf, _ = load_slice("fashion-mnist:test[0:8]")
    assert rt.reconstruct(xf).shape == (8, 1, 28, 28)
    ok("reconstruct", "fashion-mnist:test[0:8]", "--bundle", b, "-o", str(tmp_path / "r.png"))
    np.save(tmp_path / "few.npy", xf[:4])
    (tmp_path / "cmds").mkdir()
    every_command(tmp_path / "b", tmp_path / "few.npy", tmp_path / "cmds", "int8-static")
    page_and_bench(tmp_path / "b", tmp_path, xf[:1])
