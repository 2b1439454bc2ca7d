"""Bring your own VAE: a module written outside vae-edge (a colour conv VAE with a spatial latent
and a Gaussian decoder, at a size vae-edge's own models never have) through export, the runtime
and the on-device CLI, its outputs matching the user's torch module."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.export import export_vae
from vae_edge.runtime import VAERuntime

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyColourVAE(nn.Module):
        """3x16x16 images, a [4, 4, 4] latent, a Gaussian decoder (its mean in [0, 1])."""

        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 8, 3, 2, 1))
            self.dec = nn.Sequential(nn.ConvTranspose2d(4, 16, 4, 2, 1), nn.SiLU(),
                                     nn.ConvTranspose2d(16, 3, 4, 2, 1))

        def encode(self, x):
            h = self.enc(x)
            return h[:, :4], h[:, 4:].clamp(-6, 2)

        def decode(self, z):
            return torch.sigmoid(self.dec(z))

    def make():
        torch.manual_seed(0)
        return TinyColourVAE()
''')
SHAPE, LATENT, SIGMA = (3, 16, 16), (4, 4, 4), 0.1


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    (root / "my_vae.py").write_text(MODULE)
    namespace: dict = {}
    exec(compile(MODULE, str(root / "my_vae.py"), "exec"), namespace)
    model = namespace["make"]().eval()
    torch.save(model.state_dict(), root / "weights.pt")
    bundle = export_vae(model, SHAPE, root / "bundle", likelihood="gaussian", sigma=SIGMA, name="tiny-colour")
    x = np.random.default_rng(1).random((5, *SHAPE), dtype=np.float32)
    np.save(root / "x.npy", x)
    return {"root": root, "model": model, "bundle": bundle, "x": x}


def test_export_records_the_shapes_and_the_likelihood(user):
    m = json.loads((user["bundle"] / "manifest.json").read_text())
    assert m["model"]["image_shape"] == list(SHAPE) and m["model"]["latent_shape"] == list(LATENT)
    assert m["model"]["likelihood"] == "gaussian" and m["model"]["sigma"] == SIGMA
    assert m["model"]["latent_dim"] == 64 and m["name"] == "tiny-colour"
    assert [o["name"] for o in m["graphs"]["decoder"]["outputs"]] == ["probs"]
    assert m["variants"]["fp32"]["validation"]["batch_sizes"] == [2, 5]


def test_runtime_matches_the_users_module(user):
    rt = VAERuntime.load(user["bundle"], warn=lambda s: None)
    assert rt.self_check_diffs is not None  # the golden vectors ran, at this shape
    x = user["x"]
    mu, logvar = rt.encode(x)
    assert mu.shape == (5, *LATENT)
    with torch.no_grad():
        tmu, tlogvar = user["model"].encode(torch.from_numpy(x))
        tmean = user["model"].decode(tmu)
    assert np.max(np.abs(mu - tmu.numpy())) < 1e-4 and np.max(np.abs(logvar - tlogvar.numpy())) < 1e-4
    assert np.max(np.abs(rt.reconstruct(x) - tmean.numpy())) < 1e-4
    assert rt.sample(3, seed=0).shape == (3, *SHAPE)
    assert rt.decode(mu.reshape(5, -1)).shape == (5, *SHAPE)  # flat latents are taken too
    frames = rt.interpolate(x[0], x[1], steps=4)
    assert frames.shape == (4, *SHAPE) and np.max(np.abs(frames[0] - rt.reconstruct(x[:1])[0])) < 1e-5


def test_score_is_the_gaussian_elbo_of_the_users_module(user):
    """-ELBO with the model's own likelihood: N(x; decode(z), sigma^2) in nats of the continuous
    density, the same 16 draws the runtime documents (default_rng(seed))."""
    rt = VAERuntime.load(user["bundle"], warn=lambda s: None)
    x = user["x"][:2]
    got = rt.score(x, seed=0)
    with torch.no_grad():
        mu, logvar = (t.reshape(2, -1).double() for t in user["model"].encode(torch.from_numpy(x)))
        eps = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 64), dtype=np.float32)).double()
        total = torch.zeros(2, dtype=torch.float64)
        for e in eps:
            z = (mu + torch.exp(0.5 * logvar) * e).float().reshape(2, *LATENT)
            mean = user["model"].decode(z).double()
            nll = (0.5 * ((torch.from_numpy(x).double() - mean) / SIGMA) ** 2 + np.log(SIGMA)
                   + 0.5 * np.log(2 * np.pi)).reshape(2, -1).sum(-1)
            kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)
            total += nll + kl
    assert np.allclose(got, (total / 16).numpy(), rtol=1e-4, atol=1e-2), (got, total / 16)
    assert rt.score(x[:1], iw_samples=50, seed=0)[0] <= got[0] + 1.0  # the IW bound is tighter
    with pytest.raises(VaeEdgeError, match="Bernoulli"):
        rt.denoise(x)
    with pytest.raises(VaeEdgeError, match="not logits"):
        rt.decode(np.zeros((1, *LATENT), np.float32), logits=True)


def test_every_on_device_command_through_the_cli(user, tmp_path):
    b, root = str(user["bundle"]), user["root"]
    run = CliRunner()

    def ok(*args):
        r = run.invoke(cli, list(args))
        assert r.exit_code == 0, r.output
        return r

    ok("sample", "--bundle", b, "-n", "6", "-o", str(tmp_path / "s.npy"))
    assert np.load(tmp_path / "s.npy").shape == (6, *SHAPE)
    ok("sample", "--bundle", b, "-n", "6", "-o", str(tmp_path / "s.png"))
    assert Image.open(tmp_path / "s.png").mode == "RGB"
    ok("reconstruct", str(root / "x.npy"), "--bundle", b, "-o", str(tmp_path / "r.npy"))
    assert np.allclose(np.load(tmp_path / "r.npy"), VAERuntime.load(b, warn=lambda s: None).reconstruct(user["x"]))
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):  # a folder of image files, at another size: resized to 16x16
        Image.fromarray((user["x"][i].transpose(1, 2, 0) * 255).astype(np.uint8)).resize((32, 32)).save(folder / f"{i}.png")
    ok("reconstruct", str(folder), "--bundle", b, "-o", str(tmp_path / "r.png"))
    ok("encode", str(root / "x.npy"), "--bundle", b, "-o", str(tmp_path / "z.npy"))
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (5, *LATENT)
    ok("decode", str(tmp_path / "z.npy"), "--bundle", b, "-o", str(tmp_path / "d.npy"))
    assert np.load(tmp_path / "d.npy").shape == (5, *SHAPE)
    ok("interpolate", str(folder / "0.png"), str(folder / "1.png"), "--bundle", b, "-o", str(tmp_path / "m.gif"))
    r = ok("score", str(root / "x.npy"), "--bundle", b, "--json")
    rows = json.loads(r.output.strip().splitlines()[-1])
    assert len(rows) == 5
    d = int(np.prod(SHAPE))  # 8-bit images' bits per dimension, as the literature reports them
    assert np.isclose(rows[0]["bits_per_dim_8bit"], (rows[0]["neg_elbo"] + d * np.log(256)) / (d * np.log(2)), atol=1e-3)
    r = run.invoke(cli, ["denoise", str(root / "x.npy"), "--bundle", b, "-o", str(tmp_path / "n.png")])
    assert r.exit_code == 1 and "Bernoulli" in r.output and not (tmp_path / "n.png").exists()
    r = run.invoke(cli, ["reconstruct", "mnist:test[0:2]", "--bundle", b, "-o", str(tmp_path / "q.png")])
    assert r.exit_code == 1 and "takes [3, 16, 16]" in r.output


def test_export_cli_with_the_users_module(user, tmp_path):
    root = user["root"]
    r = CliRunner().invoke(cli, ["export", "--module", f"{root / 'my_vae.py'}:make", "--weights", str(root / "weights.pt"),
                                 "--input-shape", "3,16,16", "--likelihood", "gaussian", "--sigma", "0.1",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    a = VAERuntime.load(tmp_path / "b", warn=lambda s: None).encode(user["x"])[0]
    assert np.array_equal(a, VAERuntime.load(user["bundle"], warn=lambda s: None).encode(user["x"])[0])


@pytest.mark.parametrize("args, match", [
    (["--input-shape", "3,16,16", "--likelihood", "gaussian"], "needs --sigma"),
    (["--input-shape", "3,16"], "C,H,W"),
    (["--input-shape", "1,16,16"], "failed|wrong|decode|channels|expected"),
])
def test_export_cli_errors_are_one_line(user, tmp_path, args, match):
    import re

    r = CliRunner().invoke(cli, ["export", "--module", f"{user['root'] / 'my_vae.py'}:make", *args,
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and re.search(match, r.output), r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_a_module_without_the_protocol_is_refused(tmp_path):
    with pytest.raises(VaeEdgeError, match="no decode"):
        class Half(torch.nn.Module):
            def encode(self, x):
                return x, x
        export_vae(Half(), (1, 8, 8), tmp_path / "b")
    assert not (tmp_path / "b").exists()


DIFFUSERS_MODULE = textwrap.dedent('''
    import torch
    from diffusers import AutoencoderKL

    def make():
        """The architecture of Stable Diffusion's VAE, at a toy size (random weights)."""
        torch.manual_seed(0)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                             down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                             up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                             block_out_channels=(8, 16), norm_num_groups=4, sample_size=16)
