"""The shipped models, side by side: parameters, IW-NLL (K=5000) and test -ELBO for fp32 and each
int8 variant, sample quality (Frechet distance in the evaluation classifier's features; for
conditional models, how often a sample of digit d is classified as d), decoder latency at batch 1
and 256 per variant (bare onnxruntime call, one thread, variants alternating in blocks), file
sizes, training time and hardware; and a picture of every model's samples.

    python benchmarks/bench_models.py --data-dir ../shared/data/mnist

Writes benchmarks/results/models.{json,md} and benchmarks/results/models_samples.png (with
--bundle NAME=FOLDER ... --out-name candidates: the same for models not shipped yet).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from iw_nll_onnx import load_result
from PIL import Image, ImageDraw

from vae_edge.bench import run_blocks, stats
from vae_edge.runtime import VAERuntime, shipped_bundles
from vae_edge.runtime.bundle import load_manifest
from vae_edge.runtime.calls import bare_call
from vae_edge.runtime.images import grid
from vae_edge.sample_quality import EvalClassifier, sample_quality

OUT = Path(__file__).resolve().parent / "results"


def parameters(bundle: Path, manifest: dict) -> int:
    import onnx

    n = 0
    for g in ("encoder", "decoder"):
        model = onnx.load(str(bundle / manifest["variants"]["fp32"]["files"][g]))
        sizes = (int(np.prod(i.dims)) for i in model.graph.initializer  # fp16: weights stored as fp16
                 if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
        n += sum(k for k in sizes if k > 10)
    return n


def decoder_latency(bundle: Path, variants: list[str], batches=(1, 256), min_time: float = 1.0) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    rts = {v: VAERuntime.load(bundle, variant=v, threads=1) for v in variants}
    d = next(iter(rts.values())).latent_dim
    cond = next(iter(rts.values())).conditional
    for b in batches:
        feeds = {"z": rng.standard_normal((b, d), dtype=np.float32)}
        if cond:
            feeds["y"] = (np.arange(b) % 10).astype(np.int64)
        calls = {v: bare_call(rt.decoder, ["probs"], feeds) for v, rt in rts.items()}
        times = run_blocks(calls, warmup=20, min_time=min_time)
        for v, ts in times.items():
            out.setdefault(v, {})[str(b)] = stats(ts)["p50_ms"]
    for rt in rts.values():
        rt.close()
    return out


def iw_of(name: str, variant: str, ev: dict) -> dict:
    """IW-NLL of one variant: benchmarks/iw_nll_onnx.py's file for it where made (all variants),
    else the evaluation's figure (fp32 only)."""
    iw = load_result(name, variant)
    if iw:
        return {"iw_nll": iw["iw_nll"], "iw_images": iw["images"], "iw_samples": iw["iw_samples"],
                **({"iw_given": iw["given"]} if iw.get("given") else {})}
    if variant == "fp32":
        return {"iw_nll": ev.get("iw_nll"), "iw_images": ev.get("iw_images"), "iw_samples": ev.get("iw_samples")}
    return {"iw_nll": None, "iw_images": None, "iw_samples": None}


