"""Runtime latency suite: every shipped model and variant against bare onnxruntime and PyTorch
eager, one thread, batch 1 to 1024. Writes benchmarks/results/runtime-<model>/ and prints the
README table.

    python benchmarks/bench_runtime.py [--min-time 0.5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vae_edge.bench import BenchConfig, benchmark, write_report
from vae_edge.runtime import shipped_bundles

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--batch-sizes", default="1,8,64,256,1024")
    args = ap.parse_args()
    lines = ["| model | graph | batch | variant | p50 ms | vs PyTorch eager | vs fp32 ONNX | runtime overhead |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    sgemm = ["| model | batch | fp32 decoder GFLOP/s | numpy sgemm GFLOP/s (1 core) | fraction |",
             "|---|---:|---:|---:|---:|"]
    for name, bundle in shipped_bundles().items():
        cfg = BenchConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), min_time=args.min_time)
        rep = benchmark(bundle, cfg)
        write_report(rep, RESULTS / f"runtime-{name}")
        for r in rep["ratios"]:
            if r["graph"] == "decoder" and r["batch"] in (1, 1024):
                f = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
                lines.append(f"| {name} | decoder | {r['batch']} | {r['variant']} | {r['p50_ms']:.4f} | "
                             f"{f(r['speedup_vs_torch'])} | {f(r['speedup_vs_fp32_onnx'])} | {f(r['runtime_overhead'])} |")
        for s in rep.get("sgemm", []):
            sgemm.append(f"| {name} | {s['batch']} | {s['decoder_fp32_gflops']:.1f} | {s['numpy_sgemm_gflops']:.1f} | "
                         f"{s['fraction']:.0%} |")
    cpu = rep["environment"]["cpu"]
    table = (f"Medians, one thread, {cpu['model']}, onnxruntime {rep['environment']['onnxruntime']}, "
             f"torch {rep['environment'].get('torch', '-')}; ratios from the same run.\n\n"
             + "\n".join(lines) + "\n\n" + "\n".join(sgemm) + "\n")
    (RESULTS / "runtime_summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
