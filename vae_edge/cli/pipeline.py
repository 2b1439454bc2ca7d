"""`vae-edge pipeline`: the main job on the shipped model (torch for the export)."""

from __future__ import annotations

import click

from vae_edge.cli.base import data_dir_option, progress_log


@click.command()
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
                 log=progress_log())
