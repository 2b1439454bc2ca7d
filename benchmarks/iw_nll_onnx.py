"""Importance-weighted -log p(x) of a shipped model on the whole binarized MNIST test set, computed
with the on-device runtime (numpy + onnxruntime fp32 graphs), much faster than the torch evaluator
on this CPU. The same binarization (seed 0 over the full test set) as
`vae-edge evaluate`. Writes benchmarks/results/iw_nll_<model>.json (fp32), or with --variant V
iw_nll_<model>.V.json: the same estimate through that variant's graphs (what the device computes).

    python benchmarks/iw_nll_onnx.py --model conv-mnist --iw-samples 5000 --data-dir ../shared/data/mnist
    python benchmarks/iw_nll_onnx.py --model mlp-mnist --variant int8-dynamic --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vae_edge.data import binarize, load_split, resolve_data_dir, to_float
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.sysinfo import environment

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(name: str, variant: str = "fp32", split: str = "test") -> Path:
    """Where the estimate of one model and variant goes: iw_nll_<name>[.<variant>][.train].json."""
    return RESULTS / (f"iw_nll_{name}" + ("" if variant == "fp32" else f".{variant}")
                      + ("" if split == "test" else ".train") + ".json")


def load_result(name: str, variant: str = "fp32") -> dict | None:
    """The test-set estimate of one model and variant, where it was made."""
    path = result_path(name, variant)
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="conv-mnist", help="shipped model name or bundle folder")
    ap.add_argument("--name", default=None, help="name in the results file (default: --model)")
    ap.add_argument("--iw-samples", type=int, default=5000)
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--split", choices=["test", "train"], default="test",
                    help="train: the last --limit training images (to choose between runs without the test set)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    images, _ = load_split(resolve_data_dir("mnist", args.data_dir, split=args.split), args.split)
    x = binarize(to_float(images), seed=0)  # as vae_edge.evaluate: seed 0 over the full set
    x = x[: args.limit] if args.split == "test" else x[-(args.limit or 1000):]
    rt = VAERuntime.load(args.model, variant=args.variant, threads=args.threads)
    t0 = time.perf_counter()
    scores = np.concatenate([rt.score(x[i : i + 100], iw_samples=args.iw_samples, seed=i) for i in range(0, len(x), 100)])
    name = args.name or args.model
    res = {"model": name, "variant": args.variant, "split": args.split, "iw_samples": args.iw_samples, "images": len(x),
           "iw_nll": float(scores.mean()), "iw_nll_sem": float(scores.std(ddof=1) / np.sqrt(len(x))),
           "seconds": round(time.perf_counter() - t0, 1), "machine": environment()["cpu"]["model"]}
    RESULTS.mkdir(exist_ok=True)
    result_path(name, args.variant, args.split).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
