"""8-bit likelihoods (issue 32): a discretized logistic per value (PixelCNN++'s, one component)
through training, export, the runtime's -ELBO in bits per dimension, the CLI, and compression of
8-bit grey and colour images, exact to the byte."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import _train
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.model import discretized_logistic_nll, reconstruction_nll, split_logistic
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.mathops import logistic_nll
from vae_edge.train import load_checkpoint, model_from_checkpoint


@pytest.mark.parametrize("log_scale", [-6.5, -3.0, 0.5])
def test_the_256_bins_are_a_distribution_and_numpy_computes_what_torch_does(log_scale):
    mean = torch.tensor([0.0, 0.003, 0.5, 0.997, 1.0, 0.25]).view(6, 1, 1, 1)
    values = (torch.arange(256, dtype=torch.float32) / 255).view(1, 256, 1, 1).expand(6, 256, 1, 1)
    ls = torch.full_like(values, log_scale)
    nll = discretized_logistic_nll(mean.expand_as(values), ls, values)
    assert torch.allclose(torch.exp(-nll).sum(1), torch.ones(6), atol=1e-4)
    # numpy's, per image (each of the 6 [256, 1, 1] "images" summed), agrees with torch's
    got = logistic_nll(mean.expand_as(values).numpy(), ls.numpy(), values.numpy())
    assert np.allclose(got, nll.double().flatten(1).sum(1).numpy(), rtol=1e-4, atol=1e-3)
    # a value at the mean is likelier than one far from it; the end bins take the tails
    assert nll[2, 128] < nll[2, 10]
    assert nll[0, 0] < math.log(2) + 1e-3 and nll[4, 255] < math.log(2) + 1e-3


def test_a_logistic_model_trains_exports_and_scores_in_bits_per_dimension(tmp_path, mnist_dir):
    ckpt = _train(tmp_path / "run", mnist_dir, steps=30, arch="conv", channels=(8, 16), latent_dim=8,
                  likelihood="logistic")
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    r = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(tmp_path / "b"), "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["graphs"]["decoder"]["outputs"]] == ["probs", "log_scale"]
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    from vae_edge.data import load_slice

    x, _ = load_slice("mnist:test[0:8]", mnist_dir)
    mu, _ = rt.encode(x)
    with torch.no_grad():
        out = model.decode(torch.from_numpy(mu))
        mean, _ = split_logistic(out)
        want = reconstruction_nll(out, torch.from_numpy(x), model.cfg).flatten(1).sum(1).double().numpy()
    assert np.max(np.abs(rt.decode(mu) - mean.numpy())) < 1e-4  # the image is the logistic's mean
    got = rt._nll(mu, x, {})
    assert np.allclose(got, want, rtol=1e-4)  # the runtime's likelihood is the model's, to float rounding
    r = CliRunner().invoke(cli, ["score", "mnist:test[0:4]", "--bundle", str(tmp_path / "b"), "--data-dir",
                                 str(mnist_dir), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    bpd = [row["bits_per_dim_8bit"] for row in rows]
    nats = [row["neg_elbo"] for row in rows]
    assert np.allclose(bpd, np.array(nats) / (784 * math.log(2)), rtol=1e-4) and 0 < min(bpd) < 8


def test_the_train_command_takes_the_logistic_likelihood(tmp_path, mnist_dir):
    r = CliRunner().invoke(cli, ["train", "--likelihood", "logistic", "--binarize", "dynamic", "--data-dir",
                                 str(mnist_dir), "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "needs --likelihood bernoulli" in r.output


# -- 8-bit compression ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grey8(tmp_path_factory, mnist_dir):
    """A logistic conv model of 8-bit MNIST (a few steps: exactness does not need a good model)."""
    root = tmp_path_factory.mktemp("grey8")
    ckpt = _train(root / "run", mnist_dir, steps=20, arch="conv", channels=(8, 16), latent_dim=8, likelihood="logistic")
    r = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(root / "b"), "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    return VAERuntime.load(root / "b", warn=lambda s: None)


@pytest.fixture(scope="module")
def colour8(tmp_path_factory):
    """A logistic MLP of colour images of an odd size (3x10x13), trained two steps on the user's data."""
    root = tmp_path_factory.mktemp("colour8")
    x = np.random.default_rng(0).integers(0, 256, (64, 3, 10, 13), dtype=np.uint8)
    np.save(root / "x.npy", x)
    r = CliRunner().invoke(cli, ["train", "--arch", "mlp", "--data", str(root / "x.npy"), "--input-shape", "3,10,13",
                                 "--likelihood", "logistic", "--hidden", "32", "--latent-dim", "4", "--max-steps", "2",
                                 "--batch-size", "16", "--quiet", "--out", str(root / "run")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["export", str(root / "run" / "model.pt"), "--out", str(root / "b")])
    assert r.exit_code == 0, r.output
    return root


def test_8bit_images_round_trip_exactly_at_about_their_elbo(grey8, mnist_dir):
    from vae_edge.data import load_slice
    from vae_edge.runtime import compress as C

    x, _ = load_slice("mnist:test[0:60]", mnist_dir)
    data = C.compress(grey8, x)
    back = C.decompress(grey8, data)
    assert np.array_equal(np.rint(back * 255), np.rint(x * 255))
    rate = 8 * len(data) / x.size
    elbo = float(np.mean(grey8.bits_per_dim_8bit(grey8.score(x, elbo_samples=64))))
    assert abs(rate - elbo) < 0.25 * elbo, (rate, elbo)  # bits-back's rate is the -ELBO, plus a start-up
    # the extremes of uint8, and a single image
    for extreme in (np.zeros((2, 1, 28, 28), np.float32), np.ones((2, 1, 28, 28), np.float32), x[:1]):
        assert np.array_equal(C.decompress(grey8, C.compress(grey8, extreme)), extreme)
    with pytest.raises(VaeEdgeError, match="between the 256 levels"):
        C.compress(grey8, np.clip(x[:2] + 0.5 / 255, 0, 1))
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 1
    with pytest.raises(VaeEdgeError, match="damaged"):
        C.decompress(grey8, bytes(damaged))


def test_8bit_cli_round_trips_colour_arrays_and_grey_pngs(colour8, grey8, tmp_path, mnist_dir):
    x = np.load(colour8 / "x.npy")[:5]
    np.save(tmp_path / "c.npy", x)
    b = str(colour8 / "b")
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "c.npy"), "--bundle", b, "-o", str(tmp_path / "c.vaez")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "c.vaez"), "--bundle", b, "-o", str(tmp_path / "c2.npy")])
    assert r.exit_code == 0, r.output
    back = np.load(tmp_path / "c2.npy")
    assert back.dtype == np.uint8 and np.array_equal(back, x)  # pixels, shape and dtype
    # grey PNGs in a folder -> a folder of the same PNGs
    from vae_edge.data import load_slice

    g = np.rint(load_slice("mnist:test[0:3]", mnist_dir)[0] * 255).astype(np.uint8)
    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(g):
        Image.fromarray(img[0]).save(tmp_path / "pngs" / f"{i}.png")
    gb = str(grey8.bundle)
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "pngs"), "--bundle", gb, "-o", str(tmp_path / "g.vaez")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "g.vaez"), "--bundle", gb, "-o", str(tmp_path / "out") + "/"])
    assert r.exit_code == 0, r.output
    for i, img in enumerate(g):
        got = Image.open(tmp_path / "out" / f"{i:05d}.png")
        assert got.mode == "L" and np.array_equal(np.asarray(got), img[0])
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "pngs"), "--bundle", gb, "--binarize", "threshold",
                                 "-o", str(tmp_path / "bad.vaez")])
    assert r.exit_code != 0 and "8-bit" in r.output and not (tmp_path / "bad.vaez").exists()