def write_tables(rows: list[dict], floor: float, classifier: dict, out_name: str) -> None:
    """benchmarks/results/<out_name>.{json,md} from the measured rows."""
    OUT.mkdir(exist_ok=True)
    (OUT / f"{out_name}.json").write_text(json.dumps({"rows": rows, "frechet_floor_train_vs_test": floor,
                                                     "classifier": classifier}, indent=1))
    f = lambda v, s="{:.2f}": "-" if v is None else s.format(v)  # noqa: E731
    k = next((r["iw_samples"] for r in rows if r["iw_samples"]), None)
    md = [(f"IW-NLL: K={k}, dynamically binarized test set (fixed draw), nats, lower is better (the test images used "
           "are counted; a conditional model's is −log p(x | digit)). " if k else "IW-NLL: not measured for these models. ") + "Frechet distance: 10,000 samples (Bernoulli means) vs the 10,000 test "
          f"digits in the evaluation classifier's 128-d features (test accuracy "
          f"{classifier['test_accuracy']:.2%}); two real sets (10,000 training vs test digits) are {floor:.2f} "
          "apart. Test −ELBO of an int8 variant: fp32's plus its −ELBO delta (measured on all 10,000 test images with "
          "the same noise draws). Decoder latency: p50 ms, bare onnxruntime call, one thread, variants alternating.", "",
          "| model | variant | parameters | IW-NLL (test images) | test −ELBO | −ELBO delta | Frechet distance | "
          "conditional accuracy | decoder ms b=1 | decoder ms b=256 | variant MB | model folder MB | training |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        iw = "-" if r["iw_nll"] is None else f"{r['iw_nll']:.2f} ({r['iw_images']}{', given the digit' if r.get('iw_given') else ''})"
        train = "-" if not r["train_seconds"] else f"{r['train_seconds'] / 60:.0f} min, {r['train_hardware']}"
        md.append(f"| {r['model']} | {r['variant']} | {r['parameters'] / 1e6:.2f}M | {iw} | {f(r['neg_elbo_binarized'])} | "
                  f"{f(r['neg_elbo_delta'], '{:+.2f}')} | {r['frechet']:.2f} | {f(r['conditional_accuracy'], '{:.2%}')} | "
                  f"{r['decoder_ms_b1']:.4f} | {r['decoder_ms_b256']:.3f} | {r['variant_bytes'] / 1e6:.2f} | "
                  f"{r['model_folder_bytes'] / 1e6:.2f} | {train} |")
    (OUT / f"{out_name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def refresh_iw(out_name: str) -> None:
    """Rewrite the IW-NLL fields of <out_name>.json's rows from the current iw_nll files."""
    path = OUT / f"{out_name}.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist; run bench_models.py without --refresh-iw first")
    old = json.loads(path.read_text())
    rows = [{**r, **{k: v for k, v in iw_of(r["model"], r["variant"], {}).items() if v is not None}}
            for r in old["rows"]]
    write_tables(rows, old["frechet_floor_train_vs_test"], old["classifier"], out_name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--bundle", action="append", default=None, metavar="NAME=FOLDER",
                    help="evaluate these bundles instead of the shipped ones (e.g. candidates made with "
                         "make_pretrained.py --only NAME)")
    ap.add_argument("--out-name", default="models", help="results file stem")
    ap.add_argument("--refresh-iw", action="store_true",
                    help="measure nothing: rewrite the IW-NLL column of the existing <out-name>.{json,md} from the "
                         "iw_nll_<model>[.<variant>][.partial].json files of iw_nll_onnx.py (after an estimate "
                         "finishes or moves on); every other column stays as last measured")
    args = ap.parse_args()
    if args.refresh_iw:
        refresh_iw(args.out_name)
        return
    clf = EvalClassifier(threads=2)
    rows, pictures = [], []
    chosen = (dict(b.split("=", 1) for b in args.bundle) if args.bundle else shipped_bundles())
    for name, bundle in chosen.items():
        bundle = Path(bundle)
        manifest = load_manifest(bundle)
        ev = manifest.get("evaluation") or {}
        folder = bundle.parent
        ev_file = json.loads((folder / "evaluation.json").read_text()) if (folder / "evaluation.json").is_file() else ev
        if "train_seconds" not in ev_file and (folder / "metrics.jsonl").is_file():  # a run folder's bundle
            from vae_edge.pretrained.make_pretrained import training_record

            ev_file = {**ev_file, **training_record(folder)}
        variants = [v for v in manifest["variants"]]
        sq = sample_quality(bundle, tuple(variants), samples=args.samples, data_dir=args.data_dir, classifier=clf)
        lat = decoder_latency(bundle, variants)
        files = {v: sum(manifest["files"][f]["size"] for f in manifest["variants"][v]["files"].values()) for v in variants}
        total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        for v in variants:
            acc = manifest["variants"][v].get("accuracy") or {}
            q = next(r for r in sq["rows"] if r["variant"] == v)
            rows.append({
                "model": name, "variant": v, "arch": manifest["model"]["arch"],
                "conditional": manifest["model"].get("conditional", False),
                "parameters": parameters(bundle, manifest),
                **iw_of(name, v, ev_file),
                # a variant's test -ELBO: fp32's plus the delta measured with the same noise draws
                "neg_elbo_binarized": (None if ev_file.get("neg_elbo_binarized") is None else
                                       ev_file["neg_elbo_binarized"] + (0.0 if v == "fp32" else acc.get("neg_elbo_delta", 0.0))),
                "neg_elbo_delta": 0.0 if v == "fp32" else acc.get("neg_elbo_delta"),
                "frechet": q["frechet"], "conditional_accuracy": q.get("conditional_accuracy"),
                "decoder_ms_b1": lat[v]["1"], "decoder_ms_b256": lat[v]["256"],
                "variant_bytes": files[v], "model_folder_bytes": total,
                "train_seconds": ev_file.get("train_seconds"), "train_hardware": ev_file.get("train_hardware"),
            })
        with VAERuntime.load(bundle) as rt:
            x = rt.sample(64, seed=0) if not rt.conditional else rt.decode(
                np.random.default_rng(0).standard_normal((64, rt.latent_dim), dtype=np.float32), np.arange(64) % 10)
        pictures.append((name, grid(x, ncol=8, scale=2)))
    floor = sq["floor_train_vs_test"]
    # samples of every model side by side, named
    w = sum(p.width for _, p in pictures) + 20 * (len(pictures) + 1)
    h = max(p.height for _, p in pictures) + 40
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    x0 = 20
    for name, p in pictures:
        d.text((x0, 10), name, fill="black")
        canvas.paste(p.convert("RGB"), (x0, 30))
        x0 += p.width + 20
    OUT.mkdir(exist_ok=True)
    canvas.save(OUT / f"{args.out_name}_samples.png")
    write_tables(rows, floor, sq["classifier"], args.out_name)


if __name__ == "__main__":
    main()
