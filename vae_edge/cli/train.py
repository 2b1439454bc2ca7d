"""`vae-edge train` and `evaluate` (torch, imported inside the commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vae_edge import VaeEdgeError
from vae_edge.cli.base import (
    data_dir_option,
    dataset_option,
    json_option,
    positive,
    warner,
)

# --------------------------------------------------------------------------------------------
# train / evaluate (torch)
# --------------------------------------------------------------------------------------------

def _apply_recipe(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--recipe NAME[:STAGE]: that stage's options become the defaults (what the command line
    gives still wins). Eager: it runs before the options it sets are read."""
    if value is None:
        return None
    from vae_edge import recipes

    name, _, stage = value.partition(":")
    try:
        recipe = recipes.load(name)
        index = int(stage or 1) - 1
        if not 0 <= index < len(recipe.stages):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{name} has stages 1 to {len(recipe.stages)}, not {stage!r}") from None
    except VaeEdgeError as e:
        raise click.BadParameter(str(e)) from None
    options = dict(recipe.stages[index])
    if options.get("init_from") == recipes.PREVIOUS:
        options.pop("init_from")
        ctx.meta["recipe_needs_init_from"] = f"{name} stage {index + 1} fine-tunes the stage before it"
    unknown = set(options) - {p.name for p in ctx.command.params}
    if unknown:
        raise click.BadParameter(f"{name}: unknown train options {', '.join(sorted(unknown))}")
    ctx.default_map = {**(ctx.default_map or {}), **options}
    return value


@click.command()
@click.option("--recipe", default=None, is_eager=True, expose_value=False, callback=_apply_recipe,
              metavar="NAME[:STAGE]",
              help="Start from a recipe's options (vae_edge/recipes/NAME.toml; the shipped models' are mlp-mnist, "
                   "conv-mnist, conv-cond-mnist): options given here override it. STAGE: which training stage "
                   "(default 1).")
@click.option("--arch", type=click.Choice(["mlp", "conv"]), default="mlp", show_default=True, help="mlp (fully connected) or conv (convolutional).")
@click.option("--latent-dim", type=int, default=20, show_default=True, callback=positive("latent dim"), help="Size of the latent space z.")
@click.option("--hidden", type=int, default=400, show_default=True, callback=positive("hidden"), help="MLP hidden width.")
@click.option("--dec-hidden", type=int, default=0, show_default=True,
              help="MLP decoder hidden width (0: as --hidden); a narrower decoder samples faster on the device.")
@click.option("--depth", type=int, default=1, show_default=True, callback=positive("depth"), help="MLP hidden layers in encoder and decoder.")
@click.option("--activation", type=click.Choice(["relu", "tanh"]), default="relu", show_default=True, help="MLP activation.")
@click.option("--channels", default="32,64", show_default=True, help="Conv channels at 14x14 and 7x7 (C1,C2).")
@click.option("--res-blocks", type=int, default=0, show_default=True,
              help="Conv: residual blocks at 7x7 in the encoder and in the decoder.")
@click.option("--upsample", type=click.Choice(["resize-subpixel", "resize", "convtranspose"]), default="resize-subpixel",
              show_default=True, help="Conv decoder upsampling (see benchmarks/results/decoder_ops.md).")
@click.option("--conditional", is_flag=True, help="Condition encoder and decoder on the digit label.")
@click.option("--cond-planes", is_flag=True,
              help="Conditional conv: the digit also enters as one-hot planes beside the image and the decoder's "
                   "feature maps (samples follow the digit asked for more closely).")
@click.option("--epochs", type=int, default=10, show_default=True, callback=positive("epochs"), help="Passes over the training set.")
@click.option("--batch-size", type=int, default=128, show_default=True, callback=positive("batch size"), help="Images per optimizer step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate.")
@click.option("--lr-schedule", type=click.Choice(["none", "cosine"]), default="none", show_default=True, help="none, or cosine decay to 0 over the run.")
@click.option("--beta", type=float, default=1.0, show_default=True, help="Weight of the KL term.")
@click.option("--kl-warmup", type=float, default=0.0, show_default=True, help="Epochs to ramp the KL weight from 0 to beta.")
@click.option("--iw-k", type=int, default=1, show_default=True, callback=positive("iw k"),
              help="Importance samples per image: 1 trains on the ELBO, k > 1 on the tighter IWAE bound (k times the decoder work).")
