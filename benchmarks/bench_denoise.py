"""Denoising and inpainting quality on MNIST test images, shipped model, same run for every row:
the corrupted input, plain reconstruction, the single best-weighted importance sample (what the
former importance sampler collapsed to: effective sample size 1), and the SMC posterior mean.

    python benchmarks/bench_denoise.py --data-dir ../shared/data/mnist

Writes benchmarks/results/denoise.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from vae_edge.data import load_slice
from vae_edge.runtime import VAERuntime, corrupt
from vae_edge.runtime.sysinfo import environment
from vae_edge.runtime.vae_runtime import best_single_sample

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    x, _ = load_slice(f"mnist:test[0:{args.images}]", args.data_dir)
    for model in ("mlp-mnist", "conv-mnist"):
        rt = VAERuntime.load(model, threads=args.threads)
        for spec in ("gaussian:0.3", "saltpepper:0.2", "mask:rect", "mask:bottom"):
            noisy, mask = corrupt(x, spec, seed=0)
            t0 = time.perf_counter()
            info: dict = {}
            smc = rt.denoise(noisy, noise=None if mask is not None else spec, mask=mask, samples=args.samples,
                             seed=0, info=info)
            seconds = time.perf_counter() - t0
            single = best_single_sample(rt, noisy, spec, mask, args.samples, seed=1)
            rec = rt.reconstruct(noisy * mask if mask is not None else noisy)
            if mask is not None:
                rec = np.where(mask > 0, noisy, rec)
            mse = lambda a: float(np.mean((a - x) ** 2))  # noqa: E731
            rows.append({"model": model, "corruption": spec, "images": len(x), "mse_corrupted": mse(noisy),
                         "mse_reconstruction": mse(rec), "mse_best_single_sample": mse(single),
                         "mse_smc_posterior_mean": mse(smc), "ess_median": float(np.median(info["ess"])),
                         "ess_min": float(np.min(info["ess"])), "particles": args.samples,
                         "temperatures_median": float(np.median(info["temperatures"])),
                         "acceptance": info["acceptance"], "seconds_per_image": seconds / len(x)})
            print(json.dumps(rows[-1]), flush=True)
    env = environment()
    report = {"rows": rows, "machine": env["cpu"]["model"], "threads": args.threads,
              "python": platform.python_version(), "onnxruntime": env["onnxruntime"]}
    OUT.mkdir(exist_ok=True)
    (OUT / "denoise.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [f"MSE to the clean image on the first {args.images} MNIST test images (lower is better); fp32 graphs, "
          f"{args.samples} particles, {args.threads} threads, {env['cpu']['model']}.", "",
          "| model | corruption | corrupted | reconstruction | best single sample | **SMC posterior mean** "
          "| ESS median (min) | temperatures | acceptance | s/image |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['corruption']} | {r['mse_corrupted']:.4f} | {r['mse_reconstruction']:.4f} | "
                  f"{r['mse_best_single_sample']:.4f} | **{r['mse_smc_posterior_mean']:.4f}** | "
                  f"{r['ess_median']:.0f} ({r['ess_min']:.0f}) | {r['temperatures_median']:.0f} | "
                  f"{r['acceptance']:.2f} | {r['seconds_per_image']:.2f} |")
    (OUT / "denoise.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
