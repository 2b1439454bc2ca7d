"""`vae-edge export` and `quantize` (torch/onnx, imported inside the commands)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vae_edge import VaeEdgeError
from vae_edge.cli.base import (
    data_dir_option,
    json_option,
    progress_log,
)

# --------------------------------------------------------------------------------------------
# export / quantize (torch + onnx)
# --------------------------------------------------------------------------------------------

@click.command()
@click.argument("checkpoint", type=click.Path(), required=False)
@click.option("--out", required=True, type=click.Path(file_okay=True), help="Bundle folder to write.")
@click.option("--module", "module", default=None, metavar="PATH.py:FACTORY",
              help="Your own VAE instead of a vae-edge checkpoint: FACTORY() in PATH.py returns a torch module "
                   "with encode(x) -> (mu, logvar) and decode(z) (docs/byo.md). PATH.py is imported and runs "
                   "as Python code with your permissions: pass only files you trust.")
@click.option("--diffusers", "diffusers_dir", type=click.Path(file_okay=False), default=None,
              help="A diffusers VAE folder (save_pretrained: config.json + safetensors) or a pipeline folder "
                   "(its vae/): AutoencoderKL of SD 1.x/2.x, SDXL, SD3/Flux. Read locally, no network; no module "
                   "file. Latents are the diffusion model's (scaled). The graphs take any image size (multiples of "
                   "the VAE's factor, 8 for SD); --input-shape sets the model's own (what sample makes).")
@click.option("--fixed-size", is_flag=True,
              help="With --diffusers: graphs of the --input-shape size only (static shapes, for accelerators that "
                   "need them; larger images are then decoded in tiles of that size).")
@click.option("--subfolder", default=None, help="With --diffusers: the VAE's subfolder (default: vae/ of a pipeline).")
@click.option("--encoder-onnx", type=click.Path(dir_okay=False), default=None,
              help="Graphs exported elsewhere, wrapped into a bundle (with --decoder-onnx; vae-edge's names: x -> mu, "
                   "logvar and z -> probs[, logits]).")
@click.option("--decoder-onnx", type=click.Path(dir_okay=False), default=None, help="With --encoder-onnx.")
@click.option("--adapter", type=click.Choice(["diffusers", "attributes"]), default=None,
              help="With --module: wrap it first (diffusers: an AutoencoderKL; attributes: a module with encoder "
                   "and decoder submodules).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="With --module: a state_dict file loaded into the module (torch.load, weights_only=True).")
@click.option("--input-shape", default=None, metavar="C,H,W", help="With --module: one image's shape.")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian"]), default="bernoulli", show_default=True,
              help="With --module: decode(z) gives Bernoulli logits, or the Gaussian mean in [0, 1].")
@click.option("--sigma", type=float, default=None, help="With --likelihood gaussian: the per-pixel standard deviation.")
@click.option("--name", default=None, help="With --module: the model's name in the manifest (default: the class's).")
@click.option("--opset", type=click.IntRange(18), default=18, show_default=True,
              help="ONNX opset, 18 or newer (the graphs use Split with num_outputs, new in 18).")
@click.option("--ort-format", is_flag=True, help="Also write .ort files for onnxruntime mobile/minimal builds.")
@click.option("--release", type=click.IntRange(0, 2**31 - 1), default=1, show_default=True,
              help="Release number recorded in the (signed) manifest: devices given `--expect NAME@N` refuse "
                   "older releases (rollbacks). Raise it for every bundle you ship.")
@data_dir_option
def export(checkpoint, out, module, diffusers_dir, fixed_size, subfolder, encoder_onnx, decoder_onnx, adapter, weights, input_shape, likelihood, sigma, name, opset, ort_format, release,
           data_dir) -> None:
    """Export encoder and decoder to ONNX, validated against PyTorch, as a bundle.

    A vae-edge checkpoint is validated on real MNIST test images (batch 1, 7, 256), so export needs
    the test split (--data-dir, or the user cache). Your own VAE (--module) is validated on random
    inputs of its shape (batch 2, 5).

    \b
    Example: vae-edge export runs/mlp/model.pt --out bundles/mlp
             vae-edge export --module my_vae.py:make --weights vae.pt --input-shape 3,32,32 \\
                 --likelihood gaussian --sigma 0.1 --out bundles/mine
    """
    if sum(bool(a) for a in (checkpoint, module, diffusers_dir, encoder_onnx or decoder_onnx)) > 1:
        raise click.UsageError("give one of a CHECKPOINT, --module, --diffusers, or --encoder-onnx with --decoder-onnx")
    if (subfolder or fixed_size) and not diffusers_dir:
        raise click.UsageError("--subfolder and --fixed-size go with --diffusers")
    if diffusers_dir:
        path = _export_diffusers(diffusers_dir, subfolder, input_shape, sigma, name, out, opset, release, fixed_size)
        click.echo(f"bundle: {path}")
        return
    if encoder_onnx or decoder_onnx:
        if not (encoder_onnx and decoder_onnx):
            raise click.UsageError("--encoder-onnx and --decoder-onnx go together")
        from vae_edge.export.byo import wrap_onnx

        path = wrap_onnx(encoder_onnx, decoder_onnx, out, likelihood=likelihood, sigma=sigma, name=name,
                         release=release, log=progress_log())
        click.echo(f"bundle: {path}")
        return
    if (adapter or weights or input_shape) and not module:
        raise click.UsageError("--adapter, --weights and --input-shape go with --module (--input-shape with --diffusers too)")
    if module:
        path = _export_module(module, adapter, weights, input_shape, likelihood, sigma, name, out, opset, release)
    else:
        if not checkpoint:
            raise click.UsageError("give a CHECKPOINT (a vae-edge training run's model.pt) or --module PATH.py:FACTORY")
        from vae_edge.export.onnx_export import export_bundle

        path = export_bundle(checkpoint, out, opset=opset, ort_format=ort_format, release=release,
                             data_dir=data_dir, log=progress_log())
    click.echo(f"bundle: {path}")


DIFFUSERS_SIGMA = 0.05  # the decoder's image as a Gaussian mean: its assumed per-pixel deviation


def _parse_shape(input_shape: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in input_shape.split(","))
    except ValueError:
        raise click.UsageError(f"--input-shape takes C,H,W such as 3,32,32, got {input_shape!r}") from None


def _export_diffusers(folder, subfolder, input_shape, sigma, name, out, opset, release, fixed_size=False):
    from vae_edge.export.adapters import load_diffusers
    from vae_edge.export.byo import export_vae

    model, facts = load_diffusers(folder, subfolder)
    c, size, k = facts["in_channels"], facts["sample_size"], facts["spatial_factor"]
    shape = _parse_shape(input_shape) if input_shape else (c, size, size)
    if len(shape) != 3 or shape[0] != c or shape[1] % k or shape[2] % k or min(shape) < 1:
        raise click.UsageError(f"--input-shape {','.join(map(str, shape))}: this VAE takes {c} channels and sides "
                               f"that are multiples of {k}")
    if sigma is None:
        progress_log()(f"note: the decoder's image is taken as a Gaussian mean with sigma {DIFFUSERS_SIGMA} per "
                       "value in [0, 1] (for -ELBO and score; pass --sigma to choose)")
    return export_vae(model, shape, out, likelihood="gaussian", sigma=sigma or DIFFUSERS_SIGMA,
                      name=name or Path(facts["source"]).resolve().name, opset=opset, release=release,
                      log=progress_log(), diffusers=facts, spatial_factor=0 if fixed_size else k)


def _export_module(spec: str, adapter, weights, input_shape, likelihood, sigma, name, out, opset, release):
    from vae_edge.export.adapters import adapt
    from vae_edge.export.byo import export_vae, load_module

    if not input_shape:
        raise click.UsageError("--module needs --input-shape C,H,W")
    shape = _parse_shape(input_shape)
    model = adapt(load_module(spec, weights), adapter)
    if adapter == "diffusers" and likelihood != "gaussian":
        raise click.UsageError("--adapter diffusers decodes an image (a Gaussian mean): pass --likelihood gaussian --sigma S")
    return export_vae(model, shape, out, likelihood=likelihood, sigma=sigma, name=name, opset=opset,
                      release=release, log=progress_log())


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--mode", type=click.Choice(["auto", "dynamic", "static", "fp16"]), default="auto", show_default=True,
              help="auto: static int8 for conv graphs, dynamic int8 for MLP graphs.")
@data_dir_option
@click.option("--calibration-size", type=int, default=512, show_default=True, help="Images to calibrate on (at most).")
@click.option("--calibration-data", "calibration_data", multiple=True, metavar="DATA",
              help="Your images (.npy/.npz, image files, folders, dataset slices; repeatable) instead of MNIST's: "
                   "half calibrate, a quarter chooses the float layers, a quarter measures the accuracy. Needed "
                   "for a bundle of your own VAE.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True, help="How static calibration picks activation ranges.")
@click.option("--per-channel", is_flag=True, help="Per-channel weight scales.")
@click.option("--reduce-range", is_flag=True,
              help="7-bit weights: avoids the 16-bit saturation of u8 x s8 products on x86 CPUs without VNNI "
                   "(more accurate there, slightly less on others).")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True, help="Activation integer type of static quantization.")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True, help="Weight integer type.")
@click.option("--quantize-outputs", is_flag=True,
              help="Static mode: quantize the output layers too (by default the last weight layer before each "
                   "output and what follows it stay float, so logits and latents never pass through 8 bits).")
@click.option("--eval-size", type=int, default=10000, show_default=True, help="Test images for the accuracy record.")
@click.option("--target", type=click.Choice(["x86", "x86-vnni", "x86-avx2", "arm64", "wasm", "here"]), default="x86",
              show_default=True,
              help="Device family whose settings apply (export/targets.py); recorded in the manifest, and "
                   "`--variant auto` on such a device uses it. x86 suits every x86 CPU; x86-vnni and x86-avx2 "
                   "tune for those families; here: this machine's family.")
@json_option
@click.pass_context
def quantize(ctx, bundle, mode, data_dir, calibration_size, calibration_data, method, per_channel, reduce_range,
             activation_type, weight_type, quantize_outputs, eval_size, target, as_json) -> None:
    """Add a quantized variant (int8 dynamic/static, fp16) to a bundle, with its accuracy.

    \b
    Example: vae-edge quantize bundles/mlp --mode dynamic
             vae-edge quantize bundles/conv --mode static --per-channel
             vae-edge quantize bundles/conv --mode static --reduce-range   # x86 without VNNI
             vae-edge quantize bundles/mlp --mode dynamic --target arm64   # -> int8-dynamic-arm64
             vae-edge quantize bundles/conv --target here   # this CPU family's settings (x86-vnni, ...)
             vae-edge quantize bundles/mine --calibration-data my_images.npy   # your own VAE's data
    """
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.export.targets import detected

    if target == "here":
        target = detected()
        click.echo(f"target: {target} (this CPU)", err=True)
    if calibration_size <= 0:
        raise VaeEdgeError(f"--calibration-size must be positive, got {calibration_size}")
    qc = QuantizeConfig(mode=mode, method=method, activation_type=activation_type, weight_type=weight_type,
                        per_channel=per_channel, reduce_range=reduce_range, calibration_size=calibration_size,
                        eval_size=eval_size, float_outputs=not quantize_outputs,
                        target=target)
    explicit = {name for name in ("activation_type", "weight_type", "per_channel", "reduce_range")
                if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}
    images = None
    if calibration_data:
        from vae_edge.runtime.bundle import read_manifest
        from vae_edge.runtime.images import load_inputs

        model = read_manifest(bundle).model
        images = load_inputs(calibration_data, data_dir, shape=model.image_shape, any_size=model.spatial_factor)[0]
    variant, entry = quantize_bundle(bundle, qc, data_dir=data_dir, log=progress_log(), explicit=explicit,
                                     calibration_data=images,
                                     calibration_label=f"{len(images)} images from {', '.join(calibration_data)}"[:200]
                                     if images is not None else "")
    if as_json:
        click.echo(json.dumps({"variant": variant, **entry}))
        return
    a = entry["accuracy"]
    click.echo(f"{variant}: -ELBO {a['neg_elbo']:.2f} nats ({a['neg_elbo_delta']:+.3f} vs fp32), "
               f"decoder PSNR {a['decoder_psnr_db']:.1f} dB, size {entry['size_ratio_to_fp32']:.0%} of fp32"
               + ("" if entry["within_budget"] else "  [OUTSIDE the accuracy budget]"))


