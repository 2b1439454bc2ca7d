"""Lossless compression of 8-bit images: vae-edge's bits-back coder against the classical codecs.

The 8-bit test sets as they are (MNIST, Fashion-MNIST: 10,000 images of 28x28 each), the same
bytes for every codec. Rows: vae-edge with each bundle given (one file for the whole set, header
included, every variant asked for; decompressed and checked exact); gzip -9, bz2 -9, lzma -9e and
zstd -22 on the raw bytes of the whole set (their best case: one stream); PNG (optimized), WebP
lossless (method 6) and JPEG XL lossless (effort 9, imagecodecs' libjxl, when installed) one file
per image, as those formats are used; Bit-Swap's and BB-ANS's published figures as reference
rows. Beside each model: its -ELBO in bits per dimension (10 draws, this run). Throughput: images
per second to compress and decompress, one thread, in the same run. The cost of a lone image:
the first 100 test images each compressed alone by `compress` (the smallest of the VAE's file,
PNG and WebP lossless), against their PNG.

    python benchmarks/bench_compress8.py --bundle mnist=PATH [--bundle fashion-mnist=PATH] \
        [--data-dir ../shared/data/mnist] [--fashion-dir /usr/share/datasets/fashion-mnist] [--images 10000]

zstd and JPEG XL rows need `pip install zstandard imagecodecs`. Writes
benchmarks/results/compression8.{json,md}; docs/compression.md shows the table
(benchmarks/update_readme.py).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vae_edge.runtime import VAERuntime
from vae_edge.runtime.sysinfo import environment

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"mnist": [("Bit-Swap (Kingma et al. 2019; 8 latent layers), published", 1.29),
                       ("BB-ANS, one-layer VAE (as reported by Bit-Swap), published", 1.48)]}


def _timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t


def streams(v: np.ndarray) -> list[dict]:
    raw = v.tobytes()
    codecs = [("gzip -9 (whole set)", lambda b: gzip.compress(b, 9), gzip.decompress),
              ("bz2 -9 (whole set)", lambda b: bz2.compress(b, 9), bz2.decompress),
              ("lzma -9e (whole set)", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress)]
    try:
        import zstandard

        codecs.append(("zstd -22 (whole set)", lambda b: zstandard.ZstdCompressor(level=22).compress(b),
                       lambda b: zstandard.ZstdDecompressor().decompress(b)))
    except ImportError:
        pass
    rows = []
    for name, enc, dec in codecs:
        data, tc = _timed(enc, raw)
        back, td = _timed(dec, data)
        assert back == raw
        rows.append({"codec": name, "bytes": len(data), "bpd": 8 * len(data) / v.size,
                     "compress_per_s": len(v) / tc, "decompress_per_s": len(v) / td})
    return rows


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _webp(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
    return buf.getvalue()


def per_image(v: np.ndarray) -> list[dict]:
    codecs = [("PNG (per image)", _png, lambda b: np.asarray(Image.open(io.BytesIO(b)))),
              ("WebP lossless (per image)", _webp, lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("L")))]
    try:
        import imagecodecs

        if imagecodecs.JPEGXL.available:
            codecs.append(("JPEG XL lossless, effort 9 (per image)",
                           lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=9), imagecodecs.jpegxl_decode))
    except ImportError:
        pass
    rows = []
    for name, enc, dec in codecs:
        files, tc = _timed(lambda e=enc: [e(img[0]) for img in v])
        back, td = _timed(lambda f=files, d=dec: [d(b) for b in f])
        assert all(np.array_equal(b, img[0]) for b, img in zip(back, v, strict=True)), name
        size = sum(len(f) for f in files)
        rows.append({"codec": name, "bytes": size, "bpd": 8 * size / v.size,
                     "compress_per_s": len(v) / tc, "decompress_per_s": len(v) / td})
    return rows


def vae_rows(v: np.ndarray, name: str, bundle: str, variants: list[str], iw: tuple[int, int] = (0, 0)) -> list[dict]:
    from vae_edge.runtime import compress as C

    x = (v / 255.0).astype(np.float32)
    rows = []
    for variant in variants:
        rt = VAERuntime.load(bundle, variant=variant, threads=1, warn=lambda s: None)
        data, tc = _timed(C.compress, rt, x)
        back, td = _timed(C.decompress, rt, data)
        assert np.array_equal(np.rint(back * 255).astype(np.uint8), v), (name, variant)
        nelbo = float(np.mean(rt.bits_per_dim_8bit(rt.score(x, elbo_samples=10))))
        k, n_iw = iw
        iw_bpd = (float(np.mean(rt.bits_per_dim_8bit(rt.score(x[:n_iw], iw_samples=k)))) if k else None)
        coder = "portable network" if rt.portable is not None else f"{variant} graphs"
        rows.append({"codec": f"vae-edge {rt.info.name or name} ({coder})", "bytes": len(data), "bpd": 8 * len(data) / v.size,
                     "compress_per_s": len(v) / tc, "decompress_per_s": len(v) / td, "neg_elbo_bpd": nelbo,
                     "exact": True, **({"iw_nll_bpd": iw_bpd, "iw_samples": k, "iw_images": min(n_iw, len(x))} if k else {})})
        rt.close()
    return rows


def lone_images(v: np.ndarray, bundle: str, n: int = 100) -> dict:
    from vae_edge.runtime import compress as C

    rt = VAERuntime.load(bundle, threads=1, warn=lambda s: None)
    chosen, sizes, vae_sizes, pngs = {}, [], [], []
    for img in v[:n]:
        x = (img[None] / 255.0).astype(np.float32)
        data, report = C.compress_best(rt, x, layout=2)
        chosen[report["chosen"]] = chosen.get(report["chosen"], 0) + 1
        sizes.append(len(data))
        vae_sizes.append(report["bits_per_value"]["vae-edge"] * img.size / 8)
        pngs.append(len(_png(img[0])))
    sizes, pngs = np.array(sizes), np.array(pngs)
    return {"images": n, "mean_bytes": float(sizes.mean()), "mean_vae_bytes": float(np.mean(vae_sizes)),
            "mean_png_bytes": float(pngs.mean()), "worst_ratio_to_png": float(np.max(sizes / pngs)),
            "chosen": chosen}


def load(dataset: str, data_dir: str | None, n: int) -> np.ndarray:
    from vae_edge.data import load_split

    x, _ = load_split(data_dir, "test")
    return np.ascontiguousarray(x[:n, None]).astype(np.uint8)


def render(report: dict) -> str:
    env = report["environment"]
    cpu = env.get("cpu", {})
    md = [f"Measured by `{report['command']}` on {cpu.get('model', '?')} ({cpu.get('arch', '?')}), one thread. Every vae-edge file was "
          "decompressed and compared: all exact.", ""]
    for ds, r in report["datasets"].items():
        md += [f"**{ds}** test set, {r['images']:,} images of 28x28, 8-bit ({r['images'] * 784:,} values):", "",
               "| codec | bits per dim | bytes | compress (images/s) | decompress (images/s) | -ELBO (bpd) | IW-NLL (bpd) |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for row in sorted(r["rows"], key=lambda row: row["bpd"]):
            elbo = f"{row['neg_elbo_bpd']:.4f}" if "neg_elbo_bpd" in row else ""
            iw = (f"{row['iw_nll_bpd']:.4f} (K={row['iw_samples']:,}, first {row['iw_images']:,} images)"
                  if row.get("iw_nll_bpd") else "")
            md.append(f"| {row['codec']} | {row['bpd']:.4f} | {row['bytes']:,} | {row['compress_per_s']:,.0f} | "
                      f"{row['decompress_per_s']:,.0f} | {elbo} | {iw} |")
        for name, bpd in REFERENCE.get(ds, []):
            md.append(f"| {name} | {bpd:.2f} | | | | | |")
        lone = r.get("lone")
        if lone:
            md += ["", f"A lone image (the first {lone['images']} test images, each compressed alone by `compress`): "
                   f"{lone['mean_bytes']:.0f} bytes on average, against {lone['mean_png_bytes']:.0f} for its PNG and "
                   f"{lone['mean_vae_bytes']:.0f} for the VAE's own file; at most {lone['worst_ratio_to_png']:.2f}x its "
                   f"PNG; chosen: {', '.join(f'{k} {v}' for k, v in lone['chosen'].items())}.", ""]
    return "\n".join(md).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", default=[], metavar="DATASET=PATH")
    ap.add_argument("--variants", default="fp32")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--iw-samples", type=int, default=1000, help="IW-NLL's K (0: no IW-NLL column).")
    ap.add_argument("--iw-images", type=int, default=1000, help="IW-NLL on the first this many test images.")
    args = ap.parse_args()
    bundles = dict(b.split("=", 1) for b in args.bundle)
    report = {"command": "python benchmarks/bench_compress8.py " + " ".join(
        a if "=" not in a or "/" not in a else a.split("=")[0] + "=BUNDLE" for a in __import__("sys").argv[1:]),
        "environment": environment(), "datasets": {}}
    dirs = {"mnist": args.data_dir, "fashion-mnist": args.fashion_dir}
    for ds in ("mnist", "fashion-mnist"):
        if ds not in bundles and ds != "mnist":
            continue
        v = load(ds, dirs[ds], args.images)
        rows = streams(v) + per_image(v)
        entry = {"images": len(v), "rows": rows}
        if ds in bundles:
            rows += vae_rows(v, ds, bundles[ds], args.variants.split(","), (args.iw_samples, args.iw_images))
            entry["lone"] = lone_images(v, bundles[ds])
        report["datasets"][ds] = entry
        print(render({**report, "datasets": {ds: entry}}), flush=True)
    (OUT / "compression8.json").write_text(json.dumps(report, indent=1) + "\n")
    (OUT / "compression8.md").write_text(render(report))


if __name__ == "__main__":
    main()
