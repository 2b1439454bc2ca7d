"""vae-edge: a VAE for MNIST, from PyTorch training to ONNX on the edge."""

from __future__ import annotations

import re

__version__ = "0.1.0"


class VaeEdgeError(Exception):
    """An error a user can cause and fix: the CLI prints it as one line and exits non-zero."""


# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_MESSAGE = 2000  # characters of one printed line built from input, at most


def printable(text: object, limit: int = MAX_MESSAGE, newlines: bool = False) -> str:
    """Text from outside (a file's strings, a bundle's name) made safe for a terminal: control
    characters and escape sequences shown as \\x.. instead of acted on, and bounded to `limit`
    characters (the rest counted, not printed)."""
    text = str(text)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    pattern = _CONTROL_KEEP_NEWLINE if newlines else _CONTROL
    text = pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text + (f"... ({cut:,} more characters)" if cut > 0 else "")


# Where each package vae-edge imports comes from: import name -> (distribution on PyPI, the extra of
# vae-edge that installs it, or None for the base install). Every "not installed" hint reads it.
PACKAGES: dict[str, tuple[str, str | None]] = {
    "numpy": ("numpy", None), "onnxruntime": ("onnxruntime", None), "PIL": ("pillow", None),
    "click": ("click", None), "cryptography": ("cryptography", None), "tomli": ("tomli", None),
    "torch": ("torch", "train"), "onnx": ("onnx", "export"), "onnxscript": ("onnxscript", "export"),
    "model_signing": ("model-signing", "sign"), "OpenSSL": ("pyopenssl", "sign"),
    "playwright": ("playwright", "web"), "mkdocs": ("mkdocs", "docs"), "jsonschema": ("jsonschema", "docs"),
    "diffusers": ("diffusers", "dev"), "sklearn": ("scikit-learn", "dev"), "pytest": ("pytest", "dev"),
    "executorch": ("executorch", "peers"), "ai_edge_litert": ("ai-edge-litert", "peers"),
    "litert_torch": ("litert-torch", "peers"),
}


def install_hint(module: str) -> str:
    """What to run when `module` cannot be imported: the extra that brings it, or, for the base
    install's own packages, the package itself."""
    top = (module or "").split(".")[0]
    dist, extra = PACKAGES.get(top, (top, "?"))
    if extra is None:
        return f"pip install '{dist}' (it is part of vae-edge's base install: reinstall with pip install vae-edge)"
    if extra == "?":
        return f"pip install '{dist}'"
    return f"pip install 'vae-edge[{extra}]' (it brings {dist})"
