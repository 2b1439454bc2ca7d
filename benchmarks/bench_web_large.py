"""What a large decode takes on the page: a diffusers bundle's site in headless Chromium
(onnxruntime-web, WASM, one thread, inference in its proxy worker), one image of --size pixels
decoded from a random latent in tiles, with the page's longest pause (a 10 ms timer on its own
thread) and Chromium's peak memory as the OS reports it.

    python benchmarks/bench_web_large.py --bundle DIR [--variant fp32,int8-static] [--size 256]

Writes benchmarks/results/web_large.{json,md} (docs/diffusers.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def _chromium_rss_gb() -> float:
    """The summed peak RSS (VmHWM) of the running Chromium processes, in GB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if "chrom" in text.splitlines()[0].lower():
            total += next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("VmHWM:")), 0)
    return round(total / 2**20, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--variant", default="fp32,int8-static")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    from vae_edge.runtime.sysinfo import cpu
    from vae_edge.web import build_site, serving
    from vae_edge.web.browser import chromium, open_page

    rows = []
    for variant in args.variant.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            build_site(args.bundle, (variant,), Path(tmp) / "site", log=lambda s: None)
            with chromium() as browser, serving(Path(tmp) / "site") as url, \
                    open_page(url + f"?variant={variant}", browser, timeout_s=1200) as (page, errors):
                got = page.evaluate(f"window.vaeEdge.large({args.size}, 0)")
                rows.append({"variant": variant, "size": args.size, "seconds": round(got["ms"] / 1000, 1),
                             "tiles": got["tiles"], "longest_pause_ms": round(got["maxGapMs"]),
                             "chromium_peak_rss_gb": _chromium_rss_gb(), "errors": errors})
                print(rows[-1], flush=True)
    info = cpu()
    report = {"cpu": info, "command": "python benchmarks/bench_web_large.py " + " ".join(
        a if not a.startswith("/") else "BUNDLE" for a in sys.argv[1:]), "rows": rows}
    (OUT / "web_large.json").write_text(json.dumps(report, indent=1) + "\n")
    md = [f"Measured by `{report['command']}` on {info['model']} ({info['cores']} cores; the page uses one WASM "
          "thread): one image from a random latent, decoded on the page in tiles.", "",
          "| variant | size | tiles | time | the page's longest pause | Chromium's peak RSS |",
          "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['variant']} | {r['size']}x{r['size']} | {r['tiles']} | {r['seconds']} s | {r['longest_pause_ms']} ms "
           f"| {r['chromium_peak_rss_gb']} GiB |" for r in rows]
    (OUT / "web_large.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
