"""Anomaly detection with the shipped models: AUROC of MNIST test digits (normal) against
Fashion-MNIST test images and against simple images (blank, near-blank, noise, non-digit shapes),
for the likelihood score (-ELBO) and the complexity-corrected score (Serra et al. 2020).

    python benchmarks/bench_anomaly.py --data-dir ../shared/data/mnist

Writes benchmarks/results/anomaly.{json,md}. Fashion-MNIST comes from Debian's
dataset-fashion-mnist package (or the user cache).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vae_edge.data import load_slice
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.anomaly_sets import auroc, simple_images

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="MNIST folder")
    ap.add_argument("--images", type=int, default=10000)
    args = ap.parse_args()
    mnist, _ = load_slice(f"mnist:test[0:{args.images}]", args.data_dir)
    fashion, _ = load_slice(f"fashion-mnist:test[0:{args.images}]")
    simple = simple_images(n_each=50)
    rows = []
    for model in ("mlp-mnist", "conv-mnist"):
        rt = VAERuntime.load(model, threads=2)
        for name, fn in (("-ELBO (likelihood)", rt.score), ("complexity-corrected", rt.complexity_score)):
            normal = fn(mnist)
            row = {"model": model, "score": name, "fashion-mnist": auroc(fn(fashion), normal)}
            for kind, imgs in simple.items():
                row[kind] = auroc(fn(imgs), normal)
            rows.append(row)
            print(json.dumps(row), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "anomaly.json").write_text(json.dumps({"rows": rows, "mnist_test_images": len(mnist),
                                                  "fashion_test_images": len(fashion),
                                                  "simple_images": {k: len(v) for k, v in simple.items()}}, indent=2))
    kinds = list(simple)
    md = [f"AUROC (1.0: every anomalous image scores above every MNIST test digit; 0.5: chance; below: "
          f"anomalies look *more* normal than digits). {len(mnist)} MNIST and {len(fashion)} Fashion-MNIST "
          f"test images; simple images: {', '.join(f'{len(v)} {k}' for k, v in simple.items())} "
          "(`runtime/anomaly_sets.py`).", "",
          "| model | score | Fashion-MNIST | " + " | ".join(kinds) + " |", "|---|---|---:|" + "---:|" * len(kinds)]
    for r in rows:
        md.append(f"| {r['model']} | {r['score']} | {r['fashion-mnist']:.3f} | "
                  + " | ".join(f"{r[k]:.3f}" for k in kinds) + " |")
    (OUT / "anomaly.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
