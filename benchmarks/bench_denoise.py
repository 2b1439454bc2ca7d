"""Denoising against the classical filters a user would try first, on the first MNIST test digits:
salt-and-pepper 0.2 and Gaussian 0.3 (clipped to [0, 1]), the same corrupted images for every row.

Rows: the corrupted input; 3x3 median; total variation, non-local means and BM3D, each with the
parameter that does best on 32 training digits (never the test digits); and `vae-edge denoise`
with each shipped model (the SMC posterior mean of the clean image, fp32 graphs). MSE and PSNR to
the clean digits. Also a picture: clean, noisy, the best classical filter, the default model.

    pip install scikit-image bm3d     # the TV, NLM and BM3D baselines
    python benchmarks/bench_denoise.py --data-dir ../shared/data/mnist [--images 1000] [--model-images 100]

Writes benchmarks/results/denoise.{json,md} and denoise.png. The default model (mlp-mnist) is run on
all --images digits; the conv models, whose decoders cost 5x more per particle, on the first
--model-images of them (their rows say how many).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoise_baselines import GRIDS, tuned  # noqa: E402

from vae_edge.data import load_slice  # noqa: E402
from vae_edge.runtime import VAERuntime, corrupt  # noqa: E402
from vae_edge.runtime.images import labelled_rows, save_image  # noqa: E402
from vae_edge.runtime.mathops import psnr  # noqa: E402
from vae_edge.runtime.sysinfo import environment  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
NOISES = ("saltpepper:0.2", "gaussian:0.3")
MODELS = ("mlp-mnist", "conv-mnist", "conv-cond-mnist")
DEFAULT = "mlp-mnist"


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--model-images", type=int, default=100, help="Test digits for the conv models.")
    ap.add_argument("--samples", type=int, default=512, help="Particles (the CLI's default).")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    x, y = load_slice(f"mnist:test[0:{args.images}]", args.data_dir)
    xt, _ = load_slice("mnist:train[59968:60000]", args.data_dir)  # held out for choosing parameters
    rows, pictures = [], {}
    for spec in NOISES:
        noisy, _ = corrupt(x, spec, seed=0)
        noisy_t, _ = corrupt(xt, spec, seed=1)
        rows.append({"noise": spec, "method": "corrupted input", "images": len(x), "mse": mse(noisy, x),
                     "psnr_db": psnr(noisy, x)})
        best, classical = None, {}
        for name in GRIDS:
            param, fn = tuned(name, noisy_t, xt)
            t0 = time.perf_counter()
            out = classical[name] = fn(noisy)
            rows.append({"noise": spec, "method": name, "parameter": param, "images": len(x), "mse": mse(out, x),
                         "psnr_db": psnr(out, x), "seconds_per_image": (time.perf_counter() - t0) / len(x)})
            print(json.dumps(rows[-1]), flush=True)
            if best is None or rows[-1]["mse"] < best[0]:
                best = (rows[-1]["mse"], name, out)
        for model in MODELS:
            n = len(x) if model == DEFAULT else min(len(x), args.model_images)
            rt = VAERuntime.load(model, threads=args.threads)
            t0 = time.perf_counter()
            info: dict = {}
            out = rt.denoise(noisy[:n], noise=spec, samples=args.samples, seed=0, info=info,
                             y=y[:n] if rt.conditional else None)
            rows.append({"noise": spec, "method": f"vae-edge denoise, {model}", "images": n, "mse": mse(out, x[:n]),
                         "psnr_db": psnr(out, x[:n]), "seconds_per_image": (time.perf_counter() - t0) / n,
                         "ess_median": float(np.median(info["ess"])), "particles": args.samples,
                         "classical_on_same_images": {k: mse(v[:n], x[:n]) for k, v in classical.items()}})
            print(json.dumps(rows[-1]), flush=True)
            if model == DEFAULT:
                pictures[spec] = [("clean", x[:8]), (spec, noisy[:8]), (best[1], best[2][:8]), (model, out[:8])]
    env = environment()
    report = {"rows": rows, "machine": env["cpu"]["model"], "threads": args.threads, "samples": args.samples,
              "python": platform.python_version(), "onnxruntime": env["onnxruntime"]}
    OUT.mkdir(exist_ok=True)
    (OUT / "denoise.json").write_text(json.dumps(report, indent=2) + "\n")
    write_md(report, args)
    for spec, pic in pictures.items():
        pictures[spec] = labelled_rows(pic)
    from PIL import Image

    pics = list(pictures.values())
    canvas = Image.new("L", (max(p.width for p in pics), sum(p.height for p in pics) + 8), 64)
    top = 0
    for p in pics:
        canvas.paste(p, (0, top))
        top += p.height + 8
    save_image(canvas, OUT / "denoise.png")


def write_md(report: dict, args) -> None:
    md = [f"MSE and PSNR to the clean digit on the first {args.images} MNIST test digits (lower MSE is better), "
          f"the same corrupted images for every row; classical filters with the parameter that did best on 32 "
          f"held-out training digits; `vae-edge denoise` with {report['samples']} particles, fp32 graphs, "
          f"{report['threads']} threads, {report['machine']}. The conv models ran on the first {args.model_images} "
          "digits: the classical filters' MSE on those same digits is in the last column.", "",
          "| noise | method | parameter | digits | MSE | PSNR dB | s/image | classical on the same digits (best) |",
          "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        same = r.get("classical_on_same_images")
        best = f"{min(same.values()):.4f} ({min(same, key=same.get)})" if same else ""
        method = f"**{r['method']}**" if r["method"].endswith(DEFAULT) else r["method"]
        param = "" if r.get("parameter") is None else f"{r['parameter']:g}"
        secs = f"{r['seconds_per_image']:.3f}" if "seconds_per_image" in r else ""
        md.append(f"| {r['noise']} | {method} | {param} | {r['images']} | {r['mse']:.4f} | {r['psnr_db']:.2f} | "
                  f"{secs} | {best} |")
    md += ["", "![clean, noisy, best classical filter, default model](results/denoise.png)"]
    (OUT / "denoise.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
