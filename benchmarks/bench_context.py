"""The logistic-ar likelihood against the plain logistic on 8-bit MNIST: the same conv model
(channels 32,64, one residual block, latent 32), the same seed and steps, trained by `vae-edge
train` on one thread; -ELBO in bits per dimension on the first N 8-bit test images (torch).

    python benchmarks/bench_context.py [--steps 2000] [--images 1000]

Writes benchmarks/results/context.md and .json (docs/compression.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--data-dir", default=str(MNIST))
    args = ap.parse_args()
    import torch

    from vae_edge.evaluate import evaluate
    from vae_edge.runtime.sysinfo import cpu
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for likelihood in ("logistic", "logistic-ar"):
            out = Path(tmp) / likelihood
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vae_edge", "train", "--arch", "conv", "--latent-dim", "32",
                            "--res-blocks", "1", "--likelihood", likelihood, "--binarize", "none", "--epochs", "40",
                            "--lr-schedule", "cosine", "--kl-warmup", "2", "--max-steps", str(args.steps),
                            "--threads", "1", "--quiet", "--data-dir", args.data_dir, "--out", str(out)], check=True)
            seconds = time.perf_counter() - t0
            torch.set_num_threads(1)
            model = model_from_checkpoint(load_checkpoint(out / "model.pt"))
            res = evaluate(model, "mnist", args.data_dir, iw_samples=0, limit=args.images)
            rows.append({"likelihood": likelihood, "steps": args.steps, "train_seconds": round(seconds),
                         "neg_elbo_bpd": round(res["neg_elbo_bits_per_dim"], 4)})
            print(rows[-1], flush=True)
    info = cpu()
    report = {"cpu": info, "command": "python benchmarks/bench_context.py " + " ".join(sys.argv[1:]), "rows": rows}
    res_dir = ROOT / "benchmarks" / "results"
    (res_dir / "context.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"Measured by `{report['command']}` on {info['model']} (one thread): the conv model (32,64 channels, one "
          f"residual block, latent 32), {args.steps} steps of batch 128 (cosine decay over 40 epochs, KL warm-up 2), "
          f"-ELBO on the first {args.images} 8-bit MNIST test images.", "",
          "| likelihood | -ELBO (bits/dim) | training |", "|---|---:|---:|"]
    md += [f"| {r['likelihood']} | {r['neg_elbo_bpd']:.3f} | {r['train_seconds']} s |" for r in rows]
    (res_dir / "context.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
