"""Diffusers VAEs from their own folders (issue 31): `export --diffusers DIR` reads a
save_pretrained folder or a pipeline's vae/ with no module file and no network; the bundle's
latents are the diffusion model's (scaled, and shifted for the SD3/Flux kind), so a pipeline's
latents decode to what diffusers' own `vae.decode` gives; static int8 keeps the convolutions int8.
Small configurations of the real classes (random weights), at two image sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime

CONFIGS = {
    # Stable Diffusion 1.x/2.x and SDXL: 4 channels, scaled by 0.18215 / 0.13025
    "sd": dict(latent_channels=4, scaling_factor=0.18215, shift_factor=None),
    # SD3 and Flux: 16 channels, shifted and scaled
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609),
}


def _save_kl(folder: Path, kind: str, pipeline: bool = False) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        block_out_channels=(8, 16), norm_num_groups=4, sample_size=16, **CONFIGS[kind]).eval()
    if pipeline:
        vae.save_pretrained(folder / "vae")
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                            "vae": ["diffusers", "AutoencoderKL"]}))
    else:
        vae.save_pretrained(folder)
    return vae


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_a_diffusers_folder_exports_and_decodes_as_diffusers_does(tmp_path, kind):
    vae = _save_kl(tmp_path / "pipe", kind, pipeline=True)
    cfg = vae.config
    shift = cfg.shift_factor or 0.0
    out = tmp_path / "b"
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "pipe"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rt = VAERuntime.load(out, warn=lambda s: None)
    m = json.loads((out / "manifest.json").read_text())["model"]
    assert m["latent_scaling"] == {"space": "diffusion", "scaling_factor": cfg.scaling_factor, "shift_factor": shift}
    assert m["diffusers"]["class"] == "AutoencoderKL" and rt.latent_shape == (cfg.latent_channels, 8, 8)
    # one bundle, any size: its own (16x16, the config's), and others (not square, larger)
    for h, w in ((16, 16), (24, 40), (48, 32)):
        # a diffusion pipeline's latents -> the image diffusers' own decode gives (as its pipelines call it)
        latents = np.random.default_rng(1).standard_normal((2, cfg.latent_channels, h // 2, w // 2), dtype=np.float32)
        with torch.no_grad():
            want = vae.decode(torch.from_numpy(latents) / cfg.scaling_factor + shift).sample
        want = ((want + 1) / 2).clamp(0, 1).numpy()
        assert np.max(np.abs(rt.decode(latents) - want)) < 1e-4
        # an image -> the latents a pipeline would make of it ((mean - shift) * scale)
        x = np.random.default_rng(2).random((2, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            dist = vae.encode(torch.from_numpy(2 * x - 1)).latent_dist
        mu, logvar = rt.encode(x)
        assert np.max(np.abs(mu - ((dist.mean - shift) * cfg.scaling_factor).numpy())) < 1e-4
        raw, raw_logvar = rt.to_raw(mu, logvar)
        assert np.max(np.abs(raw - dist.mean.numpy())) < 1e-4 and np.max(np.abs(raw_logvar - dist.logvar.numpy())) < 1e-4
        assert np.max(np.abs(rt.from_raw(raw) - mu)) < 1e-5
    # the CLI's --latent-space: raw latents in and out
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["encode", str(tmp_path / "x.npy"), "--bundle", str(out), "--latent-space", "raw",
                                 "-o", str(tmp_path / "raw.npy")])
    assert r.exit_code == 0, r.output
    assert np.max(np.abs(np.load(tmp_path / "raw.npy") - dist.mean.numpy())) < 1e-4
    r = CliRunner().invoke(cli, ["decode", str(tmp_path / "raw.npy"), "--bundle", str(out), "--latent-space", "raw",
                                 "-o", str(tmp_path / "img.npy")])
    assert r.exit_code == 0, r.output
    with torch.no_grad():
        want = ((vae.decode(dist.mean).sample + 1) / 2).clamp(0, 1).numpy()
    assert np.max(np.abs(np.load(tmp_path / "img.npy") - want)) < 1e-4


def test_a_folder_that_is_not_a_diffusers_vae_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    for folder, says in ((tmp_path / "empty", "has no config.json"), (tmp_path / "unet", "UNet2DConditionModel"),
                         (tmp_path / "none", "is not a folder")):
        r = CliRunner().invoke(cli, ["export", "--diffusers", str(folder), "--out", str(tmp_path / "b")])
        assert r.exit_code != 0 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_static_int8_of_autoencoderkl_makes_its_convolutions_int8(tmp_path):
    """onnxruntime's static quantizer used to fail on AutoencoderKL (stale shape annotations of
    the exported GroupNorm; its InstanceNormalization in QDQ): now every convolution of both graphs
    runs on int8 weights and activations, the normalizations and attention's activation products
    in float, and no fall-back to dynamic int8."""
    _save_kl(tmp_path / "vae", "sd")
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "calib.npy", np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32))
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "b"), "--mode", "static", "--calibration-data",
                                 str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    entry = manifest["variants"]["int8-static"]
    for g in ("encoder", "decoder"):
        assert entry["quantization"]["graphs"][g]["method"] == "static"
        graph = onnx.load(str(tmp_path / "b" / entry["files"][g])).graph
        int8 = {i.name for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
        producer = {o: n for n in graph.node for o in n.output}
        kept = set(entry["quantization"]["graphs"][g]["kept_in_float"])  # the output tail: float outputs
        convs = [n for n in graph.node if n.op_type == "Conv" and n.name not in kept]
        assert len(convs) >= len([n for n in graph.node if n.op_type == "Conv"]) - 2 >= 5, kept
        for conv in convs:  # weights: DequantizeLinear of an int8 tensor; input: a QDQ pair
            w, x = producer.get(conv.input[1]), producer.get(conv.input[0])
            assert w is not None and w.op_type == "DequantizeLinear" and w.input[0] in int8, conv.name
            assert x is not None and x.op_type == "DequantizeLinear", conv.name
        assert any(n.op_type == "InstanceNormalization" for n in graph.node)
        assert entry["quantization"]["graphs"][g]["float_by_design"]
    sizes = {v: sum(manifest["files"][f]["size"] for f in manifest["variants"][v]["files"].values())
             for v in ("fp32", "int8-static")}
    assert sizes["int8-static"] < 0.35 * sizes["fp32"], sizes
    rt = VAERuntime.load(tmp_path / "b", variant="int8-static", warn=lambda s: None)
    assert np.all(np.isfinite(rt.decode(np.zeros((1, *rt.latent_shape), np.float32))))


class _OverflowingVAE(torch.nn.Module):
    """A decoder whose activations pass fp16's 65504 before a GroupNorm brings them back, as SDXL's
    VAE decoder's do (madebyollin's sdxl-vae-fp16-fix retrains it for that reason)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Conv2d(3, 8, 4, stride=2, padding=1)
        self.dec = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, 16)
        self.up = torch.nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1)

    def encode(self, x):
        return self.enc(x).chunk(2, dim=1)

    def decode(self, z):
        h = self.dec(z) * 1e5  # (a product onnxruntime's CPU kernels compute in fp16 itself)
        return torch.sigmoid(self.up(torch.nn.functional.silu(self.norm(h + h))))


