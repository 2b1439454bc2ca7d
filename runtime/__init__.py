"""The on-device runtime: numpy, onnxruntime and pillow only, never torch."""

from __future__ import annotations
