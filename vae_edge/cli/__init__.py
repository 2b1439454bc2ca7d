"""The `vae-edge` command line, one module per command group. It parses options and calls library
functions; torch and onnx are imported inside the commands that need them, so `--help` and the
on-device commands start fast and run on the base install."""

from __future__ import annotations

from vae_edge.cli import bench, compress, data, device, export, pipeline, train, trust, web
from vae_edge.cli.base import cli, main

for command in (
    data.data, train.train, train.evaluate, export.export, export.quantize,
    device.sample, device.reconstruct, device.interpolate, device.denoise, device.score,
    device.encode, device.decode, compress.compress, compress.decompress, device.info, trust.keygen, trust.sign, trust.verify,
    bench.bench, bench.tune, pipeline.pipeline, web.web,
):
    cli.add_command(command)

__all__ = ["cli", "main"]
