"""`vae-edge data`: find, verify and download MNIST-format data."""

from __future__ import annotations

import json

import click

from vae_edge.cli.base import (
    data_dir_option,
    dataset_option,
    json_option,
)

# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@click.group()
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


