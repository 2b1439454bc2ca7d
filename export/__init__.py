"""ONNX export, validation and quantization. Export needs the `export` extra (torch, onnx);
quantization needs onnx only, so nothing here is imported before it is used."""

from __future__ import annotations

__all__ = ["GraphSpec", "export_bundle", "export_vae", "graph_specs", "validate_graph"]


def __getattr__(name: str):
    if name == "export_vae":  # bring your own VAE (export/byo.py)
        from vae_edge.export import byo

        return byo.export_vae
    if name in __all__:
        from vae_edge.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'vae_edge.export' has no attribute {name!r}")
