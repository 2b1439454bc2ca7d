"""vae-edge: a VAE for MNIST, from PyTorch training to ONNX on the edge."""

from __future__ import annotations

__version__ = "0.1.0"


class VaeEdgeError(Exception):
    """An error a user can cause and fix: the CLI prints it as one line and exits non-zero."""
