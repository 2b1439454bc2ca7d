"""Training throughput: one epoch of the mlp default (batch 128, greyscale) through
`vae_edge.train` against a plain hand-written PyTorch loop over the same tensors (alternating, medians), on the CPU
(and on CUDA when there is one). Writes benchmarks/results/training.{json,md}.

    python benchmarks/bench_training.py --data-dir ../shared/data/mnist [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vae_edge.model import VAE, VAEConfig
from vae_edge.train import TrainConfig, load_train_tensors, train

RESULTS = Path(__file__).resolve().parent / "results"


def plain_loop(x: torch.Tensor, device: torch.device) -> float:
    """The loop of pytorch/examples/vae, over tensors already in memory."""
    torch.manual_seed(0)
    model = VAE(VAEConfig()).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(x), device=device)
    t0 = time.perf_counter()
    for i in range(0, len(x), 128):
        xb = x[perm[i : i + 128]]
        logits, mu, logvar = model(xb)
        loss = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum") - 0.5 * torch.sum(
            1 + logvar - mu.pow(2) - logvar.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        x, _ = load_train_tensors("mnist", args.data_dir, dev)
        plain_loop(x[:2048], dev)  # warm-up
        plain, ours = [], []

        def run_ours() -> float:
            with tempfile.TemporaryDirectory() as tmp:
                m = train(VAEConfig(), TrainConfig(epochs=1), tmp, data_dir=args.data_dir, device=dev.type,  # noqa: B023
                          progress=False, log=lambda s: None)
            return m["seconds"]

        for r in range(args.rounds):  # ABBA order, so drift and order effects hit both alike
            if r % 2 == 0:
                plain.append(plain_loop(x, dev))
                ours.append(run_ours())
            else:
                ours.append(run_ours())
                plain.append(plain_loop(x, dev))
        plain, ours = statistics.median(plain), statistics.median(ours)
        rows.append({"device": dev.type, "threads": args.threads, "rounds": args.rounds, "plain_loop_s": plain,
                     "vae_edge_s": ours, "vae_edge_images_per_s": 60000 / ours, "ratio": ours / plain})
    env = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    from vae_edge.runtime.sysinfo import cpu

    md = [f"On {cpu()['model']} ({cpu()['cores']} cores), torch {torch.__version__}; median of {args.rounds} epochs each, "
          "the two loops alternating in ABBA order.", "",
          "| device | threads | plain loop s/epoch | vae-edge s/epoch | images/s | ratio |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['device']} | {r['threads']} | {r['plain_loop_s']:.2f} | {r['vae_edge_s']:.2f} | "
           f"{r['vae_edge_images_per_s']:.0f} | {r['ratio']:.2f} |" for r in rows]
    (RESULTS / "training.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
