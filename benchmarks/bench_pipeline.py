"""Time the main job (`vae-edge pipeline`) on the shipped model and record its report's
headline figures. Writes benchmarks/results/pipeline.md.

    python benchmarks/bench_pipeline.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pipeline-out"
        cmd = [sys.executable, "-m", "vae_edge", "pipeline", "--out", str(out)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - t0
        rep = json.loads((out / "report.json").read_text())
    steps = rep["timings_s"]  # each step's duration in seconds (the rest of the wall time: start-up)
    md = [f"`vae-edge pipeline` on the shipped mlp-mnist checkpoint: **{wall:.0f} s** wall time on "
          f"{os.cpu_count()} CPU cores, process start included. Steps (s): "
          + ", ".join(f"{k.split(':')[0].split(',')[0]} {t:.1f}" for k, t in steps.items() if k != "done")
          + f"; start-up and the rest {wall - sum(steps.values()):.1f}."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
