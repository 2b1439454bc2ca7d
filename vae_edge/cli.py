"""The `vae-edge` command line. It parses options and calls library functions; torch and onnx
are imported inside the commands that need them, so `--help` and the on-device commands start
fast and run on the base install."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from vae_edge import VaeEdgeError, __version__


class _Group(click.Group):
    """Turns errors a user can cause into one line and a non-zero exit (traceback with --debug)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:  # bad option or argument: one line, not usage + hint + error
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"Error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except VaeEdgeError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except ImportError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            missing = getattr(e, "name", None) or str(e)
            extra = "export" if missing in ("onnx", "onnxscript") else "train"
            click.echo(
                f"Error: this command needs {missing}, which is not installed: "
                f"pip install 'vae-edge[{extra}]'",
                err=True,
            )
            ctx.exit(1)
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {type(e).__name__}: {e} (run `vae-edge --debug ...` for the traceback)", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vae-edge")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """vae-edge: train a VAE on MNIST, export it to ONNX, quantize it, run it on the edge.

    \b
    Main job on the shipped model:   vae-edge pipeline --out pipeline-out
    Generate digits, no torch needed: vae-edge sample -n 64 -o samples.png
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    cli(prog_name="vae-edge")


# --------------------------------------------------------------------------------------------
# Shared options, defined once
# --------------------------------------------------------------------------------------------

def dataset_option(f):
    return click.option(
        "--dataset", default="mnist", show_default=True,
        type=click.Choice(["mnist", "fashion-mnist"]), help="Which MNIST-format dataset.",
    )(f)


def data_dir_option(f):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False), default=None,
        help="Folder with the four IDX files (else $VAE_EDGE_DATA, the user cache, a download).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(f)


def positive(name: str):
    def check(ctx, param, value):
        if value is not None and value <= 0:
            raise click.BadParameter(f"must be positive, got {value}")
        return value
    return check


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@cli.group()
def data() -> None:
    """Find, verify and download MNIST-format data.

    \b
    Example: vae-edge data verify --data-dir ../shared/data/mnist
    """


@data.command("info")
@dataset_option
@data_dir_option
@json_option
def data_info(dataset: str, data_dir: str | None, as_json: bool) -> None:
    """Show where data is looked for and what is found.

    \b
    Example: vae-edge data info --dataset fashion-mnist
    """
    from vae_edge import data as d

    rows = []
    for directory in d.candidate_dirs(dataset, data_dir):
        rows.append({
            "dir": str(directory),
            "train": directory.is_dir() and d.split_present(directory, "train"),
            "test": directory.is_dir() and d.split_present(directory, "test"),
        })
    spec = d.get_spec(dataset)
    if as_json:
        click.echo(json.dumps({"dataset": dataset, "candidates": rows, "mirrors": list(spec.mirrors)}, indent=2))
        return
    click.echo(f"dataset {dataset}; looked for, in order:")
    for r in rows:
        state = "train+test" if r["train"] and r["test"] else ("partial" if r["train"] or r["test"] else "absent")
        click.echo(f"  {r['dir']}: {state}")
    click.echo(f"  then download from: {', '.join(spec.mirrors)}")


@data.command("verify")
@dataset_option
@data_dir_option
@json_option
def data_verify(dataset: str, data_dir: str | None, as_json: bool) -> None:
    """Validate a data folder by format: magic numbers, sizes, counts, labels.

    \b
    Example: vae-edge data verify --data-dir ../shared/data/mnist
    """
    from vae_edge import data as d

    directory = d.resolve_data_dir(dataset, data_dir, download=False)
    counts = d.verify_dir(directory)
    if as_json:
        click.echo(json.dumps({"dir": str(directory), "ok": True, **counts}))
    else:
        click.echo(f"{directory}: ok ({counts['train']} train, {counts['test']} test images)")


@data.command("fetch")
@dataset_option
@click.option("--dest", type=click.Path(file_okay=False), default=None, help="Where to put the files (default: the user cache).")
def data_fetch(dataset: str, dest: str | None) -> None:
    """Download a dataset from its official mirrors, checking md5 sums.

    \b
    Example: vae-edge data fetch --dataset fashion-mnist
    """
    from vae_edge import data as d

    directory = d.fetch(dataset, dest)
    click.echo(f"{dataset} ready in {directory}")


# --------------------------------------------------------------------------------------------
# train / evaluate (torch)
# --------------------------------------------------------------------------------------------

@cli.command()
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True)
@click.option("--latent-dim", type=int, default=20, show_default=True, callback=positive("latent dim"))
@click.option("--hidden", type=int, default=400, show_default=True, help="MLP hidden width.")
@click.option("--upsample", type=click.Choice(["resize-subpixel", "resize", "convtranspose"]), default="resize-subpixel",
              show_default=True, help="Conv decoder upsampling (see benchmarks/results/decoder_ops.md).")
@click.option("--conditional", is_flag=True, help="Condition encoder and decoder on the digit label.")
@click.option("--epochs", type=int, default=10, show_default=True, callback=positive("epochs"))
@click.option("--batch-size", type=int, default=128, show_default=True, callback=positive("batch size"))
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["none", "cosine"]), default="none", show_default=True)
@click.option("--beta", type=float, default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--kl-warmup", type=float, default=0.0, show_default=True, help="Epochs to ramp the KL weight from 0 to beta.")
@click.option("--binarize", type=click.Choice(["none", "dynamic"]), default="none", show_default=True)
@dataset_option
@data_dir_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue OUT/model.pt where it stopped.")
@click.option("--max-steps", type=int, default=None, callback=positive("max steps"), help="Stop after this many steps (smoke runs).")
@click.option("--threads", type=int, default=None, callback=positive("threads"), help="torch CPU threads.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: model.pt and metrics.jsonl.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(arch, latent_dim, hidden, upsample, conditional, epochs, batch_size, lr, lr_schedule, beta,
          kl_warmup, binarize, dataset, data_dir, device, seed, resume, max_steps, threads, out, quiet) -> None:
    """Train a VAE on MNIST and write OUT/model.pt every epoch.

    \b
    Example: vae-edge train --arch mlp --epochs 10 --out runs/mlp
             vae-edge train --arch conv --binarize dynamic --epochs 30 --out runs/conv
    """
    from vae_edge.model import VAEConfig
    from vae_edge.train import TrainConfig
    from vae_edge.train import train as run_train

    if threads:
        import torch
        torch.set_num_threads(threads)
    cfg = VAEConfig(arch=arch, latent_dim=latent_dim, hidden=hidden, upsample=upsample, conditional=conditional)
    tc = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, beta=beta,
                     kl_warmup=kl_warmup, binarize=binarize, dataset=dataset, seed=seed, max_steps=max_steps)
    metrics = run_train(cfg, tc, out, data_dir=data_dir, device=device, resume=resume, progress=not quiet)
    click.echo(f"checkpoint: {Path(out) / 'model.pt'}  (train loss {metrics.get('train_loss', float('nan')):.2f})")


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--iw-samples", type=int, default=5000, show_default=True, help="K for the IW estimate of -log p(x); 0 to skip.")
@click.option("--limit", type=int, default=None, callback=positive("limit"), help="Only the first N test images.")
@dataset_option
@data_dir_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, callback=positive("threads"))
@json_option
def evaluate(checkpoint, iw_samples, limit, dataset, data_dir, seed, threads, as_json) -> None:
    """Test -ELBO (nats/image) and importance-weighted -log p(x) of a checkpoint.

    \b
    Example: vae-edge evaluate runs/mlp/model.pt --iw-samples 5000 --json
    """
    from vae_edge.evaluate import evaluate as run_eval
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    if iw_samples < 0:
        raise VaeEdgeError(f"--iw-samples must be 0 or positive, got {iw_samples}")
    if threads:
        import torch
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    res = run_eval(model_from_checkpoint(ckpt), dataset=ckpt.get("dataset", dataset), data_dir=data_dir,
                   iw_samples=iw_samples, limit=limit, seed=seed)
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"test images       {res['images']}")
    click.echo(f"-ELBO (greyscale) {res['neg_elbo']:.2f} nats")
    click.echo(f"-ELBO (binarized) {res['neg_elbo_binarized']:.2f} nats")
    if res["iw_nll"] is not None:
        click.echo(f"IW-NLL (K={iw_samples}) {res['iw_nll']:.2f} nats")


# --------------------------------------------------------------------------------------------
# export / quantize (torch + onnx)
# --------------------------------------------------------------------------------------------

@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=True), help="Bundle folder to write.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17 or newer).")
@click.option("--ort-format", is_flag=True, help="Also write .ort files for onnxruntime mobile/minimal builds.")
@click.option("--force", is_flag=True, help="Replace --out even if it is not a bundle.")
@data_dir_option
def export(checkpoint, out, opset, ort_format, force, data_dir) -> None:
    """Export encoder and decoder to ONNX, validated against PyTorch, as a bundle.

    \b
    Example: vae-edge export runs/mlp/model.pt --out bundles/mlp
    """
    from vae_edge.export.onnx_export import export_bundle

    path = export_bundle(checkpoint, out, opset=opset, ort_format=ort_format, force=force,
                         data_dir=data_dir, log=lambda s: click.echo(s, err=True))
    click.echo(f"bundle: {path}")


@cli.command()
@click.argument("bundle", type=click.Path())
@click.option("--mode", type=click.Choice(["auto", "dynamic", "static", "fp16"]), default="auto", show_default=True,
              help="auto: static int8 for conv graphs, dynamic int8 for MLP graphs.")
@data_dir_option
@click.option("--calibration-size", type=int, default=512, show_default=True, help="MNIST training images to calibrate on.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--per-channel", is_flag=True, help="Per-channel weight scales.")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True)
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option("--eval-size", type=int, default=10000, show_default=True, help="Test images for the accuracy record.")
@json_option
def quantize(bundle, mode, data_dir, calibration_size, method, per_channel, activation_type, weight_type,
             eval_size, as_json) -> None:
    """Add a quantized variant (int8 dynamic/static, fp16) to a bundle, with its accuracy.

    \b
    Example: vae-edge quantize bundles/mlp --mode dynamic
             vae-edge quantize bundles/conv --mode static --per-channel
    """
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle

    if calibration_size <= 0:
        raise VaeEdgeError(f"--calibration-size must be positive, got {calibration_size}")
    qc = QuantizeConfig(mode=mode, method=method, activation_type=activation_type, weight_type=weight_type,
                        per_channel=per_channel, calibration_size=calibration_size, eval_size=eval_size)
    variant, entry = quantize_bundle(bundle, qc, data_dir=data_dir, log=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps({"variant": variant, **entry}))
        return
    a = entry["accuracy"]
    click.echo(f"{variant}: -ELBO {a['neg_elbo']:.2f} nats ({a['neg_elbo_delta']:+.3f} vs fp32), "
               f"decoder PSNR {a['decoder_psnr_db']:.1f} dB, size {entry['size_ratio_to_fp32']:.0%} of fp32"
               + ("" if entry["within_budget"] else "  [OUTSIDE the accuracy budget]"))


# --------------------------------------------------------------------------------------------
# On-device commands (numpy + onnxruntime only)
# --------------------------------------------------------------------------------------------

def runtime_options(f):
    """--bundle/--variant/--provider/--provider-option/--threads/--strict, defined once."""
    opts = [
        click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: the shipped mlp-mnist)."),
        click.option("--variant", default="fp32", show_default=True,
                     help="fp32, int8-dynamic, int8-static, fp16, or auto (the tuned choice)."),
        click.option("--provider", "providers", multiple=True,
                     help="Execution provider, by preference: cpu, cuda, tensorrt, openvino, coreml, xnnpack, qnn, dml."),
        click.option("--provider-option", "provider_options", multiple=True, metavar="KEY=VALUE",
                     help="An option of the first provider (repeatable)."),
        click.option("--threads", type=int, default=None, callback=positive("threads"), help="Intra-op threads."),
        click.option("--strict", is_flag=True, help="Fail instead of warning when onnxruntime falls back to another provider."),
        click.option("--opt-level", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
                     show_default=True, help="onnxruntime graph optimization level."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def load_runtime(kw: dict):
    from vae_edge.runtime import VAERuntime
    from vae_edge.runtime.providers import parse_provider_options

    return VAERuntime.load(
        kw.pop("bundle"), variant=kw.pop("variant"), providers=kw.pop("providers") or None,
        threads=kw.pop("threads"), provider_options=parse_provider_options(kw.pop("provider_options")),
        strict=kw.pop("strict"), opt_level=kw.pop("opt_level"), warn=lambda s: click.echo(s, err=True),
    )


def with_runtime(f):
    """Build the VAERuntime from the shared options and pass it as `rt`."""
    @runtime_options
    @functools.wraps(f)
    def wrapper(**kw):
        rt = load_runtime(kw)
        return f(rt=rt, **kw)
    return wrapper


def _labels_for(rt, labels, digit):
    if not rt.conditional:
        return None
    if digit is not None:
        return digit
    if labels is None:
        raise VaeEdgeError("this model is conditional: pass --digit, or use dataset slices (they carry labels)")
    return labels


@cli.command()
@click.option("-n", "n", type=int, default=64, show_default=True, help="How many images.")
@click.option("--digit", type=int, default=None, help="Which digit (conditional models only).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(), help="PNG grid (or .npy of images).")
@with_runtime
def sample(rt, n, digit, seed, output) -> None:
    """Generate new digits from the prior, as a grid image.

    \b
    Example: vae-edge sample -n 64 -o samples.png
             vae-edge sample -n 16 --digit 7 --bundle mlp-cond-mnist -o sevens.png
    """

    from vae_edge.runtime.images import check_output, grid, save_image, save_npy

    out = check_output(output, (".png", ".jpg", ".jpeg", ".npy"))
    images = rt.sample(n, seed=seed, digit=digit)
    if out.suffix == ".npy":
        save_npy(images, out)
    else:
        save_image(grid(images), out)
    click.echo(f"{n} samples -> {out}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path())
@click.option("--digit", type=int, default=None, help="Digit of the images (conditional models, image files).")
@data_dir_option
@with_runtime
def reconstruct(rt, inputs, output, digit, data_dir) -> None:
    """Encode and decode images: originals on the top row, reconstructions below.

    \b
    Example: vae-edge reconstruct "mnist:test[0:16]" -o recon.png
             vae-edge reconstruct my_digit.png -o recon.png
    """
    import numpy as np

    from vae_edge.runtime.images import check_output, grid, load_inputs, save_image

    out = check_output(output)
    x, labels = load_inputs(inputs, data_dir)
    rec = rt.reconstruct(x, _labels_for(rt, labels, digit))
    save_image(grid(np.concatenate([x, rec]), ncol=len(x)), out)
    click.echo(f"{len(x)} reconstructions -> {out}")


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--method", type=click.Choice(["lerp", "slerp"]), default="lerp", show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(), help=".gif (animated) or .png (a strip).")
@data_dir_option
@with_runtime
def interpolate(rt, a, b, steps, method, output, data_dir) -> None:
    """Morph one image into another through the latent space.

    \b
    Example: vae-edge interpolate "mnist:test[0:1]" "mnist:test[1:2]" --steps 10 -o morph.gif
    """
    from vae_edge.runtime.images import check_output, grid, load_inputs, save_gif, save_image

    out = check_output(output, (".gif", ".png"))
    xa, la = load_inputs([a], data_dir)
    xb, lb = load_inputs([b], data_dir)
    if len(xa) != 1 or len(xb) != 1:
        raise VaeEdgeError("A and B must each be one image (a file, or a slice like mnist:test[3:4])")
    y = None
    if rt.conditional:
        if la is None or lb is None:
            raise VaeEdgeError("this model is conditional: use dataset slices (they carry labels)")
        import numpy as np
        y = np.concatenate([la, lb])
    frames = rt.interpolate(xa[0], xb[0], steps=steps, method=method, y=y)
    if out.suffix == ".gif":
        save_gif(frames, out)
    else:
        save_image(grid(frames, ncol=steps), out)
    click.echo(f"{steps} frames -> {out}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--noise", default="gaussian:0.3", show_default=True,
              help="gaussian:SIGMA, saltpepper:FRACTION, or mask:rect|top|bottom|left|right (inpainting).")
@click.option("--samples", type=int, default=512, show_default=True, callback=positive("samples"),
              help="Importance samples per image and round.")
@click.option("--rounds", type=int, default=2, show_default=True, callback=positive("rounds"))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--digit", type=int, default=None)
@click.option("-o", "--output", required=True, type=click.Path())
@data_dir_option
@with_runtime
def denoise(rt, inputs, noise, samples, rounds, seed, digit, output, data_dir) -> None:
    """Corrupt images, then restore them: rows are clean, corrupted, restored.

    The restoration is the model's posterior mean of the clean image given the corrupted one,
    under the corruption's likelihood (importance sampling; masks: inpainting).

    \b
    Example: vae-edge denoise "mnist:test[0:8]" --noise saltpepper:0.2 -o denoised.png
             vae-edge denoise "mnist:test[0:8]" --noise mask:rect -o inpainted.png
    """
    import numpy as np

    from vae_edge.runtime.images import check_output, grid, load_inputs, save_image
    from vae_edge.runtime.vae_runtime import corrupt, parse_noise

    out = check_output(output)
    parse_noise(noise)
    x, labels = load_inputs(inputs, data_dir)
    noisy, mask = corrupt(x, noise, seed=seed)
    restored = rt.denoise(noisy, noise=None if mask is not None else noise, mask=mask, samples=samples,
                          rounds=rounds, seed=seed, y=_labels_for(rt, labels, digit))
    mse = lambda a: float(np.mean((a - x) ** 2))  # noqa: E731
    save_image(grid(np.concatenate([x, noisy, restored]), ncol=len(x)), out)
    click.echo(f"MSE to clean: corrupted {mse(noisy):.4f}, restored {mse(restored):.4f} -> {out}")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--iw-samples", type=int, default=0, show_default=True, help="0: -ELBO; K: importance-weighted -log p(x).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--digit", type=int, default=None)
@data_dir_option
@json_option
@with_runtime
def score(rt, inputs, iw_samples, seed, digit, data_dir, as_json) -> None:
    """Anomaly score of each image in nats (-ELBO or IW -log p(x)): higher is more unusual.

    \b
    Example: vae-edge score "mnist:test[0:4]" my_digit.png --json
    """
    x, labels, names = load_inputs_with_names(inputs, data_dir)
    scores = rt.score(x, _labels_for(rt, labels, digit), iw_samples=iw_samples, seed=seed)
    kind = f"iw_nll_k{iw_samples}" if iw_samples else "neg_elbo"
    if as_json:
        click.echo(json.dumps([{"input": nm, kind: round(float(s), 4)} for nm, s in zip(names, scores, strict=True)]))
        return
    for nm, s in zip(names, scores, strict=True):
        click.echo(f"{s:10.2f}  {nm}")


def load_inputs_with_names(inputs, data_dir):
    """(x, labels, one display name per image): each input is loaded once."""
    import numpy as np

    from vae_edge.runtime.images import load_inputs

    xs, ys, names = [], [], []
    for spec in inputs:
        x, y = load_inputs([spec], data_dir)
        xs.append(x)
        ys.append(y)
        names += [spec] if len(x) == 1 and y is None else [f"{spec}#{i}" for i in range(len(x))]
    labels = None if any(y is None for y in ys) else np.concatenate(ys)
    return np.concatenate(xs), labels, names


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(), help=".npy file: mu [N, latent] (and logvar with --with-logvar).")
@click.option("--with-logvar", is_flag=True, help="Save [2, N, latent]: mu and logvar.")
@click.option("--digit", type=int, default=None)
@data_dir_option
@with_runtime
def encode(rt, inputs, output, with_logvar, digit, data_dir) -> None:
    """Encode images to latent vectors (the posterior mean), saved as .npy.

    \b
    Example: vae-edge encode "mnist:test[0:100]" -o latents.npy
    """
    import numpy as np

    from vae_edge.runtime.images import check_output, load_inputs, save_npy

    out = check_output(output, (".npy",))
    x, labels = load_inputs(inputs, data_dir)
    mu, logvar = rt.encode(x, _labels_for(rt, labels, digit))
    arr = np.stack([mu, logvar]) if with_logvar else mu
    save_npy(arr, out)
    click.echo(f"{len(x)} latents of dim {mu.shape[1]} -> {out}")


@cli.command()
@click.argument("latents", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path())
@click.option("--digit", type=int, default=None)
@with_runtime
def decode(rt, latents, output, digit) -> None:
    """Decode latent vectors from a .npy file into an image grid.

    \b
    Example: vae-edge decode latents.npy -o decoded.png
    """
    import numpy as np

    from vae_edge.runtime.images import check_output, grid, save_image

    out = check_output(output)
    try:
        z = np.load(latents, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise VaeEdgeError(f"cannot read latents from {latents}: {e}") from e
    if z.ndim == 3 and z.shape[0] == 2:
        z = z[0]  # [mu, logvar] as written by `encode --with-logvar`
    images = rt.decode(z, _labels_for(rt, None, digit) if rt.conditional else None)
    save_image(grid(images), out)
    click.echo(f"{len(images)} images -> {out}")


@cli.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: the shipped mlp-mnist).")
@json_option
def info(bundle, as_json) -> None:
    """onnxruntime, providers, CPU features for int8, and the bundle's manifest summary.

    \b
    Example: vae-edge info --json
    """
    from vae_edge.runtime.sysinfo import bundle_summary, environment

    env = environment()
    summary = bundle_summary(bundle)
    if as_json:
        click.echo(json.dumps({"environment": env, "bundle": summary}, indent=2))
        return
    click.echo(f"onnxruntime {env['onnxruntime']}  numpy {env['numpy']}  python {env['python']}")
    click.echo(f"providers available: {', '.join(env['providers_available'])}")
    click.echo(f"cpu: {env['cpu']['model']} ({env['cpu']['cores']} cores, {env['cpu']['arch']})")
    flags = env["cpu"]["int8_features"]
    click.echo("int8 features: " + (", ".join(k for k, v in flags.items() if v) or "none detected"))
    click.echo(f"bundle: {summary['path']}  ({summary['name']}, {summary['arch']}, latent {summary['latent_dim']}"
               f"{', conditional' if summary['conditional'] else ''})")
    for v in summary["variants"]:
        acc = f"  -ELBO {v['neg_elbo_delta']:+.3f} nats vs fp32" if v.get("neg_elbo_delta") is not None else ""
        click.echo(f"  {v['variant']:<13} {v['size_bytes'] / 1e6:6.2f} MB{acc}")
    if summary.get("tuned"):
        click.echo(f"  tuned choice: {summary['tuned']}")


# --------------------------------------------------------------------------------------------
# bench / tune / pipeline
# --------------------------------------------------------------------------------------------

def _csv(kind: type):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(v.strip()) for v in value.split(",") if v.strip())
        except ValueError as e:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from e
        if kind is int and any(i <= 0 for i in items):
            raise click.BadParameter(f"{value!r}: values must be positive")
        return items
    return parse


@cli.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: mlp-mnist).")
@click.option("--variants", default="all", show_default=True, help="Comma-separated variants, or all.")
@click.option("--graphs", default="encoder,decoder", show_default=True, callback=_csv(str))
@click.option("--providers", default="cpu", show_default=True, callback=_csv(str))
@click.option("--batch-sizes", default="1,8,64,256,1024", show_default=True, callback=_csv(int))
@click.option("--threads", default="1", show_default=True, callback=_csv(int))
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--min-time", type=float, default=0.3, show_default=True, help="Seconds of calls per contender and setting.")
@click.option("--baseline", type=click.Choice(["torch", "none"]), default="torch", show_default=True)
@click.option("--checkpoint", type=click.Path(), default=None, help="PyTorch weights for the baseline (default: beside the bundle).")
@click.option("--report", "report_dir", type=click.Path(), default=None, help="Write bench.json, bench.md and PNG charts here.")
@json_option
def bench(bundle, variants, graphs, providers, batch_sizes, threads, warmup, min_time, baseline, checkpoint,
          report_dir, as_json) -> None:
    """Latency of every variant against bare onnxruntime and PyTorch eager.

    \b
    Example: vae-edge bench --batch-sizes 1,1024 --report bench-out
    """
    from vae_edge.bench import BenchConfig, benchmark, markdown, write_report

    if report_dir and Path(report_dir).exists() and not Path(report_dir).is_dir():
        raise VaeEdgeError(f"report directory {report_dir} is a file")
    cfg = BenchConfig(variants=() if variants == "all" else tuple(v.strip() for v in variants.split(",")),
                      graphs=graphs, providers=providers, batch_sizes=batch_sizes, threads=threads,
                      warmup=warmup, min_time=min_time, baseline_torch=baseline == "torch")
    with click.progressbar(length=1, label="benchmarking", file=sys.stderr) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)
        report = benchmark(bundle, cfg, checkpoint=checkpoint, progress=progress, warn=lambda s: click.echo(s, err=True))
    if report_dir:
        paths = write_report(report, report_dir)
        click.echo(f"report: {', '.join(str(p) for p in paths.values())}", err=True)
    click.echo(json.dumps(report) if as_json else markdown(report))


@cli.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: mlp-mnist).")
@click.option("--max-elbo-delta", type=float, default=0.5, show_default=True, help="Accuracy budget in nats of test -ELBO.")
@click.option("--batch-size", type=int, default=1, show_default=True, callback=positive("batch size"))
@click.option("--threads", default=None, callback=_csv(int), help="Thread counts to try (default: 1 and all cores).")
@click.option("--min-time", type=float, default=0.3, show_default=True)
@json_option
def tune(bundle, max_elbo_delta, batch_size, threads, min_time, as_json) -> None:
    """Pick the fastest variant x provider x threads within the accuracy budget; record it.

    \b
    Example: vae-edge tune --bundle bundles/mlp --max-elbo-delta 0.5
             vae-edge sample --bundle bundles/mlp --variant auto -o samples.png
    """
    from vae_edge.bench import tune as run_tune

    res = run_tune(bundle, max_elbo_delta=max_elbo_delta, batch_size=batch_size, threads=threads,
                   min_time=min_time, warn=lambda s: click.echo(s, err=True))
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{'variant':<14}{'provider':<10}{'threads':>8}{'p50 ms':>10}{'-ELBO delta':>13}  ok")
    for r in sorted(res["table"], key=lambda r: r["p50_ms"]):
        d = "-" if r["neg_elbo_delta"] is None else f"{r['neg_elbo_delta']:+.3f}"
        click.echo(f"{r['variant']:<14}{r['provider']:<10}{r['threads']:>8}{r['p50_ms']:>10.4f}{d:>13}  "
                   f"{'yes' if r['within_budget'] else 'no'}")
    c = res["choice"]
    click.echo(f"chosen: {c['variant']} on {c['provider']} with {c['threads']} thread(s); "
               "`--variant auto` now uses it")


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Output folder for the bundle, images and report.")
@click.option("--checkpoint", type=click.Path(), default=None, help="Default: the shipped mlp-mnist checkpoint.")
@data_dir_option
@click.option("--min-time", type=float, default=0.2, show_default=True, help="Benchmark seconds per contender.")
@click.option("--force", is_flag=True, help="Write into --out even if it holds other files.")
def pipeline(out, checkpoint, data_dir, min_time, force) -> None:
    """The main job: export, quantize, validate, demo images, benchmark, report.

    \b
    Example: vae-edge pipeline --out pipeline-out
    """
    from vae_edge.pipeline import run_pipeline

    run_pipeline(out, checkpoint=checkpoint, data_dir=data_dir, min_time=min_time, force=force,
                 log=lambda s: click.echo(s, err=True))