def _strict_fp16(path: Path, z: np.ndarray) -> np.ndarray:
    """A graph run with every fp16 tensor really in fp16 (onnx's reference evaluator, numpy):
    onnxruntime's CPU kernels compute most fp16 nodes in fp32 and drop the casts between them, so
    they never show the overflow a GPU or an NPU gives."""
    from onnx.reference import ReferenceEvaluator

    with np.errstate(all="ignore"):
        return ReferenceEvaluator(str(path)).run(None, {"z": z})[-1]


@pytest.mark.slow
def test_fp16_keeps_overflowing_layers_in_fp32(tmp_path):
    from vae_edge.export import quantize as q
    from vae_edge.export.byo import export_vae

    export_vae(_OverflowingVAE(), (3, 16, 16), tmp_path / "b", likelihood="gaussian", sigma=0.1)
    np.save(tmp_path / "calib.npy", np.random.default_rng(5).random((32, 3, 16, 16), dtype=np.float32))
    z = np.random.default_rng(3).standard_normal((4, 4, 8, 8), dtype=np.float32)
    # the premise: fp32 activations past fp16's range, so a plain conversion gives inf, then NaN
    q._fp16(tmp_path / "b" / "decoder.onnx", tmp_path / "plain.fp16.onnx")
    assert not np.all(np.isfinite(_strict_fp16(tmp_path / "plain.fp16.onnx", z)))
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "b"), "--mode", "fp16", "--calibration-data",
                                 str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    entry = json.loads((tmp_path / "b" / "manifest.json").read_text())["variants"]["fp16"]
    guard = entry["quantization"]["graphs"]["decoder"]["overflow_guard"]
    assert guard["largest_activation"] > 65504 and guard["kept_in_fp32"], guard
    assert not entry["quantization"]["graphs"]["encoder"]["overflow_guard"]["kept_in_fp32"]
    fp32 = VAERuntime.load(tmp_path / "b", warn=lambda s: None).decode(z)
    strict = _strict_fp16(tmp_path / "b" / entry["files"]["decoder"], z)
    assert np.all(np.isfinite(strict)) and np.max(np.abs(strict - fp32)) < 0.02
    fp16 = VAERuntime.load(tmp_path / "b", variant="fp16", warn=lambda s: None).decode(z)
    assert np.all(np.isfinite(fp16)) and np.max(np.abs(fp16 - fp32)) < 0.02