@click.option("--binarize", type=click.Choice(["none", "dynamic"]), default="none", show_default=True, help="none: greyscale targets; dynamic: a fresh Bernoulli draw of each image every epoch.")
@dataset_option
@click.option("--data", "data", multiple=True, metavar="DATA",
              help="Your own images instead of --dataset: .npy/.npz arrays [N, C, H, W] (float in [0, 1] or uint8), "
                   "image files or folders (resized to --input-shape); repeatable.")
@click.option("--input-shape", default="1,28,28", show_default=True, metavar="C,H,W",
              help="Image shape: conv models need H and W divisible by 4; MLPs flatten any size.")
@click.option("--likelihood", type=click.Choice(["bernoulli", "gaussian", "logistic", "logistic-ar"]), default="bernoulli",
              show_default=True,
              help="bernoulli: binary or grey targets (MNIST); gaussian: natural images, with --sigma; logistic: "
                   "8-bit images, a discretized logistic per value (its -ELBO is bits per dimension of the 8-bit data); "
                   "logistic-ar: its mean also follows each value's already-decoded neighbours (left, above): the "
                   "stronger 8-bit model, for compression.")
@click.option("--sigma", type=float, default=None, help="Gaussian likelihood: the per-pixel standard deviation (e.g. 0.1).")
@data_dir_option
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True, help="Where to train: auto picks cuda, then mps, then cpu.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialization, shuffling and noise (runs are reproducible).")
@click.option("--resume", is_flag=True, help="Continue OUT/model.pt where it stopped.")
@click.option("--init-from", type=click.Path(), default=None,
              help="Start from this checkpoint's weights (a run folder, model.pt or a shipped model.pt) with a fresh "
                   "optimizer and schedule: fine-tuning, e.g. --iw-k 5 after an ELBO run. The architecture is the "
                   "checkpoint's (architecture options are ignored).")
@click.option("--max-steps", type=int, default=None, callback=positive("max steps"), help="Stop after this many steps (smoke runs).")
@click.option("--threads", type=int, default=None, callback=positive("threads"), help="torch CPU threads.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: model.pt and metrics.jsonl.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(arch, latent_dim, hidden, dec_hidden, depth, activation, channels, res_blocks, upsample, conditional, cond_planes, epochs, batch_size, lr, lr_schedule, beta,
          kl_warmup, iw_k, binarize, dataset, data, input_shape, likelihood, sigma, data_dir, device, seed, resume,
          init_from, max_steps, threads, out, quiet) -> None:
    """Train a VAE on MNIST (or your own images) and write OUT/model.pt every epoch.

    \b
    Example: vae-edge train --arch mlp --epochs 10 --out runs/mlp
             vae-edge train --recipe conv-mnist --out runs/conv       # the shipped conv-mnist's first stage
             vae-edge train --recipe conv-mnist:2 --init-from runs/conv --out runs/conv-iw5
             vae-edge train --arch conv --data faces.npy --input-shape 3,32,32 --likelihood gaussian \
                 --sigma 0.1 --out runs/faces                             # your own images
    """
    from vae_edge.model import VAEConfig

    needs = click.get_current_context().meta.get("recipe_needs_init_from")
    if needs and not init_from:
        raise click.UsageError(f"{needs}: pass --init-from RUN (that stage's run folder)")
    from vae_edge.train import TrainConfig
    from vae_edge.train import train as run_train

    if threads:
        import torch
        torch.set_num_threads(threads)
    try:
        chans = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise VaeEdgeError(f"--channels takes two integers such as 32,64, got {channels!r}") from None
    try:
        shape = tuple(int(c) for c in input_shape.split(","))
    except ValueError:
        raise VaeEdgeError(f"--input-shape takes C,H,W such as 3,32,32, got {input_shape!r}") from None
    if shape != (1, 28, 28) and not data:
        raise VaeEdgeError(f"--input-shape {input_shape}: the named datasets hold 1x28x28 images; give --data")
    cfg = VAEConfig(arch=arch, latent_dim=latent_dim, hidden=hidden, dec_hidden=dec_hidden, depth=depth, activation=activation,
                    channels=chans, res_blocks=res_blocks, upsample=upsample, conditional=conditional,
                    cond_planes=cond_planes, likelihood=likelihood, sigma=sigma, image_shape=shape)
    tc = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, beta=beta,
                     kl_warmup=kl_warmup, iw_k=iw_k, binarize=binarize, dataset=dataset, seed=seed, max_steps=max_steps,
                     data=data)
    metrics = run_train(cfg, tc, out, data_dir=data_dir, device=device, resume=resume, init_from=init_from, progress=not quiet)
    click.echo(f"checkpoint: {Path(out) / 'model.pt'}  (train loss {metrics.get('train_loss', float('nan')):.2f})")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--sample-quality", is_flag=True,
              help="Instead: CHECKPOINT is a bundle (folder or shipped name); report each variant's Frechet "
                   "distance to the test set in the evaluation classifier's features (and, for conditional "
                   "models, how often samples of digit d are classified as d).")