# -- logistic-ar: each value's mean follows its already-coded neighbours ----------------------------
def test_the_context_mean_is_the_same_in_torch_and_numpy_and_vanishes_at_the_point_decode():
    from vae_edge.model import context_mean as torch_mean
    from vae_edge.runtime.mathops import CONTEXT, context_mean

    g = torch.Generator().manual_seed(0)
    p, x = torch.rand(2, 3, 5, 7, generator=g), torch.rand(2, 3, 5, 7, generator=g)
    w = torch.rand(2, 3 * len(CONTEXT), 5, 7, generator=g) * 2 - 1
    got = context_mean(p.numpy(), w.numpy(), x.numpy())
    assert np.abs(got - torch_mean(p, w, x).double().numpy()).max() < 1e-6
    r = (x - p).double().numpy()
    for c, i, j in ((1, 3, 4), (2, 0, 6), (0, 4, 0)):  # by hand: inside, top row, left column
        want = float(p[0, c, i, j])
        for k, (dy, dx) in enumerate(CONTEXT):
            if 0 <= i + dy < 5 and 0 <= j + dx < 7:
                want += float(w[0, 3 * k + c, i, j]) * r[0, c, i + dy, j + dx]
        assert abs(got[0, c, i, j] - want) < 1e-6
    assert np.array_equal(context_mean(p.numpy(), w.numpy(), p.numpy()), p.numpy().astype(np.float64))