''')


def test_diffusers_autoencoderkl_through_the_adapter(tmp_path):
    """diffusers' AutoencoderKL (images in [-1, 1], latent_dist, decode().sample) exported with
    --adapter diffusers: its [4, 8, 8] latent means and its decoded images match the module's."""
    from vae_edge.export.adapters import DiffusersVAE

    (tmp_path / "sd_vae.py").write_text(DIFFUSERS_MODULE)
    r = CliRunner().invoke(cli, ["export", "--module", f"{tmp_path / 'sd_vae.py'}:make", "--adapter", "diffusers",
                                 "--input-shape", "3,16,16", "--likelihood", "gaussian", "--sigma", "0.05",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    namespace: dict = {}
    exec(compile(DIFFUSERS_MODULE, "sd_vae.py", "exec"), namespace)
    vae = DiffusersVAE(namespace["make"]().eval())
    x = np.random.default_rng(2).random((3, 3, 16, 16), dtype=np.float32)
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    with torch.no_grad():
        mu, logvar = vae.encode(torch.from_numpy(x))
        image = vae.decode(mu)
        dist = vae.vae.encode(torch.from_numpy(2 * x - 1)).latent_dist
    assert torch.equal(mu, dist.mean)  # the adapter reads the posterior diffusers computes
    got_mu, got_logvar = rt.encode(x)
    assert got_mu.shape == (3, 4, 8, 8)
    assert np.max(np.abs(got_mu - mu.numpy())) < 1e-4 and np.max(np.abs(got_logvar - logvar.numpy())) < 1e-4
    assert np.max(np.abs(rt.reconstruct(x) - image.numpy())) < 1e-4
    assert rt.sample(2, seed=0).shape == (2, 3, 16, 16)
    # then every stage, as for any bundle: quantize on the user's images, the commands, the page, bench
    from stages import every_command, page_and_bench

    calib = np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "calib.npy", calib)
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "b"), "--calibration-data", str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    variant = [v for v in VAERuntime.load(tmp_path / "b", warn=lambda s: None).info.variants if v != "fp32"][0]
    np.save(tmp_path / "few.npy", x)
    (tmp_path / "cmds").mkdir()
    every_command(tmp_path / "b", tmp_path / "few.npy", tmp_path / "cmds", variant)
    page_and_bench(tmp_path / "b", tmp_path, x[:1])
    r = CliRunner().invoke(cli, ["export", "--module", f"{tmp_path / 'sd_vae.py'}:make", "--adapter", "diffusers",
                                 "--input-shape", "3,16,16", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--likelihood gaussian" in r.output


def test_attributes_adapter_splits_a_stacked_encoder(tmp_path):
    """A module with encoder/decoder submodules whose encoder stacks mu and logvar along
    dimension 1 (a common layout): mu is the first half, logvar the second."""
    from vae_edge.export.adapters import adapt

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12))  # mu, logvar: 6 each
    model.decoder = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.Unflatten(1, (1, 8, 8)))  # logits
    wrapped = adapt(model, "attributes")
    export_vae(wrapped, (1, 8, 8), tmp_path / "b", name="stacked")
    x = np.random.default_rng(3).random((4, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        h = model.encoder(torch.from_numpy(x))
    mu, logvar = VAERuntime.load(tmp_path / "b", warn=lambda s: None).encode(x)
    assert np.max(np.abs(mu - h[:, :6].numpy())) < 1e-5 and np.max(np.abs(logvar - h[:, 6:].numpy())) < 1e-5
    with pytest.raises(VaeEdgeError, match="encoder and decoder submodules"):
        adapt(torch.nn.Linear(2, 2), "attributes")


def test_graphs_exported_elsewhere_are_wrapped_into_a_bundle(user, tmp_path):
    """--encoder-onnx/--decoder-onnx: two graphs with vae-edge's names become a bundle (shapes read
    from the graphs, a round trip checked, golden vectors), which runs as the original does; graphs
    with other names are refused in one line that says what they have."""
    import onnx

    b = user["bundle"]
    r = CliRunner().invoke(cli, ["export", "--encoder-onnx", str(b / "encoder.onnx"), "--decoder-onnx",
                                 str(b / "decoder.onnx"), "--likelihood", "gaussian", "--sigma", str(SIGMA),
                                 "--out", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    wrapped, original = (VAERuntime.load(p, warn=lambda s: None) for p in (tmp_path / "w", b))
    assert wrapped.image_shape == SHAPE and wrapped.latent_shape == LATENT
    assert np.array_equal(wrapped.reconstruct(user["x"]), original.reconstruct(user["x"]))
    assert np.allclose(wrapped.score(user["x"]), original.score(user["x"]))
    m = onnx.load(str(b / "decoder.onnx"))
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = ["sample" if o == old else o for o in node.output]
    m.graph.output[0].name = "sample"
    onnx.save(m, str(tmp_path / "renamed.onnx"))
    r = CliRunner().invoke(cli, ["export", "--encoder-onnx", str(b / "encoder.onnx"), "--decoder-onnx",
                                 str(tmp_path / "renamed.onnx"), "--likelihood", "gaussian", "--sigma", "0.1",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "gives ['sample']" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_quantize_with_the_users_calibration_data(user, tmp_path):
    """Static int8 of the colour conv VAE, calibrated on the user's own images: the variant runs,
    its recorded accuracy and calibration say whose data; without data the bundle is refused."""
    import shutil

    b = tmp_path / "b"
    shutil.copytree(user["bundle"], b)
    rng = np.random.default_rng(3)  # smooth colour images: blurred noise, like the model's domain
    raw = rng.random((64, 3, 4, 4), dtype=np.float32)
    data = np.clip(raw.repeat(4, axis=2).repeat(4, axis=3) + 0.05 * rng.standard_normal((64, *SHAPE)), 0, 1)
    np.save(tmp_path / "mine.npy", data.astype(np.float32))
    run = CliRunner()
    r = run.invoke(cli, ["quantize", str(b), "--mode", "static"])
    assert r.exit_code == 1 and "give --calibration-data" in r.output
    r = run.invoke(cli, ["quantize", str(b), "--mode", "static", "--calibration-data", str(tmp_path / "mine.npy"),
                         "--json"])
    assert r.exit_code == 0, r.output
    entry = json.loads(r.output.strip().splitlines()[-1])
    assert entry["variant"] == "int8-static"
    assert "32 images of 64 images from" in entry["quantization"]["calibration"]["encoder"]
    assert entry["accuracy"]["test_images"] == 16  # the user's held-out quarter
    rt = VAERuntime.load(b, variant="int8-static", warn=lambda s: None)
    fp = VAERuntime.load(b, warn=lambda s: None)
    assert np.max(np.abs(rt.reconstruct(data[:4]) - fp.reconstruct(data[:4]))) < 0.2
    assert abs(entry["accuracy"]["neg_elbo_delta"]) < 0.05 * abs(entry["accuracy"]["neg_elbo_fp32"]) + 5
    r = run.invoke(cli, ["quantize", str(b), "--calibration-data", "mnist:test[0:8]"])
    assert r.exit_code == 1 and "takes [3, 16, 16]" in r.output


def test_bench_times_the_bundle_against_the_users_module(user):
    """`vae-edge bench --module`: the user's torch module is the PyTorch contender, on inputs of
    the bundle's own shapes (a [3, 16, 16] image, a [4, 4, 4] latent)."""
    root = user["root"]
    r = CliRunner().invoke(cli, ["bench", "--bundle", str(user["bundle"]), "--batch-sizes", "2", "--min-time", "0.02",
                                 "--warmup", "1", "--module", f"{root / 'my_vae.py'}:make", "--weights",
                                 str(root / "weights.pt"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    rows = {(row["graph"], row["variant"]) for row in report["rows"]}
    assert {("encoder", "torch"), ("decoder", "torch"), ("encoder", "fp32"), ("decoder", "fp32")} <= rows


LEARNED = textwrap.dedent('''
    import torch
    from torch import nn

    class LearnedSigmaVAE(nn.Module):
        """decode(z) -> (mean, log_sigma): a Gaussian decoder with its own variance per value."""

        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 12))
            self.dec = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2 * 3 * 8 * 8))

        def encode(self, x):
            h = self.enc(x)
            return h[:, :6], h[:, 6:]

        def decode(self, z):
            h = self.dec(z).view(-1, 2, 3, 8, 8)
            return torch.sigmoid(h[:, 0]), h[:, 1].clamp(-4, 1)

    def make():
        torch.manual_seed(0)
        return LearnedSigmaVAE()
