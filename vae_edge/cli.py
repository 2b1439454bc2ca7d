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
@click.option("--upsample", type=click.Choice(["resize", "convtranspose"]), default="resize", show_default=True,
              help="Conv decoder upsampling (resize + conv quantizes well).")
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
