"""The main job: shipped checkpoint -> export -> quantize -> validate -> demos -> benchmark -> report."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime.files import write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

MARKER = ".vae-edge-pipeline"  # written first: a re-run recognizes an interrupted run as its own


def shipped_checkpoint(name: str = "mlp-mnist") -> Path:
    from importlib import resources

    path = Path(str(resources.files("vae_edge") / "pretrained" / name / "model.pt"))
    if not path.is_file():
        raise VaeEdgeError(f"no PyTorch checkpoint of {name} here (a wheel install leaves them out: torch-only): "
                           "pass --checkpoint, or install from a source checkout")
    return path


def run_pipeline(out: str | os.PathLike, checkpoint=None, data_dir=None, min_time: float = 0.2,
                 batch_sizes=(1, 64, 1024), force: bool = False, log=None) -> dict:
    log = log or logger.info
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaeEdgeError(f"--out {out} is a file")
    ours = (out / MARKER).exists() or (out / "report.json").exists()  # a finished or interrupted run of ours
    if out.exists() and any(out.iterdir()) and not ours and not force:
        raise VaeEdgeError(f"{out} exists and is not a pipeline output: choose another --out, or pass --force")
    checkpoint = Path(checkpoint) if checkpoint else shipped_checkpoint()
    if not out.parent.is_dir():
        raise VaeEdgeError(f"the folder of --out {out} does not exist")
    created = not out.exists()
    out.mkdir(exist_ok=True)  # the last level only, as every command does
    (out / MARKER).write_text("vae-edge pipeline output\n")
    try:
        return _run(out, checkpoint, data_dir, min_time, batch_sizes, log)
    except BaseException:
        if created:  # nothing half-made is left behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run(out: Path, checkpoint: Path, data_dir, min_time: float, batch_sizes, log) -> dict:
    from vae_edge.bench import BenchConfig, benchmark, markdown, write_report
    from vae_edge.data import load_slice
    from vae_edge.export.onnx_export import export_bundle
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle
    from vae_edge.runtime import VAERuntime
    from vae_edge.runtime.images import grid, save_gif, save_image

    timings: dict[str, float] = {}  # step -> its duration in seconds
    current: list = []  # [name, start] of the step under way

    def step(name: str, total: int = 5) -> None:
        now = time.perf_counter()
        if current:
            timings[current[0]] = round(now - current[1], 3)
        current[:] = [name, now]
        if name != "done":
            log(f"[{len(timings) + 1}/{total}] {name}")

    step("export encoder and decoder to ONNX, validate against PyTorch")
    bundle = export_bundle(checkpoint, out / "bundle", data_dir=data_dir, log=lambda s: log("      " + s))
    step("quantize: int8 dynamic and int8 static (MNIST calibration)")
    quant = {}
    for mode in ("dynamic", "static"):
        v, entry = quantize_bundle(bundle, QuantizeConfig(mode=mode), data_dir=data_dir)
        a = entry["accuracy"]
        quant[v] = entry
        log(f"      {v}: -ELBO {a['neg_elbo_delta']:+.3f} nats vs fp32, PSNR {a['decoder_psnr_db']:.1f} dB, "
            f"{entry['size_ratio_to_fp32']:.0%} of fp32 size")
    step("demos: samples, reconstructions, interpolation (int8 runtime, no torch)")
    variant = "int8-static" if "int8-static" in quant else "fp32"
    rt = VAERuntime.load(bundle, variant=variant, threads=1)
    y = None
    x, labels = load_slice("mnist:test[0:16]", data_dir)
    if rt.conditional:
        y = labels
    save_image(grid(rt.sample(60 if rt.conditional else 64, seed=0), ncol=10 if rt.conditional else 8),
               out / "samples.png")
    save_image(grid(np.concatenate([x, rt.reconstruct(x, y)]), ncol=16), out / "reconstructions.png")
    save_gif(rt.interpolate(x[0], x[1], steps=12, method="slerp", y=None if y is None else y[:2]), out / "interpolation.gif")
    step("benchmark: every variant against bare onnxruntime and PyTorch eager, 1 thread")
    report = benchmark(bundle, BenchConfig(batch_sizes=tuple(batch_sizes), min_time=min_time, warmup=5),
                       checkpoint=checkpoint, warn=lambda s: log("      " + s))
    paths = write_report(report, out / "bench")
    step("report")
    summary = {
        "checkpoint": str(checkpoint), "bundle": str(bundle), "model": report["model"],
        "quantization": {v: {"accuracy": e["accuracy"], "size_ratio_to_fp32": e["size_ratio_to_fp32"]} for v, e in quant.items()},
        "speedups": report["ratios"], "timings_s": timings,
        "files": {"samples": "samples.png", "reconstructions": "reconstructions.png",
                  "interpolation": "interpolation.gif", **{k: str(p.relative_to(out)) for k, p in paths.items()}},
    }
    from vae_edge.runtime.bundle import load_manifest

    md = _report_md(report, quant, checkpoint, rt.variant, markdown, load_manifest(bundle).get("evaluation"))
    step("done")
    summary["timings_s"] = timings
    write_json_atomic(out / "report.json", summary)
    write_bytes_atomic(out / "report.md", "\n".join(md).encode())
    log(f"report: {out / 'report.md'}")
    return summary


def _report_md(report: dict, quant: dict, checkpoint: Path, demo_variant: str, markdown, ev: dict) -> list[str]:
    """The report: a short summary first (model quality, the fastest variant and its speed-up, the
    pictures with captions), the detail after it."""
    ev = ev or {}
    fastest = max(report["ratios"], key=lambda r: (r["graph"] == "decoder" and r["batch"] == 1, r["speedup_vs_torch"] or 0))
    md = [f"# vae-edge pipeline: {report['model']}", "",
          f"Checkpoint `{checkpoint}`: exported to ONNX (validated against PyTorch), quantized, benchmarked.", "",
          "## Summary", ""]
    if ev.get("neg_elbo") is not None:
        md.append(f"- Model: test -ELBO {ev['neg_elbo']:.2f} nats per image"
                  + (f", IW -log p(x) {ev['iw_nll']:.2f} nats" if ev.get("iw_nll") else "") + ".")
    for v, e in quant.items():
        a = e["accuracy"]
        md.append(f"- {v}: {e['size_ratio_to_fp32']:.0%} of the fp32 size, -ELBO {a['neg_elbo_delta']:+.3f} nats "
                  f"vs fp32 (PSNR {a['decoder_psnr_db']:.0f} dB).")
    md.append(f"- Fastest decoder at batch 1: {fastest['variant']}, {fastest['speedup_vs_torch']:.1f}x PyTorch eager "
              "(one thread; every batch size in the tables below).")
    md += ["", f"| samples ({demo_variant}) | reconstructions: originals above, reconstructions below | "
               "interpolation |", "|---|---|---|",
           "| ![samples](samples.png) | ![reconstructions](reconstructions.png) | ![interpolation](interpolation.gif) |",
           "", "## Detail", "",
           "| variant | -ELBO delta (nats) | decoder PSNR (dB) | size vs fp32 |", "|---|---:|---:|---:|"]
    for v, e in quant.items():
        md.append(f"| {v} | {e['accuracy']['neg_elbo_delta']:+.3f} | {e['accuracy']['decoder_psnr_db']:.1f} | "
                  f"{e['size_ratio_to_fp32']:.0%} |")
    md += ["", "![decoder latency by batch size](bench/latency_decoder.png)", "",
           "Columns below: p50 etc. are per-call latencies in ms; *runtime* rows go through `VAERuntime`, *ort* rows "
           "call the onnxruntime session directly (runtime overhead = runtime / ort), *eager* rows are PyTorch.", "",
           markdown(report, title=False)]
    return md