''')


def test_a_decoder_with_its_own_variance(tmp_path):
    """decode returning (mean, log_sigma): exported with both outputs, scored with the per-value
    variance (as the torch module computes it), quantized, and on the page."""
    (tmp_path / "v.py").write_text(LEARNED)
    run = CliRunner()
    r = run.invoke(cli, ["export", "--module", f"{tmp_path / 'v.py'}:make", "--input-shape", "3,8,8",
                         "--likelihood", "gaussian", "--sigma", "0.1", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 1 and "no --sigma" in r.output
    r = run.invoke(cli, ["export", "--module", f"{tmp_path / 'v.py'}:make", "--input-shape", "3,8,8",
                         "--likelihood", "gaussian", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    assert rt.learned_sigma and rt.sigma is None
    namespace: dict = {}
    exec(compile(LEARNED, "v.py", "exec"), namespace)
    model = namespace["make"]().eval()
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(torch.from_numpy(x)))
        eps = torch.from_numpy(np.random.default_rng(0).standard_normal((16, 6), dtype=np.float32)).double()
        total = torch.zeros(2, dtype=torch.float64)
        for e in eps:
            mean, ls = (t.double() for t in model.decode((mu + torch.exp(0.5 * logvar) * e).float()))
            nll = (0.5 * (torch.from_numpy(x).double() - mean) ** 2 * torch.exp(-2 * ls) + ls
                   + 0.5 * np.log(2 * np.pi)).reshape(2, -1).sum(-1)
            total += nll - 0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1)
    assert np.allclose(rt.score(x, seed=0), (total / 16).numpy(), rtol=1e-4, atol=1e-2)
    np.save(tmp_path / "cal.npy", np.random.default_rng(2).random((16, 3, 8, 8), dtype=np.float32))
    r = run.invoke(cli, ["quantize", str(tmp_path / "b"), "--calibration-data", str(tmp_path / "cal.npy")])
    assert r.exit_code == 0, r.output
    from stages import page_and_bench

    page_and_bench(tmp_path / "b", tmp_path, x[:1])