@pytest.fixture(scope="module")
def grey_ar(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("grey_ar")
    ckpt = _train(root / "run", mnist_dir, steps=20, arch="conv", channels=(8, 16), latent_dim=8,
                  likelihood="logistic-ar")
    r = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(root / "b"), "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    return ckpt, VAERuntime.load(root / "b", warn=lambda s: None)


def test_a_logistic_ar_model_exports_scores_and_compresses_exactly(grey_ar, mnist_dir):
    from vae_edge.data import load_slice
    from vae_edge.runtime import compress as C

    ckpt, rt = grey_ar
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    manifest = json.loads((rt.bundle / "manifest.json").read_text())
    outs = {o["name"]: o["shape"] for o in manifest["graphs"]["decoder"]["outputs"]}
    assert list(outs) == ["probs", "log_scale", "context"] and outs["context"][1:] == [4, 28, 28]
    x, _ = load_slice("mnist:test[0:40]", mnist_dir)
    mu, _ = rt.encode(x[:8])
    with torch.no_grad():
        out = model.decode(torch.from_numpy(mu))
        want = reconstruction_nll(out, torch.from_numpy(x[:8]), model.cfg).flatten(1).sum(1).double().numpy()
        plain = discretized_logistic_nll(*split_logistic(out, ar=True)[:2], torch.from_numpy(x[:8]))
    got = rt._nll(mu, x[:8], {})
    assert np.allclose(got, want, rtol=1e-4)  # the runtime's likelihood is the model's, context and all
    assert not np.allclose(got, plain.flatten(1).sum(1).double().numpy(), rtol=1e-3)  # ... and the context counts
    data = C.compress(rt, x)
    back = C.decompress(rt, data)
    assert np.array_equal(np.rint(back * 255), np.rint(x * 255))
    rate = 8 * len(data) / x.size
    elbo = float(np.mean(rt.bits_per_dim_8bit(rt.score(x, elbo_samples=64))))
    assert abs(rate - elbo) < 0.3 * elbo, (rate, elbo)
    for extreme in (np.zeros((2, 1, 28, 28), np.float32), np.ones((2, 1, 28, 28), np.float32), x[:1]):
        assert np.array_equal(C.decompress(rt, C.compress(rt, extreme)), extreme)


def test_a_colour_logistic_ar_model_of_an_odd_size_round_trips(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (24, 3, 6, 5), dtype=np.uint8)
    x[:, 1] = x[:, 0] // 2 + 60  # channels that differ, neighbours that matter
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["train", "--arch", "mlp", "--data", str(tmp_path / "x.npy"), "--input-shape", "3,6,5",
                                 "--likelihood", "logistic-ar", "--hidden", "16", "--latent-dim", "3", "--max-steps",
                                 "2", "--batch-size", "8", "--quiet", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "run" / "model.pt"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    for args in (["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.vaez")],
                 ["decompress", str(tmp_path / "x.vaez"), "-o", str(tmp_path / "y.npy")]):
        r = CliRunner().invoke(cli, [*args, "--bundle", str(tmp_path / "b")])
        assert r.exit_code == 0, r.output
    back = np.load(tmp_path / "y.npy")
    assert back.dtype == np.uint8 and np.array_equal(back, x)


# -- one image, or a few: the container keeps the smaller of the VAE's file and a classical one ----
def test_a_lone_image_never_costs_more_than_its_png_and_comes_back_exactly(grey8, tmp_path, mnist_dir):
    import io

    from vae_edge.data import load_slice
    from vae_edge.runtime import classic
    from vae_edge.runtime import compress as C

    x, _ = load_slice("mnist:test[0:1]", mnist_dir)
    v = np.rint(x[0, 0] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(v).save(buf, "PNG", optimize=True)
    data, report = C.compress_best(grey8, x, layout=2)
    assert len(data) < len(buf.getvalue()) and report["bytes"] == len(data)
    assert set(report["bits_per_value"]) >= {"vae-edge", "png"}
    # the 20-step model costs more than a PNG here: the container is a classical one, read back exactly
    assert report["chosen"] != "vae-edge" and classic.is_classic(data)
    h, back = C.decompress_classic(data)
    assert np.array_equal(back, x) and h["layout"] == 2
    # damage is refused in one line
    for bad in (data[:-5] + data[-4:], data[:10] + bytes([data[10] ^ 1]) + data[11:]):
        with pytest.raises(VaeEdgeError, match="damaged"):
            C.decompress_classic(bad)
    # through the CLI: the rates printed, a PNG back
    Image.fromarray(v).save(tmp_path / "one.png")
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "one.png"), "--bundle", str(grey8.bundle),
                                 "-o", str(tmp_path / "one.vaez")])
    assert r.exit_code == 0 and "coded with" in r.output and "PNG" in r.output, r.output
    assert (tmp_path / "one.vaez").stat().st_size < len(buf.getvalue())
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "one.vaez"), "-o", str(tmp_path / "back.png")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), v)
    # --codec vae keeps the VAE's file
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "one.png"), "--bundle", str(grey8.bundle), "--codec",
                                 "vae", "-o", str(tmp_path / "vae.vaez")])
    assert r.exit_code == 0 and (tmp_path / "vae.vaez").read_bytes()[:4] == b"VAEZ", r.output


def test_classical_files_of_colour_odd_and_binary_images_round_trip(tmp_path):
    from vae_edge.runtime import classic
    from vae_edge.runtime.compress import data_digest, decompress_classic

    rng = np.random.default_rng(0)
    for shape, binary in (((3, 3, 10, 13), False), ((2, 2, 5, 7), False), ((4, 1, 28, 28), True),
                          ((2, 1, 9, 9), False)):
        v = rng.integers(0, 2 if binary else 256, shape, dtype=np.uint8)
        v[0] = 0
        x = v.astype(np.float32) if binary else (v / 255.0).astype(np.float32)
        for codec in ("png", "webp") if classic.webp_available() else ("png",):
            data = classic.pack(codec, classic.encode(v, codec, binary), 0, shape[1:], len(v), binary,
                                data_digest(x, not binary))
            h, back = decompress_classic(data)
            assert np.array_equal(back, x) and h["codec"] == codec, (shape, codec)
