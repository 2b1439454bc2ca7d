"""Every on-device stage for a bundle of any shape, through the CLI: what tests/test_own_data.py
and tests/test_byo.py run on each of their VAEs (a colour conv VAE, an MLP on 8x8 digits, the conv
model on Fashion-MNIST, diffusers' AutoencoderKL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from vae_edge.cli import cli


def ok(*args: str):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def every_command(bundle: Path, data: Path, tmp: Path, variant: str = "fp32") -> dict:
    """sample, reconstruct, interpolate, encode, decode, score, info and verify on `data` (a .npy
    of [N, C, H, W] images, N >= 2); returns what they wrote, checked for shape and finiteness."""
    from vae_edge.runtime import VAERuntime

    b = ["--bundle", str(bundle), "--variant", variant]
    rt = VAERuntime.load(bundle, variant=variant, warn=lambda s: None)
    shape, latent = rt.image_shape, rt.latent_shape
    x = np.load(data)
    ok("sample", *b, "-n", "6", "--seed", "0", "-o", tmp / "s.npy")
    ok("sample", *b, "-n", "6", "-o", tmp / "s.png")
    ok("reconstruct", data, *b, "-o", tmp / "r.npy")
    np.save(tmp / "a.npy", x[:1])
    np.save(tmp / "b.npy", x[1:2])
    ok("interpolate", tmp / "a.npy", tmp / "b.npy", *b, "--steps", "4", "-o", tmp / "m.gif")
    ok("encode", data, *b, "-o", tmp / "z.npy")
    ok("decode", tmp / "z.npy", *b, "-o", tmp / "d.npy")
    rows = json.loads(ok("score", data, *b, "--json").output)
    info = ok("info", *b).output
    ok("verify", str(bundle))
    out = {"samples": np.load(tmp / "s.npy"), "recon": np.load(tmp / "r.npy"), "z": np.load(tmp / "z.npy"),
           "decoded": np.load(tmp / "d.npy"), "scores": np.array([r["neg_elbo"] for r in rows])}
    assert out["samples"].shape == (6, *shape) and out["recon"].shape == x.shape
    assert out["z"].shape == (len(x), *latent) and out["decoded"].shape == x.shape
    assert all(np.all(np.isfinite(v)) for v in out.values())
    assert np.allclose(out["decoded"], out["recon"], atol=1e-5)  # decode(encode(x)) is reconstruct(x)
    assert np.allclose(out["samples"], rt.sample(6, seed=0), atol=1e-6)
    assert (tmp / "m.gif").stat().st_size > 0 and rt.info.name in info
    return out


def page_and_bench(bundle: Path, tmp: Path, x: np.ndarray) -> None:
    """The page in Chromium (an uploaded image scored as Python scores it) and the benchmark."""
    from vae_edge.runtime import VAERuntime
    from vae_edge.web import SCORE_SAMPLES, build_site, serving
    from vae_edge.web.browser import open_page

    build_site(bundle, ("all",), tmp / "site", log=lambda s: None, with_score_range=False)
    rt = VAERuntime.load(bundle, warn=lambda s: None)
    with serving(tmp / "site") as url, open_page(url) as (page, errors):
        up = page.evaluate("(x) => window.vaeEdge.upload(x)", x[0].reshape(-1).tolist())
        assert abs(up["score"] - float(rt.score(x[:1], seed=0, elbo_samples=SCORE_SAMPLES)[0])) < 0.05
        assert np.max(np.abs(np.array(up["reconstruction"]) - rt.reconstruct(x[:1]).reshape(-1))) < 1e-3
        assert errors == []
    report = json.loads(ok("bench", "--bundle", bundle, "--batch-sizes", "2", "--min-time", "0.02", "--warmup", "1",
                           "--baseline", "none", "--json").output.strip().splitlines()[-1])
    assert {r["variant"] for r in report["rows"]} >= set(rt.info.variants)
