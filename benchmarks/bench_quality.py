"""Quality table of the shipped models and their variants, from their evaluation records
(made by vae_edge/pretrained/make_pretrained.py) and bundle manifests. Writes
benchmarks/results/quality.md.

    python benchmarks/bench_quality.py
"""

from __future__ import annotations

from pathlib import Path

from iw_nll_onnx import load_result

from vae_edge.runtime import load_manifest, shipped_bundles

RESULTS = Path(__file__).resolve().parent / "results"


def iw_text(name: str, variant: str, ev: dict) -> str:
    """The IW-NLL of a variant: the runtime's estimate (benchmarks/iw_nll_onnx.py) where made,
    else, for fp32, the torch evaluator's in the model's evaluation record."""
    r = load_result(name, variant)
    if r:
        images = r["images"] if isinstance(r["images"], str) else f"{r['images']} images"  # str: unfinished
        return f"{r['iw_nll']:.2f} (K={r['iw_samples']}, {images}{', given the digit' if r.get('given') else ''})"
    if variant == "fp32" and ev.get("iw_nll"):
        return f"{ev['iw_nll']:.2f} (K={ev['iw_samples']}, {ev.get('iw_images', ev.get('images'))} images)"
    return "-"


def main() -> None:
    md = ["| model | variant | test -ELBO (nats) | IW-NLL (nats) | -ELBO delta vs fp32 | decoder PSNR dB | size MB |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for name, bundle in shipped_bundles().items():
        m = load_manifest(bundle)
        ev = m.get("evaluation") or {}
        binarized = (m["training"]["train_config"] or {}).get("binarize") == "dynamic"
        elbo = ev.get("neg_elbo_binarized") if binarized else ev.get("neg_elbo")
        for v, e in m["variants"].items():
            iw = iw_text(name, v, ev)
            size = sum(m["files"][f]["size"] for f in e["files"].values()) / 1e6
            acc = e.get("accuracy") or {}
            # a variant's -ELBO: the fp32 figure plus the delta measured with the same noise draws
            md.append(f"| {name} ({'binarized' if binarized else 'greyscale'}) | {v} | "
                      f"{elbo + acc.get('neg_elbo_delta', 0.0):.2f} | {iw} | "
                      f"{acc.get('neg_elbo_delta', 0.0):+.3f} | {acc.get('decoder_psnr_db', float('inf')):.1f} | {size:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
