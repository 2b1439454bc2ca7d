"""How wide an MLP decoder can be for a batch-1 latency budget: the IWAE paper's MLP decoder
(latent 50, two tanh layers of width W, 784 logits) exported and quantized (int8 dynamic, x86) for
several W, each graph timed at batch 1 and 256 through the bare onnxruntime call (IOBinding bound
once), one thread, every graph alternating in blocks. Latency does not depend on the weights'
values: the models are initialized, not trained (a one-step run, so that export has a checkpoint).

    python benchmarks/bench_mlp_widths.py --data-dir ../shared/data/mnist

Writes benchmarks/results/mlp_widths.{json,md}. The shipped mlp-mnist's decoder width (300) was
chosen from this table against the issue's budget of 15 us per image at batch 1 in int8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from vae_edge.bench import run_blocks, stats
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.calls import bare_call
from vae_edge.runtime.sysinfo import environment, int8_features_text

OUT = Path(__file__).resolve().parent / "results"


def make_bundle(root: Path, width: int, latent: int, data_dir) -> Path:
    from vae_edge.export import export_bundle
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.model import VAEConfig
    from vae_edge.train import TrainConfig, train

    run = root / f"w{width}"
    cfg = VAEConfig(arch="mlp", hidden=384, dec_hidden=width, depth=2, activation="tanh", latent_dim=latent)
    train(cfg, TrainConfig(max_steps=1, binarize="dynamic"), run, data_dir=data_dir, progress=False, log=lambda s: None)
    bundle = export_bundle(run / "model.pt", run / "bundle", data_dir=data_dir)
    quantize_bundle(bundle, QuantizeConfig(mode="dynamic", eval_size=500), data_dir=data_dir)
    return bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--widths", default="256,300,400,500")
    ap.add_argument("--latent-dim", type=int, default=50)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of calls per contender and batch size")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {w: make_bundle(Path(tmp), w, args.latent_dim, args.data_dir) for w in widths}
        rts = {(w, v): VAERuntime.load(b, variant=v, threads=1) for w, b in bundles.items() for v in ("fp32", "int8-dynamic")}
        rng = np.random.default_rng(0)
        res: dict = {}
        for batch in (1, 256):
            feeds = {"z": rng.standard_normal((batch, args.latent_dim), dtype=np.float32)}
            calls = {f"{w}/{v}": bare_call(rt.decoder, ["probs"], feeds) for (w, v), rt in rts.items()}
            for key, ts in run_blocks(calls, warmup=50, min_time=args.min_time).items():
                res.setdefault(key, {})[batch] = stats(ts)["p50_ms"] * 1e3
        for rt in rts.values():
            rt.close()
    for w in widths:
        macs = args.latent_dim * w + w * w + w * 784
        rows.append({"width": w, "decoder_macs": macs, "decoder_parameters": macs + 2 * w + 784,
                     **{f"{v}_us_b{b}": res[f"{w}/{v}"][b] for v in ("fp32", "int8-dynamic") for b in (1, 256)}})
    env = environment()
    OUT.mkdir(exist_ok=True)
    (OUT / "mlp_widths.json").write_text(json.dumps({"rows": rows, "latent_dim": args.latent_dim,
                                                     "machine": env["cpu"]}, indent=1) + "\n")
    md = [f"MLP decoder (latent {args.latent_dim}, two tanh layers of width W, 784 logits), p50 µs per call, "
          f"one thread, bare onnxruntime call, all graphs alternating; {env['cpu']['model']} "
          f"(int8 features: {int8_features_text(env['cpu'])}).", "",
          "| W | decoder MACs | int8-dynamic b=1 µs | fp32 b=1 µs | int8-dynamic b=256 µs | fp32 b=256 µs |",
          "|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['width']} | {r['decoder_macs'] / 1e3:.0f}k | {r['int8-dynamic_us_b1']:.1f} | {r['fp32_us_b1']:.1f} | "
           f"{r['int8-dynamic_us_b256']:.0f} | {r['fp32_us_b256']:.0f} |" for r in rows]
    (OUT / "mlp_widths.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
