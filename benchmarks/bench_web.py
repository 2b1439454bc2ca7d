"""The browser as an edge target: latency of every variant of both shipped models in headless
Chromium (onnxruntime-web, wasm, 1 thread, cross-origin isolated), beside the Python runtime on
this CPU, measured in one run (contenders alternate in blocks); and a screenshot of the page with
a digit drawn on its pad.

    python benchmarks/bench_web.py --data-dir ../shared/data/mnist

Writes benchmarks/results/web.{json,md} and benchmarks/results/web_page.png. Needs chromium,
npm and pip install 'vae-edge[web]'.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from vae_edge.web import PAD_SIZE, build_site, serving
from vae_edge.web.browser import bench_web, chromium, markdown_web, open_page

OUT = Path(__file__).resolve().parent / "results"


def screenshot(data_dir, path: Path) -> None:
    """The page for the default model, with a 2 drawn on the pad by pointer events."""
    with tempfile.TemporaryDirectory() as tmp:
        build_site(None, ("all",), Path(tmp) / "site", data_dir=data_dir)
        with serving(Path(tmp) / "site") as url, chromium() as browser, \
                open_page(url, browser, viewport=(1000, 900)) as (page, errors):
            box = page.locator("#pad").bounding_box()
            s = box["width"] / PAD_SIZE
            t = np.linspace(0, 1, 30)
            arc = np.stack([75 + 110 * t, 90 - 45 * np.sin(np.pi * t)], 1)
            diag = np.stack([185 - 120 * t, 90 + 110 * t], 1)
            base = np.stack([65 + 130 * t, 200 + 0 * t], 1)
            stroke = np.concatenate([arc, diag, base])
            page.mouse.move(box["x"] + stroke[0][0] * s, box["y"] + stroke[0][1] * s)
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * s, box["y"] + y * s)
            page.mouse.up()
            page.evaluate("window.vaeEdge.settled()")
            page.screenshot(path=str(path), full_page=True)
            if errors:
                raise SystemExit(f"the page logged errors: {errors}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="MNIST folder (the page's test-set score range)")
    ap.add_argument("--batch-sizes", default="1,8,64,256")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of calls per contender and setting")
    args = ap.parse_args()
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    reports, md = [], ["ms per call, lower is better; \"browser / native\": how much slower the same graph runs "
                       "in the page than through the Python runtime on the same CPU.", ""]
    for model in ("mlp-mnist", "conv-mnist"):
        r = bench_web(model, ("all",), batch_sizes=batches, min_time=args.min_time, rounds=7, warn=print)
        r["model"] = model
        reports.append(r)
        md += [f"#### {model}", "", markdown_web(r)]
    OUT.mkdir(exist_ok=True)
    (OUT / "web.json").write_text(json.dumps(reports, indent=1))
    (OUT / "web.md").write_text("\n".join(md).rstrip() + "\n")
    screenshot(args.data_dir, OUT / "web_page.png")
    print((OUT / "web.md").read_text())


if __name__ == "__main__":
    main()
