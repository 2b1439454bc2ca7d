"""What each x86 target's settings buy on this CPU: the shipped conv-mnist (static int8) and
mlp-mnist (dynamic int8) quantized again with `--target x86` (the portable settings), `x86-vnni`
(per-channel weights) and `x86-avx2` (7-bit weights), in one run: accuracy against fp32 on the test
images, and the decoder's batch-1 latency, variants alternating in blocks.

    python benchmarks/bench_x86_targets.py --data-dir ../shared/data/mnist [--eval-size 2000]

Writes benchmarks/results/x86_targets.{json,md}. The CPU it ran on is in the table's caption:
which target fits a CPU is decided from its features (`vae-edge info`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vae_edge.bench import run_blocks, stats
from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.bundle import load_manifest
from vae_edge.runtime.calls import bare_call
from vae_edge.runtime.sysinfo import cpu, current_targets

OUT = Path(__file__).resolve().parent / "results"
MODELS = {"conv-mnist": "static", "mlp-mnist": "dynamic"}
TARGETS = ("x86", "x86-vnni", "x86-avx2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--eval-size", type=int, default=2000)
    ap.add_argument("--min-time", type=float, default=1.0)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, mode in MODELS.items():
            b = Path(tmp) / model
            shutil.copytree(Path(str(VAERuntime.load(model).bundle)), b)
            (b / "model.sig").unlink()
            made = {}  # each made again from the fp32 graphs
            for target in TARGETS:
                v, entry = quantize_bundle(b, QuantizeConfig(mode=mode, target=target, eval_size=args.eval_size),
                                           data_dir=args.data_dir, log=lambda s: None)
                made[target] = (v, entry)
                print(target, v, json.dumps(entry["accuracy"]), file=sys.stderr, flush=True)
            m = load_manifest(b)
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            z = np.random.default_rng(0).standard_normal((1, m["model"]["latent_dim"]), dtype=np.float32)
            calls = {}
            for target, (v, _) in made.items():
                sess = ort.InferenceSession(str(b / m["variants"][v]["files"]["decoder"]), so,
                                            providers=["CPUExecutionProvider"])
                calls[target] = bare_call(sess, ["probs"], {"z": z})
            times = run_blocks(calls, warmup=50, min_time=args.min_time)
            for target, (v, entry) in made.items():
                a = entry["accuracy"]
                rows.append({"model": model, "target": target, "variant": v,
                             "settings": {k: entry["quantization"]["config"][k]
                                          for k in ("per_channel", "reduce_range", "weight_type")},
                             "neg_elbo_delta": a["neg_elbo_delta"], "decoder_max_abs_diff": a["decoder_probs_max_abs_diff"],
                             "decoder_psnr_db": a["decoder_psnr_db"], "decoder_p50_ms_b1": stats(times[target])["p50_ms"],
                             "size_ratio_to_fp32": entry["size_ratio_to_fp32"]})
                print(json.dumps(rows[-1]), flush=True)
    c = cpu()
    report = {"rows": rows, "cpu": c["model"], "features": c["int8_features"], "this_cpu_targets": current_targets(),
              "eval_images": args.eval_size}
    OUT.mkdir(exist_ok=True)
    (OUT / "x86_targets.json").write_text(json.dumps(report, indent=2) + "\n")
    feats = ", ".join(k for k, on in c["int8_features"].items() if on)
    md = [f"Each x86 target's settings on {c['model']} ({feats}; its target: {current_targets()[0]}): accuracy "
          f"against fp32 on the first {args.eval_size} test images, decoder p50 at batch 1, one thread, bare "
          "onnxruntime call, the three variants alternating.", "",
          "| model | target | settings | -ELBO delta (nats) | decoder max abs diff | decoder PSNR dB | decoder ms b=1 | size vs fp32 |",
          "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["settings"]
        settings = ", ".join([f"{s['weight_type']} weights"] + (["per-channel"] if s["per_channel"] else [])
                             + (["7-bit"] if s["reduce_range"] else []))
        md.append(f"| {r['model']} | {r['target']} | {settings} | {r['neg_elbo_delta']:+.3f} | "
                  f"{r['decoder_max_abs_diff']:.4f} | {r['decoder_psnr_db']:.1f} | {r['decoder_p50_ms_b1']:.4f} | "
                  f"{r['size_ratio_to_fp32']:.0%} |")
    (OUT / "x86_targets.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
