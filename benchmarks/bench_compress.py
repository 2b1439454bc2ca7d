"""Lossless compression of binarized MNIST: vae-edge's bits-back coder against the classical codecs.

The whole test set, stochastically binarized once (seed 0: the fixed set every reported IW-NLL
uses), the same bits for every codec. Rows: vae-edge with each shipped binary model through its
portable network (what `compress` uses: files for every device), and through each variant's float
graphs (files for the same kind of device only; one file for the set; bits per dimension of the
whole file, header included); gzip -9,
bz2 -9 and lzma -9e on the packed bits of the whole set (their best case: one stream); PNG (1-bit,
optimized) and WebP lossless (method 6), one file per image as those formats are used; the BB-ANS
paper's figure as a reference row. Beside each model: its -ELBO (10 draws, in this run) and its
IW-NLL (K=5000, from benchmarks/results/iw_nll_*.json) in bits per dimension. Throughput: images
per second to compress and to decompress, one thread, in the same run; every vae-edge file is
decompressed and checked to be exact.

    python benchmarks/bench_compress.py --data-dir ../shared/data/mnist [--images 10000]

Writes benchmarks/results/compression.{json,md}; docs/compression.md shows the table.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vae_edge.data import binarize, load_slice
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.compress import read_header
from vae_edge.runtime.sysinfo import environment

OUT = Path(__file__).resolve().parent / "results"
MODELS = ("mlp-mnist", "conv-mnist")  # the shipped unconditional models
PAPER_BPD = 0.19  # BB-ANS (Townsend, Bird and Barber, ICLR 2019), binarized MNIST
BINARIZE_SEED = 0


def _timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t


def classical(xb: np.ndarray) -> list[dict]:
    n, dims = len(xb), xb[0].size
    packed = np.packbits(xb.astype(np.uint8)).tobytes()
    rows = []
    for name, enc, dec in (
        ("gzip -9 (whole set)", lambda b: gzip.compress(b, 9), gzip.decompress),
        ("bz2 -9 (whole set)", lambda b: bz2.compress(b, 9), bz2.decompress),
        ("lzma -9e (whole set)", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    ):
        data, tc = _timed(enc, packed)
        back, td = _timed(dec, data)
        assert back == packed
        rows.append({"codec": name, "bytes": len(data), "bpd": 8 * len(data) / (n * dims),
                     "compress_per_s": n / tc, "decompress_per_s": n / td})
    imgs = [Image.fromarray((x[0] * 255).astype(np.uint8)).convert("1") for x in xb]
    def enc(fmt, kw):
        out = []
        for im in imgs:
            buf = io.BytesIO()
            im.save(buf, format=fmt, **kw)
            out.append(buf.getvalue())
        return out

    def dec(files):
        return [np.asarray(Image.open(io.BytesIO(b)).convert("L")) > 127 for b in files]

    for name, kw, fmt in (("PNG 1-bit (per image)", {"optimize": True}, "PNG"),
                          ("WebP lossless (per image)", {"lossless": True, "quality": 100, "method": 6}, "WEBP")):
        files, tc = _timed(enc, fmt, kw)
        back, td = _timed(dec, files)
        assert all(np.array_equal(b, x[0] > 0.5) for b, x in zip(back, xb, strict=True))
        total = sum(map(len, files))
        rows.append({"codec": name, "bytes": total, "bpd": 8 * total / (n * dims),
                     "compress_per_s": n / tc, "decompress_per_s": n / td})
    return rows


def iw_nll(model: str, variant: str) -> float | None:
    suffix = "" if variant == "fp32" else f".{variant}"
    path = OUT / f"iw_nll_{model}{suffix}.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return d["iw_nll"] if d.get("images") == 10000 else None


def vae_rows(xb: np.ndarray) -> list[dict]:
    n, dims = len(xb), xb[0].size
    rows = []
    for model in MODELS:
        shipped = VAERuntime.load(model)
        has_portable = shipped.portable is not None
        runs = ([("fp32", True)] if has_portable else []) + [(v, False) for v in shipped.info.variants]
        for variant, portable in runs:
            rt = VAERuntime.load(model, variant=variant, threads=1)
            data, tc = _timed(lambda x: rt.compress(x, portable=portable), xb)  # noqa: B023
            back, td = _timed(rt.decompress, data)
            exact = bool(np.array_equal(back, xb))
            header, heads, words = read_header(data)
            overhead = {"header_bytes": len(data) - 8 * len(heads) - 4 * len(words), "lanes": len(heads),
                        "startup_virtual_bits": 32 * header["virtual"]}
            elbo = float(rt.score(xb, elbo_samples=10).mean())
            iw = iw_nll(model, variant)
            to_bpd = 1 / (dims * math.log(2))
            label = "portable network (any device)" if portable else \
                f"{variant}{' float graphs (this device only)' if has_portable else ''}"
            rows.append({"codec": f"vae-edge {model} {label}", "model": model,
                         "variant": "portable" if portable else variant,
                         "bytes": len(data), "bpd": 8 * len(data) / (n * dims), "exact": exact,
                         "neg_elbo_nats": elbo, "neg_elbo_bpd": elbo * to_bpd,
                         "iw_nll_nats": iw, "iw_nll_bpd": iw * to_bpd if iw else None,
                         "compress_per_s": n / tc, "decompress_per_s": n / td, **overhead})
            print(f"{rows[-1]['codec']}: {rows[-1]['bpd']:.4f} bpd (-ELBO {rows[-1]['neg_elbo_bpd']:.4f}), "
                  f"exact {exact}, {n / tc:.0f}/{n / td:.0f} images/s", flush=True)
    return rows


def single_image_cost(xb: np.ndarray) -> dict:
    """What one image alone costs in a file (header and start-up included): the mean of 20."""
    rt = VAERuntime.load("mlp-mnist", threads=1)
    sizes = [len(rt.compress(xb[i:i + 1])) for i in range(20)]
    return {"model": "mlp-mnist", "images": 20, "mean_bytes": float(np.mean(sizes))}


def startup_line(rows: list[dict]) -> str:
    coded = [r for r in rows if "lanes" in r]
    each = ", ".join(f"{r['model']} {r['variant']} {r['startup_virtual_bits']}" for r in coded)
    return (f"Start-up cost (virtual bits the first pops drew: never stored, never given back): {each} bits. "
            f"Header: {coded[0]['header_bytes']} bytes; lanes: {coded[0]['lanes']}.")


def table(report: dict) -> list[str]:
    md = ["| codec | bits per dim | bytes | compress (images/s) | decompress (images/s) | -ELBO (bpd) | IW-NLL (bpd) |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(report["rows"], key=lambda r: r["bpd"]):
        elbo = f"{r['neg_elbo_bpd']:.4f}" if r.get("neg_elbo_bpd") else ""
        iw = f"{r['iw_nll_bpd']:.4f}" if r.get("iw_nll_bpd") else ""
        md.append(f"| {r['codec']} | {r['bpd']:.4f} | {r['bytes']:,} | {r['compress_per_s']:,.0f} | "
                  f"{r['decompress_per_s']:,.0f} | {elbo} | {iw} |")
    md.append(f"| BB-ANS paper (Townsend et al. 2019), reference | {PAPER_BPD:.2f} | | | | | |")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=10000)
    args = ap.parse_args()
    x, _ = load_slice(f"mnist:test[0:{args.images}]", args.data_dir)
    xb = binarize(x, BINARIZE_SEED)
    rows = vae_rows(xb) + classical(xb)
    report = {"images": len(xb), "binarize_seed": BINARIZE_SEED, "rows": rows,
              "single_image": single_image_cost(xb), "machine": environment()}
    OUT.mkdir(exist_ok=True)
    (OUT / "compression.json").write_text(json.dumps(report, indent=2) + "\n")
    c = report["machine"]["cpu"]
    cpu = f"{c['model']} ({c['arch']}; {', '.join(k for k, v in c['int8_features'].items() if v)})"
    md = [f"MNIST test set, {len(xb):,} images stochastically binarized (seed {BINARIZE_SEED}), "
          f"{len(xb) * xb[0].size:,} binary pixels; one thread of {cpu}. Every vae-edge file was decompressed "
          f"and compared: {'all exact' if all(r.get('exact', True) for r in rows) else 'NOT ALL EXACT'}.", "",
          *table(report), "",
          startup_line(rows), "",
          f"One image alone in a file (mlp-mnist fp32, mean of 20): {report['single_image']['mean_bytes']:.0f} bytes "
          "(header and start-up included).",
          "", "Regenerate: `python benchmarks/bench_compress.py --data-dir ../shared/data/mnist`."]
    (OUT / "compression.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
