"""Copy the committed reports of benchmarks/results/ into README.md between its markers
(<!-- results:NAME --> ... <!-- /results:NAME -->), so the README shows what the scripts measured.

    python benchmarks/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "quality": "quality.md",
    "runtime": "runtime_summary.md",
    "decoder_ops": "decoder_ops.md",
    "training": "training.md",
    "pipeline": "pipeline.md",
}


def main() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, fname in SOURCES.items():
        path = ROOT / "benchmarks" / "results" / fname
        if not path.is_file():
            continue
        block = f"<!-- results:{name} -->\n{path.read_text().strip()}\n<!-- /results:{name} -->"
        readme, n = re.subn(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", lambda m, b=block: b, readme, flags=re.S)
        if n == 0:
            print(f"README has no marker for {name}")
    (ROOT / "README.md").write_text(readme)


if __name__ == "__main__":
    main()
