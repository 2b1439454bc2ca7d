"""Recipe for the shipped pretrained models: train, evaluate, slim, export, quantize.

    python vae_edge/pretrained/make_pretrained.py --data-dir ../shared/data/mnist

`--reuse-runs` takes runs/<name>/model.pt made earlier by exactly the commands printed here.
The results land in vae_edge/pretrained/<name>/{model.pt, evaluation.json, bundle/}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {
    # name: (train arguments, quantize (mode, target) pairs, IW samples, IW test images (None: all 10,000))
    "mlp-mnist": (["--arch", "mlp", "--epochs", "10"], [("dynamic", "x86"), ("static", "x86"), ("dynamic", "arm64")],
                  5000, None),
    "conv-mnist": (["--arch", "conv", "--binarize", "dynamic", "--epochs", "20", "--lr-schedule", "cosine",
                    "--kl-warmup", "2"], [("static", "x86")], 5000, 1000),
}


def sh(*args: str) -> str:
    print("+ " + " ".join(args), flush=True)
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--reuse-runs", action="store_true", help="Skip training where runs/<name>/model.pt exists.")
    ap.add_argument("--only", choices=list(MODELS), default=None)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--sign-key", default=None, help="Private key to sign the bundles with (the project key).")
    args = ap.parse_args()
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    exe = [sys.executable, "-m", "vae_edge"]
    Path(args.runs).mkdir(exist_ok=True)
    for name, (train_args, modes, k, limit) in MODELS.items():
        if args.only and name != args.only:
            continue
        run = Path(args.runs) / name
        if not (args.reuse_runs and (run / "model.pt").is_file()):
            sh(*exe, "train", *train_args, "--out", str(run), "--threads", args.threads, "--quiet", "--seed", "0", *data)
        lim = ["--limit", str(limit)] if limit else []
        ev = json.loads(sh(*exe, "evaluate", str(run / "model.pt"), "--iw-samples", str(k), *lim,
                           "--threads", args.threads, "--json", *data))
        ev_full = json.loads(sh(*exe, "evaluate", str(run / "model.pt"), "--iw-samples", "0", "--json", *data))
        evaluation = {**ev_full, "iw_nll": ev["iw_nll"], "iw_samples": k, "iw_images": ev["images"]}
        dest = HERE / name
        dest.mkdir(exist_ok=True)
        import torch

        from vae_edge.train import atomic_torch_save, load_checkpoint, slim_checkpoint

        ckpt = slim_checkpoint(load_checkpoint(run / "model.pt"))
        ckpt["evaluation"] = evaluation
        atomic_torch_save(ckpt, dest / "model.pt")
        (dest / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        if (dest / "bundle").exists():
            shutil.rmtree(dest / "bundle")
        sh(*exe, "export", str(dest / "model.pt"), "--out", str(dest / "bundle"), *data)
        for mode, target in modes:
            sh(*exe, "quantize", str(dest / "bundle"), "--mode", mode, "--target", target, *data)
        if args.sign_key:  # the project key's private half is kept off the repository
            sh(*exe, "sign", str(dest / "bundle"), "--key", args.sign_key)
        del torch
    print("done: " + ", ".join(str(HERE / n) for n in MODELS if not args.only or n == args.only))


if __name__ == "__main__":
    main()
