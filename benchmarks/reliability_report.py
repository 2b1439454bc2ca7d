"""Run the reliability tests and the bad-input corpus, and write the figures they print to
benchmarks/results/reliability.md (docs/reliability.md quotes it, through update_readme.py).

    python benchmarks/reliability_report.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:randomly", "tests/test_reliability.py",
         "tests/test_trust.py", "tests/test_security.py", "tests/test_hostile.py", "tests/test_properties.py",
         "tests/test_cli.py::test_bad_input_corpus"],
        cwd=ROOT, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    lines = [ln.split("RELIABILITY: ", 1)[1] for ln in res.stdout.splitlines() if "RELIABILITY: " in ln]
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "no output"
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-2000:])
        sys.exit(f"the reliability tests failed: {summary}")
    from vae_edge.runtime.sysinfo import cpu

    md = [f"Measured by `python benchmarks/reliability_report.py` ({summary}, {seconds:.0f} s on "
          f"{cpu()['model']}, {cpu()['cores']} cores):", ""]
    md += [f"- {ln}" for ln in lines]
    (ROOT / "benchmarks" / "results" / "reliability.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
