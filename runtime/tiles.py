"""Tiled decoding and encoding (numpy only): latents or images larger than the graph's size, in
overlapping tiles of the graph's own size, run one tile at a time and blended where they overlap.

Split, run, blend: along each axis the tiles start every `tile - overlap` cells and the last one
ends at the edge; each tile's output is weighted by linear ramps over the parts it shares with its
neighbours (1 elsewhere, so the edges of the whole image are untouched) and the weighted sum is
divided by the summed weights. Two neighbours cross-fade linearly, as diffusers' `tiled_decode`
blends them (`blend_v`/`blend_h`); unlike diffusers, every tile is decoded whole and the sum is
normalised, so any layout of tiles is a convex combination. Memory: one tile's activations plus
the output and its weights.

Positions are in "cells" of the latent grid: a decoder tile spans `tile` latent cells and gives
`tile * factor` pixels; an encoder tile spans `tile * factor` pixels and gives `tile` cells.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vae_edge import VaeEdgeError

OVERLAP = 0.25  # of a tile, as diffusers' tile_overlap_factor


def starts(n: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles begin along an axis of n cells (the last one ends at n)."""
    if n < tile:
        raise VaeEdgeError(f"{n} cells is less than one tile of {tile}")
    stride = max(1, tile - overlap)
    return sorted(set(range(0, n - tile, stride)) | {n - tile})


def ramp(length: int, lo: int, hi: int) -> np.ndarray:
    """Weights along one axis of a tile of `length` outputs: linear over the first `lo` (shared
    with the tile before) and the last `hi` (shared with the tile after), 1 in between."""
    w = np.ones(length, np.float32)
    if lo > 0:
        w[:lo] = (np.arange(lo, dtype=np.float32) + 1) / (lo + 1)
    if hi > 0:
        w[length - hi:] = np.minimum(w[length - hi:], (np.arange(hi, 0, -1, dtype=np.float32)) / (hi + 1))
    return w


def _axis(n: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, cells shared with the tile before, with the tile after) of each tile along an axis."""
    s = starts(n, tile, overlap)
    return [(a, (s[k - 1] + tile - a) if k else 0, (a + tile - s[k + 1]) if k + 1 < len(s) else 0)
            for k, a in enumerate(s)]


def tiled(run: Callable[[np.ndarray], tuple[np.ndarray, ...]], x: np.ndarray, tile: tuple[int, int],
          in_per_cell: int, out_per_cell: int, overlap: float = OVERLAP) -> tuple[np.ndarray, ...]:
    """run() over overlapping tiles of x [N, C, H, W] (H, W in cells x in_per_cell), blended:
    each of run()'s outputs [N, C', th x out_per_cell, tw x out_per_cell] assembled to
    [N, C', H / in_per_cell x out_per_cell, ...]."""
    n, _, height, width = x.shape
    cells = (height // in_per_cell, width // in_per_cell)
    if cells[0] * in_per_cell != height or cells[1] * in_per_cell != width:
        raise VaeEdgeError(f"a size of {height}x{width} is not a multiple of {in_per_cell}")
    ov = [max(1, int(round(t * overlap))) if c > t else 0 for c, t in zip(cells, tile, strict=True)]
    rows, cols = _axis(cells[0], tile[0], ov[0]), _axis(cells[1], tile[1], ov[1])
    k = out_per_cell
    acc: list[np.ndarray] | None = None
    weight = np.zeros((cells[0] * k, cells[1] * k), np.float32)
    for top, up, down in rows:
        wy = ramp(tile[0] * k, up * k, down * k)
        for left, before, after in cols:
            wx = ramp(tile[1] * k, before * k, after * k)
            piece = x[:, :, top * in_per_cell:(top + tile[0]) * in_per_cell,
                      left * in_per_cell:(left + tile[1]) * in_per_cell]
            outs = run(np.ascontiguousarray(piece))
            if acc is None:
                acc = [np.zeros((n, o.shape[1], cells[0] * k, cells[1] * k), np.float32) for o in outs]
            w = wy[:, None] * wx[None, :]
            sl = (slice(None), slice(None), slice(top * k, (top + tile[0]) * k), slice(left * k, (left + tile[1]) * k))
            for a, o in zip(acc, outs, strict=True):
                a[sl] += o * w
            weight[sl[2:]] += w
    return tuple(a / weight for a in acc)