@click.option("--variant", "variants", multiple=True, default=("all",), show_default=True,
              help="With --sample-quality: the variants to evaluate.")
@click.option("--samples", type=int, default=10000, show_default=True, help="With --sample-quality: samples per variant.")
@click.option("--iw-samples", type=int, default=5000, show_default=True, help="K for the IW estimate of -log p(x); 0 to skip.")
@click.option("--limit", type=int, default=None, callback=positive("limit"), help="Only the first N test images.")
@dataset_option
@data_dir_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialization, shuffling and noise (runs are reproducible).")
@click.option("--threads", type=int, default=None, callback=positive("threads"), help="torch CPU threads.")
@json_option
def evaluate(checkpoint, sample_quality, variants, samples, iw_samples, limit, dataset, data_dir, seed, threads,
             as_json) -> None:
    """Test -ELBO (nats/image) and importance-weighted -log p(x) of a checkpoint; or, with
    --sample-quality, the sample quality of a bundle's variants.

    The IW estimate dominates the time (K=5000 on all 10,000 test images: about 13 minutes for
    mlp-mnist on 2 cores of an Intel Xeon); the time it will take is shown on stderr as it runs.

    \b
    Example: vae-edge evaluate runs/mlp/model.pt --iw-samples 5000 --json
             vae-edge evaluate runs/mlp/model.pt --iw-samples 500 --limit 1000   # a quick look
             vae-edge evaluate conv-mnist --sample-quality
    """
    if sample_quality:
        _sample_quality(checkpoint, variants, samples, seed, data_dir, threads, as_json)
        return
    from vae_edge.evaluate import evaluate as run_eval
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    if iw_samples < 0:
        raise VaeEdgeError(f"--iw-samples must be 0 or positive, got {iw_samples}")
    if threads:
        import torch
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    progress = _EvalProgress(iw_samples) if iw_samples > 0 else None
    try:
        res = run_eval(model_from_checkpoint(ckpt), dataset=ckpt.get("dataset", dataset), data_dir=data_dir,
                       iw_samples=iw_samples, limit=limit, seed=seed, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"test images       {res['images']}")
    click.echo(f"-ELBO (greyscale) {res['neg_elbo']:.2f} nats")
    click.echo(f"-ELBO (binarized) {res['neg_elbo_binarized']:.2f} nats")
    if res["iw_nll"] is not None:
        click.echo(f"IW-NLL (K={iw_samples}) {res['iw_nll']:.2f} nats")




def _sample_quality(bundle, variants, samples, seed, data_dir, threads, as_json) -> None:
    from vae_edge.sample_quality import sample_quality

    res = sample_quality(bundle, tuple(variants), samples=samples, seed=seed, data_dir=data_dir, threads=threads,
                         warn=warner())
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"evaluation classifier: test accuracy {res['test_accuracy_here']:.4f}; "
               f"Frechet distance train vs test (the floor): {res['floor_train_vs_test']:.2f}")
    for r in res["rows"]:
        cond = f"  conditional accuracy {r['conditional_accuracy']:.4f}" if "conditional_accuracy" in r else ""
        click.echo(f"{r['variant']:<20} Frechet distance {r['frechet']:8.2f}{cond}")


class _EvalProgress:
    """The estimated total time, then a bar on a terminal (stderr). The first batch is warm-up
    (torch's lazy initialization, the allocator growing): the rate is measured on the batches
    after it, else the estimate was up to 4x too high."""

    def __init__(self, k: int, clock=None):
        import time

        self.clock = clock or time.perf_counter
        self.k, self.t0, self.bar, self.said, self.first = k, self.clock(), None, False, None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done)
        elif not self.said:
            t1, done1 = self.first
            left = (now - t1) / (done - done1) * (total - done)
            click.echo(f"IW estimate with K={self.k} on {total} images: about {_duration(now - self.t0 + left)} "
                       "in all", err=True)
            self.said = True
            if sys.stderr.isatty():
                self.bar = click.progressbar(length=total, label="IW-NLL", file=sys.stderr, show_eta=True)
                self.bar.__enter__()
        if self.bar is not None:
            self.bar.update(done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"
