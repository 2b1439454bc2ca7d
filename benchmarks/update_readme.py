"""Copy the committed reports of benchmarks/results/ into the docs (docs/*.md) and README.md
between their markers (<!-- results:NAME --> ... <!-- /results:NAME -->), so the pages show what
the scripts measured.

    python benchmarks/update_readme.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "quality": "quality.md",
    "runtime": "runtime_summary.md",
    "decoder_ops": "decoder_ops.md",
    "training": "training.md",
    "pipeline": "pipeline.md",
    "iw_nll": "iw_nll.md",
    "denoise": "denoise.md",
    "reliability": "reliability.md",
    "arm64_int8": "arm64_int8.md",
    "anomaly": "anomaly.md",
    "web": "web.md",
    "peers": "peers.md",
    "levers": "levers.md",
    "models": "models.md",
    "candidates": "candidates.md",
    "conditional": "conditional.md",
    "mlp_widths": "mlp_widths.md",
    "x86_targets": "x86_targets.md",
    "compression": "compression.md",
    "compression8": "compression8.md",
    "ab_mnist": "ab_mnist.md",
    "diffusers": "diffusers.md",
    "diffusers_taesd": "diffusers-taesd.md",
    "web_large": "web_large.md",
}


def iw_nll_table() -> None:
    """benchmarks/results/iw_nll.md from the iw_nll_<model>.json files of iw_nll_onnx.py."""
    from iw_nll_onnx import partial_result

    from vae_edge.runtime import shipped_bundles

    shipped = set(shipped_bundles())
    rows = []
    for p in sorted((ROOT / "benchmarks" / "results").glob("iw_nll_*.json")):
        # an estimate stopped part way (iw_nll_onnx.py --max-minutes) shows its images so far
        r = partial_result(p) if p.name.endswith(".partial.json") else json.loads(p.read_text())
        if r:
            rows.append(r)
    rows = [r for r in rows if r.get("split", "test") == "test"]  # .train files: choosing between runs
    rows = [r for r in rows if r["model"] in shipped]  # candidates: candidates.md
    if not rows:
        return
    rows.sort(key=lambda r: (r["model"], r.get("variant", "fp32") != "fp32", r.get("variant", "fp32")))
    md = ["| model | variant | test images | K | IW-NLL (nats) | ± s.e.m. | seconds | machine |",
          "|---|---|---:|---:|---:|---:|---:|---|"]
    # a conditional model's estimate is of -log p(x | its digit): not comparable with the others
    md += [f"| {r['model']}{' (given the digit)' if r.get('given') else ''} | {r.get('variant', 'fp32')} | {r['images']} | {r['iw_samples']} | {r['iw_nll']:.2f} | "
           f"{r['iw_nll_sem']:.2f} | {r['seconds']:.0f} | {r['machine']} |" for r in rows]
    (ROOT / "benchmarks" / "results" / "iw_nll.md").write_text("\n".join(md) + "\n")


def main() -> None:
    iw_nll_table()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = set()
    for page in pages:
        text = page.read_text()
        new = text
        for name, fname in SOURCES.items():
            path = ROOT / "benchmarks" / "results" / fname
            if not path.is_file():
                continue
            block = f"<!-- results:{name} -->\n{path.read_text().strip()}\n<!-- /results:{name} -->"
            new, n = re.subn(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", lambda m, b=block: b, new,
                             flags=re.S)
            if n:
                found.add(name)
        if new != text:
            page.write_text(new)
    for name in sorted(set(SOURCES) - found):
        print(f"no page has a marker for {name}")


if __name__ == "__main__":
    main()