@pytest.mark.slow
def test_taesd_exports_with_a_deterministic_encoder(tmp_path):
    """diffusers' AutoencoderTiny (TAESD): its encoder gives latents, not a distribution; the
    bundle records that instead of inventing a variance, decodes and encodes as diffusers does,
    refuses what needs a posterior in one line, and takes static int8."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                          num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval()
    vae.save_pretrained(tmp_path / "taesd")
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "taesd"), "--input-shape", "3,32,32",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["model"]["posterior"] == "deterministic"
    assert [o["name"] for o in manifest["graphs"]["encoder"]["outputs"]] == ["mu"]
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    x = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(2 * x - 1)).latents
        image = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1).numpy()
    mu, logvar = rt.encode(x)
    assert np.max(np.abs(mu - latents.numpy())) < 1e-4 and np.all(np.isneginf(logvar))
    assert np.max(np.abs(rt.decode(mu) - image)) < 1e-4
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["score", str(tmp_path / "x.npy"), "--bundle", str(tmp_path / "b")])
    assert r.exit_code == 1 and "deterministic" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    np.save(tmp_path / "calib.npy", np.random.default_rng(5).random((32, 3, 32, 32), dtype=np.float32))
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "b"), "--mode", "static", "--calibration-data",
                                 str(tmp_path / "calib.npy")])
    assert r.exit_code == 0, r.output
    q = VAERuntime.load(tmp_path / "b", variant="int8-static", warn=lambda s: None)
    assert np.all(np.isfinite(q.decode(mu)))


@pytest.mark.slow
def test_any_size_is_split_to_fit_the_memory_limit_and_tiles_blend_within_the_bound(tmp_path, monkeypatch):
    """The graphs take any size; a call estimated over --max-memory runs one image at a time, then
    in tiles that fit; --tile asks for tiles. Tiles against the untiled decode: the bound stated in
    docs/diffusers.md (random weights, GroupNorm statistics taken per tile). Errors in one line."""
    _save_kl(tmp_path / "vae", "sd")
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    r = CliRunner().invoke(cli, ["info", "--bundle", str(tmp_path / "b")])
    assert r.exit_code == 0 and "any height and width that are multiples of 2" in r.output, r.output
    per_pixel = rt.info.model.activation_bytes_per_pixel
    # no memory arena for graphs of any size (it grows in powers of two and keeps what it took)
    assert not rt.decoder.get_session_options().enable_cpu_mem_arena
    assert per_pixel["decoder"] >= 4 * 16 and per_pixel["encoder"] >= 4 * 8  # 16 and 8 channels at full size, fp32
    z = np.random.default_rng(0).standard_normal((2, 4, 64, 48)).astype(np.float32)
    whole = rt.decode(z)
    assert whole.shape == (2, 3, 128, 96)
    # a limit that one image fits and two do not: one at a time, the same numbers
    from vae_edge.runtime.vae_runtime import MEMORY_RESERVE

    keep = 1 - MEMORY_RESERVE  # the share of --max-memory the estimate plans with
    one = rt._weight_bytes + 2 * whole[0].nbytes * 2 + 5 * per_pixel["decoder"] * 128 * 96
    rt.max_memory = int((one + 5 * per_pixel["decoder"] * 128 * 96 // 2) / keep)
    assert rt._plan("decoder", 2, (64, 48)) == (0, 0)
    assert np.max(np.abs(rt.decode(z) - whole)) < 1e-5
    # a limit that one image does not fit: tiles, blended within the bound
    rt.max_memory = int((rt._weight_bytes + 2 * 4 * 128 * 96 * 3 + 5 * per_pixel["decoder"] * 64 * 64) / keep)
    plan = rt._plan("decoder", 1, (64, 48))
    assert plan and plan != (0, 0) and max(plan) < 64
    tiled = rt.decode(z[:1])
    d = np.abs(tiled - whole[:1])
    assert 0 < d.max() < 0.3 and d.mean() < 0.03
    # --tile through the CLI, decode and encode
    np.save(tmp_path / "z.npy", z[:1])
    r = CliRunner().invoke(cli, ["decode", str(tmp_path / "z.npy"), "--bundle", str(tmp_path / "b"), "--tile", "32",
                                 "-o", str(tmp_path / "img.npy")])
    assert r.exit_code == 0, r.output
    d = np.abs(np.load(tmp_path / "img.npy") - whole[:1])
    assert 0 < d.max() < 0.3 and d.mean() < 0.03
    np.save(tmp_path / "x.npy", whole[:1])
    r = CliRunner().invoke(cli, ["encode", str(tmp_path / "x.npy"), "--bundle", str(tmp_path / "b"), "--tile", "32",
                                 "-o", str(tmp_path / "mu.npy")])
    assert r.exit_code == 0, r.output
    mu = rt.encode(whole[:1])[0]
    assert np.load(tmp_path / "mu.npy").shape == mu.shape == (1, 4, 64, 48)
    # one line for what cannot be done
    for args, says in ((["--tile", "33"], "multiple of 2"), (["--max-memory", "lots"], "a size such as 2G"),
                       (["--max-memory", "1M"], "at least 64M")):
        r = CliRunner().invoke(cli, ["decode", str(tmp_path / "z.npy"), "--bundle", str(tmp_path / "b"), *args,
                                     "-o", str(tmp_path / "bad.npy")])
        assert r.exit_code != 0 and says in r.output, (args, r.output)
        assert not (tmp_path / "bad.npy").exists()
    rt.max_memory = rt._weight_bytes + 1000
    with pytest.raises(VaeEdgeError, match="raise --max-memory"):
        rt.decode(z[:1])
    for bad, says in (((1, 5, 8, 8), "latents must have shape"), ((1, 4, 8), "latents must have shape")):
        with pytest.raises(VaeEdgeError, match=says):
            rt.decode(np.zeros(bad, np.float32))
    with pytest.raises(VaeEdgeError, match="multiples of 2"):
        rt.encode(np.zeros((1, 3, 33, 32), np.float32))
    with pytest.raises(VaeEdgeError, match="shape \\[batch, 3, height, width\\]"):
        rt.encode(np.zeros((1, 4, 32, 32), np.float32))
    # latents are bounded by the image they decode to (3 x 128 x 96 values here), not by their own size
    import vae_edge.runtime.vae_runtime as vr

    rt.max_memory = 2 << 30
    monkeypatch.setattr(vr, "MAX_IMAGE_VALUES", 3 * 128 * 96 - 1)
    with pytest.raises(VaeEdgeError, match="would give images of 128x96 \\(36,864 values\\)"):
        rt.decode(z[:1])
    monkeypatch.setattr(vr, "MAX_IMAGE_VALUES", 3 * 128 * 96)
    assert rt.decode(z[:1]).shape == (1, 3, 128, 96)
