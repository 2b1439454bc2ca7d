"""ONNX export, validation and quantization (needs the `export` extra: torch, onnx)."""

from __future__ import annotations

from vae_edge.export.onnx_export import GraphSpec, export_bundle, graph_specs, validate_graph

__all__ = ["GraphSpec", "export_bundle", "graph_specs", "validate_graph"]
