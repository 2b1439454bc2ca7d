"""The on-device runtime: numpy, onnxruntime and pillow only, never torch."""

from __future__ import annotations

from vae_edge.runtime.bundle import load_manifest, verify_files
from vae_edge.runtime.providers import available as available_providers
from vae_edge.runtime.vae_runtime import VAERuntime, corrupt, default_bundle, shipped_bundles

__all__ = [
    "VAERuntime", "available_providers", "corrupt", "default_bundle", "load_manifest",
    "shipped_bundles", "verify_files",
]
