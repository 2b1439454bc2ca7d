"""Importance-weighted -log p(x) of a shipped model on the whole binarized MNIST test set, computed
with the on-device runtime (numpy + onnxruntime fp32 graphs), much faster than the torch evaluator
on this CPU. The same binarization (seed 0 over the full test set) as
`vae-edge evaluate`. Writes benchmarks/results/iw_nll_<model>.json (fp32), or with --variant V
iw_nll_<model>.V.json: the same estimate through that variant's graphs (what the device computes).

The estimate is resumable: every 100 images the per-image scores so far go to
iw_nll_<model>[.V].partial.json (with the sha256 of the graphs they came from), and a later run
with the same model, variant, K and images continues from there. --max-minutes stops a run cleanly
(the whole test set at K=5000 is hours of a 2-core CPU for a conv decoder); the partial file can
be committed and finished in another session. Scores of other graphs are refused, not mixed.

    python benchmarks/iw_nll_onnx.py --model conv-mnist --iw-samples 5000 --data-dir ../shared/data/mnist
    python benchmarks/iw_nll_onnx.py --model conv-mnist --iw-samples 5000 --max-minutes 60 --data-dir ../shared/data/mnist
    python benchmarks/iw_nll_onnx.py --model mlp-mnist --variant int8-dynamic --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.data import binarize, load_split, resolve_data_dir, to_float
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.files import write_json_atomic
from vae_edge.runtime.sysinfo import environment

CHUNK = 100  # images per runtime call; the IW noise of images i..i+99 is seeded by i

RESULTS = Path(__file__).resolve().parent / "results"


def result_path(name: str, variant: str = "fp32", split: str = "test") -> Path:
    """Where the estimate of one model and variant goes: iw_nll_<name>[.<variant>][.train].json."""
    return RESULTS / (f"iw_nll_{name}" + ("" if variant == "fp32" else f".{variant}")
                      + ("" if split == "test" else ".train") + ".json")


def load_result(name: str, variant: str = "fp32") -> dict | None:
    """The test-set estimate of one model and variant, where it was made; else, where one was
    stopped part way, its running figure, with images "N of M images, unfinished"."""
    path = result_path(name, variant)
    if path.is_file():
        return json.loads(path.read_text())
    part = partial_path(path)
    return partial_result(part) if part.is_file() else None


def partial_result(part: Path) -> dict | None:
    """The running figure of an estimate stopped part way (None before two images are scored)."""
    saved = json.loads(part.read_text())
    if len(saved["scores"]) < 2:
        return None
    n = len(saved["scores"])
    return {**saved["key"], **_mean_sem(saved["scores"]), "images": f"{n} of {saved['key']['images']} images, unfinished",
            "seconds": saved["seconds"], "machine": saved.get("machine", "")}


def _mean_sem(scores) -> dict:
    scores = np.asarray(scores, dtype=np.float64)
    return {"iw_nll": float(scores.mean()), "iw_nll_sem": float(scores.std(ddof=1) / np.sqrt(len(scores)))}


def partial_path(result: Path) -> Path:
    return result.with_name(result.name.removesuffix(".json") + ".partial.json")


def graph_hashes(rt: VAERuntime) -> dict:
    """sha256 of the encoder and decoder files the runtime's variant runs (from the bundle manifest)."""
    files = rt.manifest["variants"][rt.variant]["files"]
    return {role: rt.manifest["files"][name]["sha256"] for role, name in sorted(files.items())}


def estimate(rt: VAERuntime, x: np.ndarray, iw_samples: int, partial: Path, key: dict,
             max_seconds: float | None = None, log=lambda s: None,
             y: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
    """Per-image IW -log p(x) of x (-log p(x | y) given labels y, for a conditional model), resumed
    from and saved to `partial` every CHUNK images.

    key identifies the estimate (graphs, K, images...): a partial file made under another key is an
    error. Returns (scores so far, seconds spent on them over all runs, whether all of x is done)."""
    scores: list[float] = []
    seconds = 0.0
    if partial.is_file():
        saved = json.loads(partial.read_text())
        if saved.get("key") != key:
            raise VaeEdgeError(f"{partial} holds scores of another estimate (other graphs, K or images): "
                               "delete it to start over")
        scores, seconds = list(saved["scores"]), float(saved["seconds"])
        log(f"resuming at image {len(scores)} of {len(x)} ({seconds:.0f} s spent so far)")
    t_run, start = time.perf_counter(), len(scores)
    machine = environment()["cpu"]["model"]
    while len(scores) < len(x):
        if max_seconds is not None and len(scores) > start and time.perf_counter() - t_run >= max_seconds:
            break  # at least one chunk per run, so every run makes progress
        i = len(scores)
        t0 = time.perf_counter()
        yi = None if y is None else y[i : i + CHUNK]
        scores += [float(v) for v in rt.score(x[i : i + CHUNK], yi, iw_samples=iw_samples, seed=i)]
        seconds += time.perf_counter() - t0
        write_json_atomic(partial, {"key": key, "seconds": round(seconds, 1), "machine": machine,
                                    "scores": [round(v, 4) for v in scores]})
        log(f"{len(scores)}/{len(x)} images  running mean {np.mean(scores):.2f}  {seconds:.0f} s")
    done = len(scores) == len(x)
    return np.asarray(scores, dtype=np.float64), seconds, done


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
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop after this long, keeping the scores so far in the .partial.json file to resume")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    images, labels = load_split(resolve_data_dir("mnist", args.data_dir, split=args.split), args.split)
    x = binarize(to_float(images), seed=0)  # as vae_edge.evaluate: seed 0 over the full set
    pick = slice(None, args.limit) if args.split == "test" else slice(-(args.limit or 1000), None)
    x, labels = x[pick], labels[pick].astype(np.int64)
    rt = VAERuntime.load(args.model, variant=args.variant, threads=args.threads)
    name = args.name or args.model
    out = result_path(name, args.variant, args.split)
    given = {"given": "label"} if rt.conditional else {}  # a conditional model: -log p(x | its true digit)
    key = {"model": name, "variant": args.variant, "graphs": graph_hashes(rt), "split": args.split,
           "iw_samples": args.iw_samples, "images": len(x), "binarize_seed": 0, "chunk": CHUNK, **given}
    RESULTS.mkdir(exist_ok=True)
    partial = partial_path(out)
    scores, seconds, done = estimate(rt, x, args.iw_samples, partial, key,
                                     None if args.max_minutes is None else 60 * args.max_minutes,
                                     log=lambda s: print(s, file=sys.stderr, flush=True),
                                     y=labels if given else None)
    if not done:
        print(f"stopped at {len(scores)} of {len(x)} images; run the same command again to continue "
              f"({partial.relative_to(RESULTS.parent.parent)})", file=sys.stderr)
        raise SystemExit(3)
    res = {"model": name, "variant": args.variant, "split": args.split, "iw_samples": args.iw_samples, "images": len(x),
           **_mean_sem(scores), "seconds": round(seconds, 1), "machine": environment()["cpu"]["model"],
           "graphs": key["graphs"], **given}
    out.write_text(json.dumps(res, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(json.dumps(res))


if __name__ == "__main__":
    try:
        main()
    except VaeEdgeError as e:
        raise SystemExit(f"error: {e}") from None
