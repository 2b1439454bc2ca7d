"""The MNIST path before and after a change, in one run: the runtime's encode and decode latency of
the shipped models at two git revisions, each in its own fresh process, alternated (A B A B ...) so
that both see the same machine state; the median of the rounds' medians.

    python benchmarks/bench_ab.py --before b7ea9fa [--after HEAD] [--rounds 5]

Written for issue 24 (bring your own VAE: shapes, likelihoods and latents read from the manifest
instead of constants), which had to keep the MNIST path as fast as it was. Writes
benchmarks/results/ab_mnist.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
CASES = [("mlp-mnist", "fp32"), ("mlp-mnist", "int8-dynamic"), ("conv-mnist", "fp32"), ("conv-mnist", "int8-static")]

PROBE = r'''
import json, sys, time
import numpy as np
from vae_edge.runtime import VAERuntime

out = {}
for name, variant in json.loads(sys.argv[1]):
    rt = VAERuntime.load(name, variant=variant, threads=1)
    x = rt.sample(64, seed=0)
    z = rt.encode(x)[0]
    for batch in (1, 64):
        xb, zb = x[:batch], z[:batch]
        for g, call in (("encode", lambda: rt.encode(xb)), ("decode", lambda: rt.decode(zb))):
            for _ in range(50):
                call()
            blocks = []
            for _ in range(15):
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < 0.02:
                    call()
                    n += 1
                blocks.append((time.perf_counter() - t0) / n)
            out[f"{name}/{variant}/{g}/{batch}"] = float(np.median(blocks)) * 1e6
print(json.dumps(out))
'''


def stage(rev: str, dest: Path) -> Path:
    """The revision's importable code, laid out as installed (vae_edge, vae_edge.runtime, vae_edge.export)."""
    src = dest / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    st = dest / "stage"
    shutil.copytree(src / "vae_edge", st / "vae_edge")
    shutil.copytree(src / "runtime", st / "vae_edge" / "runtime")
    shutil.copytree(src / "export", st / "vae_edge" / "export")
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    revs = {k: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", r], capture_output=True, text=True,
                              check=True).stdout.strip() for k, r in (("before", args.before), ("after", args.after))}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        stages = {k: stage(r, Path(tmp) / k) for k, r in revs.items()}
        for i in range(args.rounds):
            for k in (("before", "after") if i % 2 == 0 else ("after", "before")):
                res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(CASES)], capture_output=True, text=True,
                                     env={"PYTHONPATH": str(stages[k]), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                                     cwd=tmp, check=True)
                runs[k].append(json.loads(res.stdout.strip().splitlines()[-1]))
    import numpy as np

    from vae_edge.runtime.sysinfo import environment

    keys = list(runs["before"][0])
    med = {k: {key: float(np.median([r[key] for r in runs[k]])) for key in keys} for k in runs}
    report = {"revisions": revs, "rounds": args.rounds, "median_us": med, "runs": runs, "machine": environment()}
    OUT.mkdir(exist_ok=True)
    (OUT / "ab_mnist.json").write_text(json.dumps(report, indent=2) + "\n")
    c = report["machine"]["cpu"]
    md = [f"The runtime's latency before ({revs['before']}) and after ({revs['after']}), one thread, "
          f"{c['model']} ({c['arch']}), {args.rounds} alternated rounds of fresh processes, median of each "
          "round's median (µs per call):", "",
          "| model | variant | call | batch | before | after | after / before |", "|---|---|---|---:|---:|---:|---:|"]
    for key in keys:
        name, variant, g, batch = key.split("/")
        b, a = med["before"][key], med["after"][key]
        md.append(f"| {name} | {variant} | {g} | {batch} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    md += ["", f"Regenerate: `python benchmarks/bench_ab.py --before {args.before} --after {args.after}`."]
    (OUT / "ab_mnist.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
