"""Tiled decoding and encoding (runtime/tiles.py): latents and images larger than the graphs'
own size, in overlapping tiles blended with linear ramps."""

from __future__ import annotations

import numpy as np
import pytest

from vae_edge import VaeEdgeError
from vae_edge.runtime.tiles import ramp, starts, tiled


def _upsample(t: np.ndarray) -> tuple[np.ndarray]:
    return (np.repeat(np.repeat(t, 2, axis=2), 2, axis=3),)


@pytest.mark.parametrize("size", [(8, 8), (9, 8), (13, 21), (30, 17)])
def test_tiles_cover_everything_and_blend_to_the_untiled_result(size):
    """With a local, translation-equivariant tile function the blend of the tiles equals the
    function on the whole input (every cell covered, weights summing to one, the last tile
    ending at the edge), whatever the size."""
    z = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    (got,) = tiled(_upsample, z, (8, 8), 1, 2)
    assert got.shape == (2, 3, 2 * size[0], 2 * size[1])
    assert np.max(np.abs(got - _upsample(z)[0])) < 1e-5
    (down,) = tiled(lambda t: (t[:, :, ::2, ::2],), got, (8, 8), 2, 1)  # the encoder's direction
    assert np.max(np.abs(down - z)) < 1e-5


def test_ramps_cross_fade_and_leave_the_edges_alone():
    assert starts(30, 8, 2) == [0, 6, 12, 18, 22]
    lo, hi = ramp(8, 0, 3), ramp(8, 3, 0)
    assert lo[0] == 1 and hi[-1] == 1  # the image's own edges keep weight 1
    assert np.allclose(lo[-3:] + hi[:3], 1)  # two neighbours cross-fade linearly
    with pytest.raises(VaeEdgeError, match="less than one tile"):
        starts(7, 8, 2)


@pytest.mark.slow
def test_a_diffusers_bundle_decodes_and_encodes_larger_sizes_in_tiles(tmp_path):
    """A bundle of fixed-size graphs (--fixed-size) exported at 32x32 decodes 96x96 (latents 48x48)
    and encodes it back in tiles of its size;
    against the untiled torch module: the bound stated in docs/diffusers.md (random weights,
    GroupNorm statistics taken per tile)."""
    import torch
    from click.testing import CliRunner
    from test_diffusers import _save_kl

    from vae_edge.cli import cli
    from vae_edge.runtime import VAERuntime

    vae = _save_kl(tmp_path / "vae", "sd")
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "vae"), "--input-shape", "3,32,32",
                                 "--fixed-size", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    z = np.random.default_rng(0).standard_normal((1, 4, 48, 48)).astype(np.float32)
    with torch.no_grad():
        full = ((vae.decode(torch.from_numpy(z) / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1).numpy()
    big = rt.decode(z)
    assert big.shape == (1, 3, 96, 96) and np.all((big >= 0) & (big <= 1))
    assert np.mean(np.abs(big - full)) < 0.03 and np.max(np.abs(big - full)) < 0.3
    np.save(tmp_path / "z.npy", z)
    r = CliRunner().invoke(cli, ["decode", str(tmp_path / "z.npy"), "--bundle", str(tmp_path / "b"), "-o",
                                 str(tmp_path / "big.png")])
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(tmp_path / "big.png").size[0] > 96  # the grid of one 96x96 image
    mu, logvar = rt.encode(big)
    assert mu.shape == logvar.shape == (1, 4, 48, 48)
    for bad, says in (((1, 4, 8, 8), "latents must have shape"), ((1, 5, 48, 48), "latents must have shape")):
        with pytest.raises(VaeEdgeError, match=says):
            rt.decode(np.zeros(bad, np.float32))
    with pytest.raises(VaeEdgeError, match="multiples of 2"):
        rt.encode(np.zeros((1, 3, 97, 96), np.float32))
