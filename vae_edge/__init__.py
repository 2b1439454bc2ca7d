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
