"""Quality table of the shipped models and their variants, from their evaluation records
(made by vae_edge/pretrained/make_pretrained.py) and bundle manifests. Writes
benchmarks/results/quality.md.

    python benchmarks/bench_quality.py
"""

from __future__ import annotations

from pathlib import Path

from vae_edge.runtime import load_manifest, shipped_bundles

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    md = ["| model | variant | test -ELBO (nats) | IW-NLL (nats) | -ELBO delta vs fp32 | decoder PSNR dB | size MB |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for name, bundle in shipped_bundles().items():
        m = load_manifest(bundle)
        ev = m.get("evaluation") or {}
        binarized = (m["training"]["train_config"] or {}).get("binarize") == "dynamic"
        elbo = ev.get("neg_elbo_binarized") if binarized else ev.get("neg_elbo")
        iw = (f"{ev['iw_nll']:.2f} (K={ev['iw_samples']}, {ev.get('iw_images', ev.get('images'))} images)"
              if ev.get("iw_nll") else "-")
        for v, e in m["variants"].items():
            size = sum(m["files"][f]["size"] for f in e["files"].values()) / 1e6
            acc = e.get("accuracy") or {}
            # a variant's -ELBO: the fp32 figure plus the delta measured with the same noise draws
            md.append(f"| {name} ({'binarized' if binarized else 'greyscale'}) | {v} | "
                      f"{elbo + acc.get('neg_elbo_delta', 0.0):.2f} | {iw if v == 'fp32' else '-'} | "
                      f"{acc.get('neg_elbo_delta', 0.0):+.3f} | {acc.get('decoder_psnr_db', float('inf')):.1f} | {size:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
