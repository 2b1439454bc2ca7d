"""Latency benchmarks of bundle variants against bare onnxruntime and PyTorch eager, and `tune`.

Contenders of one setting (graph x batch x threads x provider) run in alternating blocks of calls,
so the machine's drift hits all alike; ratios are taken per pair within one run. numpy and
onnxruntime only, except the optional PyTorch baseline (imported only when asked for).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime import providers as prov
from vae_edge.runtime.bundle import GRAPHS, load_manifest, variant_files
from vae_edge.runtime.files import write_json_atomic
from vae_edge.runtime.manifest import Manifest
from vae_edge.runtime.sysinfo import environment, int8_features_text

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)


def stats(samples_s) -> dict:
    """Latency statistics in milliseconds: mean, std (sample), p50/p90/p95/p99 (linear)."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        raise ValueError("no samples")
    out = {"n": int(a.size), "mean_ms": float(a.mean()), "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0}
    for p in PERCENTILES:
        out[f"p{p}_ms"] = float(np.percentile(a, p))
    return out


def cold_start_fresh(bundle, variant: str, provider: str, threads: int) -> dict:
    """Load time, first calls and resident memory of one variant, measured in a fresh process."""
    import subprocess

    res = subprocess.run([sys.executable, "-m", "vae_edge.probes", "cold", str(bundle), variant, provider, str(threads)],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise VaeEdgeError(f"cold-start measurement of {variant} failed: "
                           f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_blocks(
    contenders: dict[str, Callable[[], object]], warmup: int, min_time: float, block: int = 0, rounds: int = 5
) -> dict[str, list[float]]:
    """Warm each contender up, then run them in alternating blocks of calls until each has had
    min_time of calls; returns the per-call times (seconds) of each."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    # size the block so one round of blocks takes about min_time / rounds per contender
    if not block:
        probe = {}
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            probe[name] = time.perf_counter() - t0
        per_call = max(max(probe.values()), 1e-6)
        block = int(np.clip(min_time / rounds / per_call, 1, 2000))
    times: dict[str, list[float]] = {k: [] for k in contenders}
    spent = dict.fromkeys(contenders, 0.0)
    perf = time.perf_counter
    while min(spent.values()) < min_time or min(len(v) for v in times.values()) < 3:
        for name, fn in contenders.items():
            rec = times[name]
            for _ in range(block):
                t0 = perf()
                fn()
                rec.append(perf() - t0)
            spent[name] += sum(rec[-block:])
    return times


# ---------------------------------------------------------------------------------------------
# FLOPs and the sgemm reference
# ---------------------------------------------------------------------------------------------


def graph_flops(path: str | os.PathLike, batch: int = 1) -> float:
    """Multiply-add FLOPs (2 per MAC) of the Gemm/MatMul/Conv/ConvTranspose nodes per batch."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    shapes = dict(inits)
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = [d.dim_value if d.dim_value else batch for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = tuple(dims)
    total = 0.0
    for n in model.graph.node:
        if n.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            w = shapes.get(n.input[1 if n.op_type != "QLinearMatMul" else 3])
            out = shapes.get(n.output[0])
            if w and out:
                k = w[0] if not (n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)) else w[1]
                total += 2 * np.prod(out) * k
        elif n.op_type in ("Conv", "ConvTranspose"):
            w, out, x = shapes.get(n.input[1]), shapes.get(n.output[0]), shapes.get(n.input[0])
            if w and out and x:
                if n.op_type == "Conv":
                    total += 2 * np.prod(out) * np.prod(w[1:])
                else:
                    total += 2 * np.prod(x) * np.prod(w[1:])
    return float(total)


def measured_peak(sizes: tuple[int, ...] = (256, 512, 1024), min_time: float = 0.3) -> dict:
    """This machine's single-core fp32 peak as measured: the fastest of numpy's BLAS, onnxruntime's
    MLAS and torch's on repeated n x n x n sgemms of a few sizes, in a child process with one
    thread each. The ceiling fp32 GFLOP/s figures are divided by: with
    numpy alone it was under-measured where MLAS is the faster kernel (a graph at "105% of peak")."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "vae_edge.probes", "peak", ",".join(map(str, sizes)), str(min_time)],
                         capture_output=True, text=True, env=env, timeout=300)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {**out, "threads": 1,
            "how": f"fastest of numpy, onnxruntime and torch (where installed) on repeated n x n x n sgemms, "
                   f"n in {', '.join(map(str, sizes))}, one thread: {out['engine']} at n={out['n']}"}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    variants: tuple[str, ...] = ()  # empty: all in the bundle
    graphs: tuple[str, ...] = GRAPHS
    providers: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256, 1024)
    threads: tuple[int, ...] = (1,)
    warmup: int = 10
    min_time: float = 0.3
    baseline_torch: bool = True
    sgemm: bool = True  # measure the machine's fp32 peak in the same run (fp32 efficiency)

    def __post_init__(self) -> None:
        for g in self.graphs:
            if g not in GRAPHS:
                raise VaeEdgeError(f"unknown graph {g!r}: encoder or decoder")
        if not self.batch_sizes or any(b <= 0 for b in self.batch_sizes):
            raise VaeEdgeError("batch sizes must be positive")
        if not self.threads or any(t <= 0 for t in self.threads):
            raise VaeEdgeError("thread counts must be positive")
        if self.min_time <= 0 or self.warmup < 0:
            raise VaeEdgeError("--min-time must be positive and --warmup not negative")
        for p in self.providers:
            if p not in prov.PROVIDERS:
                raise VaeEdgeError(f"unknown provider {p!r}: choose from {', '.join(prov.PROVIDERS)}")


def _inputs(manifest: dict, graph: str, batch: int, rng) -> dict[str, np.ndarray]:
    model = Manifest.from_dict(manifest).model
    feeds = ({"x": rng.random((batch, *model.image_shape), dtype=np.float32)} if graph == "encoder"
             else {"z": rng.standard_normal((batch, *model.latent_shape), dtype=np.float32)})
    if manifest["model"]["conditional"]:
        feeds["y"] = rng.integers(0, 10, batch).astype(np.int64)
    return feeds


def torch_model(checkpoint: str | os.PathLike):
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    return model_from_checkpoint(load_checkpoint(checkpoint))


def find_checkpoint(bundle: Path) -> Path | None:
    for p in (bundle / "model.pt", bundle.parent / "model.pt"):
        if p.is_file():
            return p
    return None


def benchmark(bundle, cfg: BenchConfig, checkpoint=None, progress=None, warn=None, module: str | None = None,
              weights=None, adapter: str | None = None) -> dict:
    """Measure every (variant, graph, provider, threads, batch) of a bundle; returns the report.
    The PyTorch baseline is vae-edge's checkpoint, or the user's own module (module=PATH.py:FACTORY,
    weights, adapter: as `vae-edge export --module` takes them).
    Phases: what to time (_providers, _torch_baseline), for each provider and thread count the
    variants loaded (_load_variants) and each graph and batch timed (_time_setting), then the
    report (_report, with the fp32 efficiency against this machine's peak)."""
    from vae_edge.runtime.vae_runtime import resolve_bundle

    warn = warn or logger.warning
    bundle = resolve_bundle(bundle)
    manifest = load_manifest(bundle)
    variants = list(cfg.variants) or list(manifest.get("variants", {}))
    for v in variants:
        variant_files(manifest, v)  # a clear error for a variant the bundle lacks
    providers = _providers(cfg, warn)
    tmodel, torch_version = _torch_baseline(cfg, bundle, checkpoint, warn, (module, weights, adapter), manifest)
    rng = np.random.default_rng(0)
    rows, cold = [], []
    total = len(providers) * len(cfg.threads) * (len(cfg.graphs) * len(cfg.batch_sizes) + len(variants))
    done = 0
    flops = _FlopCounter(bundle, manifest)
    for p in providers:
        for t in cfg.threads:
            runtimes = {}
            for v, rt, cold_row in _load_variants(bundle, variants, p, t, warn):
                runtimes[v] = rt
                cold.append(cold_row)
                done += 1
                if progress:
                    progress(done, total)
            for g in cfg.graphs:
                for b in cfg.batch_sizes:
                    feeds = _inputs(manifest, g, b, rng)
                    torch_here = tmodel if p == "cpu" else None
                    rows += _time_setting(runtimes, torch_here, cfg, p, t, g, b, feeds, flops)
                    done += 1
                    if progress:
                        progress(done, total)
    return _report(bundle, manifest, cfg, variants, providers, torch_version, rows, cold)


def _providers(cfg: BenchConfig, warn) -> list[str]:
    providers = []
    for p in cfg.providers:
        if prov.PROVIDERS[p][0] in prov.available() or p in prov.available():
            providers.append(p)
        else:
            warn(f"skipping provider {p}: not in this onnxruntime build (install {prov.PROVIDERS[p][1]})")
    if not providers:
        raise VaeEdgeError("none of the providers asked for is available here")
    return providers


def _torch_baseline(cfg: BenchConfig, bundle: Path, checkpoint, warn, user=(None, None, None),
                    manifest: dict | None = None) -> tuple[object, str | None]:
    """(the PyTorch model on the same weights, torch's version), or None where there is none."""
    if not cfg.baseline_torch:
        return None, None
    if user[0] is not None:
        import torch

        from vae_edge.export.adapters import adapt
        from vae_edge.export.byo import TorchBaseline, load_module

        model = adapt(load_module(user[0], user[1]), user[2])
        return TorchBaseline(model, Manifest.from_dict(manifest).model.likelihood).eval(), torch.__version__
    ckpt = Path(checkpoint) if checkpoint else find_checkpoint(bundle)
    try:
        import torch
    except ImportError:
        warn("skipping the PyTorch baseline: torch is not installed")
        return None, None
    if ckpt is None:
        warn("skipping the PyTorch baseline: no checkpoint beside the bundle (pass --checkpoint; a wheel "
             "install leaves the shipped models' out, torch-only)")
        return None, torch.__version__
    return torch_model(ckpt), torch.__version__


def _load_variants(bundle: Path, variants: list[str], provider: str, threads: int, warn):
    """Each variant's runtime, with its cold start and memory measured in a fresh process (in this
    one they would depend on which variant loaded first, and freed pages make later deltas read 0)."""
    from vae_edge.runtime.vae_runtime import VAERuntime

    for v in variants:
        rt = VAERuntime.load(bundle, variant=v, providers=[provider], threads=threads, warn=warn)
        yield v, rt, {"variant": v, "provider": provider, "threads": threads,
                      **cold_start_fresh(bundle, v, provider, threads), "providers_used": rt.providers_used}


class _FlopCounter:
    """A graph's Gemm/MatMul/Conv FLOPs per image, counted once (None on the base install: counting
    reads the graph with onnx)."""

    def __init__(self, bundle: Path, manifest: dict):
        self.bundle, self.manifest, self.cache = bundle, manifest, {}

    def __call__(self, variant: str, graph: str) -> float | None:
        key = (variant, graph)
        if key not in self.cache:
            try:
                self.cache[key] = graph_flops(self.bundle / variant_files(self.manifest, variant)[graph], 1)
            except ImportError:
                self.cache[key] = None
        return self.cache[key]


def _time_setting(runtimes: dict, tmodel, cfg: BenchConfig, p: str, t: int, g: str, b: int, feeds: dict,
                  flops: _FlopCounter) -> list[dict]:
    """One (provider, threads, graph, batch): every variant through the runtime and through the
    fastest bare call from Python (an IOBinding with inputs and outputs bound once: no checks,
    copies or allocations per call; the runtime's overhead is measured against it), and PyTorch
    eager, alternating in blocks. One row per contender."""
    from vae_edge.runtime.calls import bare_call

    contenders: dict[str, Callable[[], object]] = {}
    for v, rt in runtimes.items():
        if g == "decoder":
            contenders[f"{v}/runtime"] = lambda rt=rt, f=feeds: rt.decode(f["z"], f.get("y"))
            contenders[f"{v}/ort"] = bare_call(rt.decoder, ["probs"], feeds)
        else:
            contenders[f"{v}/runtime"] = lambda rt=rt, f=feeds: rt.encode(f["x"], f.get("y"))
            contenders[f"{v}/ort"] = bare_call(rt.encoder, list(rt._enc_out), feeds)
    if tmodel is not None:
        contenders["torch/eager"] = _torch_call(tmodel, g, feeds, t)
    times = run_blocks(contenders, cfg.warmup, cfg.min_time)
    if tmodel is not None:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, ts in times.items():
        v, kind = name.split("/")
        st = stats(ts)
        f = flops(v if v != "torch" else "fp32", g)
        rows.append({"provider": p, "threads": t, "graph": g, "batch": b, "variant": v, "kind": kind, **st,
                     "images_per_s": b / (st["p50_ms"] / 1e3),
                     "gflops": None if f is None else f * b / (st["p50_ms"] / 1e3) / 1e9})
    return rows


def _report(bundle: Path, manifest: dict, cfg: BenchConfig, variants, providers, torch_version, rows, cold) -> dict:
    report = {
        "schema": "vae-edge-bench", "schema_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle), "model": manifest.get("name"), "config": {
            "variants": variants, "graphs": list(cfg.graphs), "providers": providers,
            "batch_sizes": list(cfg.batch_sizes), "threads": list(cfg.threads), "warmup": cfg.warmup,
            "min_time_s": cfg.min_time, "blocks": "contenders alternate in blocks of calls, about 5 rounds",
            "session_options": {"graph_optimization_level": "all", "inter_op_num_threads": 1,
                                "intra_op_num_threads": "= threads"},
        },
        "environment": {**environment(), **({"torch": torch_version} if torch_version else {})},
        "rows": rows, "cold_start": cold,
        "variants": {v: _variant_info(bundle, manifest, v) for v in variants},
        "peak_rss_mb": _peak_rss_mb(),
    }
    report["ratios"] = ratios(rows)
    if cfg.sgemm and "fp32" in variants and 1 in cfg.threads:
        # fp32 efficiency: the graph's GEMM/Conv FLOPs per second (bare calls, one thread) against
        # this machine's measured single-core peak, measured in the same run
        peak = measured_peak()
        report["peak"] = peak
        report["efficiency"] = [
            {"graph": r["graph"], "batch": r["batch"], "gflops": r["gflops"],
             "fraction_of_peak": r["gflops"] / peak["gflops"]}
            for r in rows if "gflops" in peak and r["variant"] == "fp32" and r["kind"] == "ort"
            and r["threads"] == 1 and r["provider"] == "cpu" and r["gflops"] is not None]
    return report


def _peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _variant_info(bundle: Path, manifest: dict, v: str) -> dict:
    entry = manifest["variants"][v]
    size = sum(manifest["files"][f]["size"] for f in entry["files"].values())
    acc = entry.get("accuracy") or {}
    return {"size_bytes": size, "neg_elbo_delta": acc.get("neg_elbo_delta", 0.0 if v == "fp32" else None),
            "decoder_psnr_db": acc.get("decoder_psnr_db"), "within_budget": entry.get("within_budget", True)}


def _torch_call(model, graph: str, feeds: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    args = [torch.from_numpy(feeds["x" if graph == "encoder" else "z"])]
    y = torch.from_numpy(feeds["y"]) if "y" in feeds else None
    fn = model.encode if graph == "encoder" else (
        getattr(model, "probs", None) or (lambda z, y: torch.sigmoid(model.decode(z, y))))

    def call():
        with torch.inference_mode():
            return fn(*args, y)
    return call


def ratios(rows: list[dict]) -> list[dict]:
    """Per setting and variant: speed-up over PyTorch eager and the runtime's overhead over bare
    onnxruntime, both from medians of the same run."""
    out = []
    keyf = lambda r: (r["provider"], r["threads"], r["graph"], r["batch"])  # noqa: E731
    groups: dict = {}
    for r in rows:
        groups.setdefault(keyf(r), {})[(r["variant"], r["kind"])] = r
    for (p, t, g, b), grp in groups.items():
        torch_row = grp.get(("torch", "eager"))
        fp32 = grp.get(("fp32", "ort"))
        for (v, kind), r in grp.items():
            if kind != "runtime":
                continue
            bare = grp.get((v, "ort"))
            out.append({
                "provider": p, "threads": t, "graph": g, "batch": b, "variant": v,
                "p50_ms": r["p50_ms"],
                "speedup_vs_torch": torch_row["p50_ms"] / r["p50_ms"] if torch_row else None,
                "speedup_vs_fp32_onnx": fp32["p50_ms"] / bare["p50_ms"] if fp32 and bare else None,
                "runtime_overhead": r["p50_ms"] / bare["p50_ms"] if bare else None,
            })
    return out


# ---------------------------------------------------------------------------------------------
# Reports: JSON, Markdown, PNG
# ---------------------------------------------------------------------------------------------


def markdown(report: dict, title: bool = True) -> str:
    """The report as Markdown; title=False leaves out its heading (to sit inside another report)."""
    env = report["environment"]
    cpu = env["cpu"]
    lines = [
        *([f"# vae-edge benchmark: {report['model']}", ""] if title else []),
        f"Made {report['created']} on **{cpu['model']}** ({cpu['cores']} cores, {cpu['arch']}; int8 features: "
        f"{int8_features_text(cpu)}), {env['os']}, "
        f"Python {env['python']}, onnxruntime {env['onnxruntime']}, numpy {env['numpy']}"
        + (f", torch {env['torch']}" if env.get("torch") else "") + ".",
        f"Providers asked: {', '.join(report['config']['providers'])}; available: "
        f"{', '.join(env['providers_available'])}. Median (p50) latencies; contenders alternate in blocks "
        f"of calls; warm-up {report['config']['warmup']} calls, at least {report['config']['min_time_s']} s each.",
        "",
        "## Speed-ups (from medians of the same run)",
        "",
        "| graph | batch | threads | variant | p50 ms | vs PyTorch eager | vs fp32 ONNX | runtime overhead |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    fmt = lambda v, s="x": "-" if v is None else f"{v:.2f}{s}"  # noqa: E731
    for r in sorted(report["ratios"], key=lambda r: (r["provider"], r["graph"], r["threads"], r["batch"], r["variant"])):
        lines.append(f"| {r['graph']} | {r['batch']} | {r['threads']} | {r['variant']} | {r['p50_ms']:.4f} | "
                     f"{fmt(r['speedup_vs_torch'])} | {fmt(r['speedup_vs_fp32_onnx'])} | {fmt(r['runtime_overhead'])} |")
    lines += ["", "## Latency", "",
              "| graph | batch | threads | variant | via | mean ms | std ms | p50 ms | p90 ms | p95 ms | p99 ms | images/s | GFLOP/s |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(report["rows"], key=lambda r: (r["provider"], r["graph"], r["threads"], r["batch"], r["variant"], r["kind"])):
        lines.append(f"| {r['graph']} | {r['batch']} | {r['threads']} | {r['variant']} | {r['kind']} | {r['mean_ms']:.4f} | "
                     f"{r['std_ms']:.4f} | {r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['p95_ms']:.4f} | "
                     f"{r['p99_ms']:.4f} | {r['images_per_s']:.0f} | "
                     + ("-" if r["gflops"] is None else f"{r['gflops']:.2f}") + " |")
    lines += ["", "## Variants", "", "| variant | size MB | -ELBO delta (nats) | decoder PSNR dB | cold start ms | session RSS MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for v, info in report["variants"].items():
        c = next((c for c in report["cold_start"] if c["variant"] == v), {})
        lines.append(f"| {v} | {info['size_bytes'] / 1e6:.2f} | {fmt(info['neg_elbo_delta'], '')} | "
                     f"{fmt(info['decoder_psnr_db'], '')} | {c.get('cold_start_ms', 0):.1f} | {c.get('rss_delta_mb', 0):.1f} |")
    if report.get("efficiency"):
        pk = report["peak"]
        lines += ["", f"## fp32 efficiency against this machine's measured peak ({pk['gflops']:.1f} GFLOP/s: {pk['how']})", "",
                  "| graph | batch | fp32 GFLOP/s (bare call) | fraction of peak |", "|---|---:|---:|---:|"]
        for e in report["efficiency"]:
            lines.append(f"| {e['graph']} | {e['batch']} | {e['gflops']:.1f} | {e['fraction_of_peak']:.0%} |")
    lines += ["", f"Peak resident memory of the benchmark process: {report['peak_rss_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def write_report(report: dict, directory: str | os.PathLike) -> dict[str, Path]:
    from vae_edge.runtime.images import atomic_write

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise VaeEdgeError(f"report directory {directory} is a file")
    if not directory.parent.is_dir():
        raise VaeEdgeError(f"the folder of --report {directory} does not exist (only the last level is created)")
    directory.mkdir(exist_ok=True)
    paths = {"json": directory / "bench.json", "markdown": directory / "bench.md"}
    write_json_atomic(paths["json"], report)
    atomic_write(paths["markdown"], lambda tmp: Path(tmp).write_text(markdown(report)))
    from vae_edge.charts import latency_chart, speedup_chart

    for g in report["config"]["graphs"]:
        p = directory / f"latency_{g}.png"
        latency_chart(report, g, p)
        paths[f"latency_{g}"] = p
    if any(r["speedup_vs_torch"] for r in report["ratios"]):
        p = directory / "speedup_vs_torch.png"
        speedup_chart(report, p)
        paths["speedup"] = p
    return paths


# ---------------------------------------------------------------------------------------------
# tune
# ---------------------------------------------------------------------------------------------


TUNING_TARGETS = ("web",)  # tuning records kept beside the CPU's


TUNABLE_PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino", "coreml", "xnnpack", "qnn", "dml", "acl")


def tune(
    bundle,
    max_elbo_delta: float = 0.5,
    batch_size: int = 1,
    threads: tuple[int, ...] | None = None,
    min_time: float = 0.3,
    measure: Callable[[str, str, int], float] | None = None,
    warn=None,
) -> dict:
    """Try variants x available providers x threads at one batch size on the decoder and
    encoder together; keep those within the accuracy budget; record the fastest in the manifest."""
    from vae_edge.runtime.vae_runtime import resolve_bundle

    warn = warn or logger.warning
    if batch_size <= 0:
        raise VaeEdgeError(f"batch size must be positive, got {batch_size}")
    bundle = resolve_bundle(bundle)
    manifest = load_manifest(bundle)
    threads = tuple(threads or sorted({1, os.cpu_count() or 1}))
    candidates_all = _tune_candidates(manifest, max_elbo_delta, threads)
    if measure is None:
        measure = _measured(bundle, manifest, candidates_all, batch_size, min_time, warn)
    table = []
    for v, p, t, delta, ok in candidates_all:
        try:
            ms = measure(v, p, t)
        except _NotLoaded:
            continue  # said when it was loaded
        except VaeEdgeError as e:
            warn(f"skipping {v} on {p}: {e}")
            continue
        table.append({"variant": v, "provider": p, "threads": t, "p50_ms": ms,
                      "neg_elbo_delta": delta, "within_budget": ok})
    candidates = [r for r in table if r["within_budget"]]
    if not candidates:
        raise VaeEdgeError(f"no variant is within {max_elbo_delta} nats of fp32")
    best = min(candidates, key=lambda r: r["p50_ms"])
    record = {
        "choice": {k: best[k] for k in ("variant", "provider", "threads")},
        "batch_size": batch_size, "max_elbo_delta": max_elbo_delta, "table": table,
        "measured": "median latency of encode + decode through VAERuntime (candidates alternating in blocks)",
        "machine": environment()["cpu"]["model"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return save_tuning(bundle, manifest, None, record)


class _NotLoaded(VaeEdgeError):
    """A tuning candidate that could not be loaded (already said)."""


def _tune_candidates(manifest: dict, max_elbo_delta: float, threads: tuple[int, ...]) -> list[tuple]:
    """(variant, provider, threads, -ELBO delta, within budget) for every variant made for this
    machine (never int8-dynamic-arm64 on x86) and every available provider."""
    from vae_edge.runtime.choice import made_for_here
    from vae_edge.runtime.manifest import Manifest

    out = []
    for v, variant in Manifest.from_dict(manifest).variants.items():
        if not made_for_here(variant):
            continue
        delta = variant.neg_elbo_delta
        ok = delta is not None and abs(delta) <= max_elbo_delta
        out += [(v, p, t, delta, ok) for p in prov.available() if p in TUNABLE_PROVIDERS for t in threads]
    return out


def _measured(bundle: Path, manifest: dict, candidates: list[tuple], batch_size: int, min_time: float, warn):
    """Every candidate loaded first, then timed in alternating blocks (run_blocks): a slow spell of
    the machine falls on all of them, not on whichever ran then. Returns measure(v, p, t) -> ms."""
    from vae_edge.runtime.vae_runtime import VAERuntime

    rng = np.random.default_rng(0)
    enc, dec = _inputs(manifest, "encoder", batch_size, rng), _inputs(manifest, "decoder", batch_size, rng)
    calls, runtimes = {}, []
    for v, p, t, _, _ in candidates:
        try:
            rt = VAERuntime.load(bundle, variant=v, providers=[p], threads=t, strict=True, warn=warn)
        except VaeEdgeError as e:
            warn(f"skipping {v} on {p}: {e}")
            continue
        runtimes.append(rt)
        calls[(v, p, t)] = lambda rt=rt: (rt.encode(enc["x"], enc.get("y")), rt.decode(dec["z"], dec.get("y")))
    times = run_blocks({"/".join(map(str, k)): fn for k, fn in calls.items()}, warmup=5, min_time=min_time)
    for rt in runtimes:
        rt.close()
    timed = {k: stats(times["/".join(map(str, k))])["p50_ms"] for k in calls}

    def measure(v: str, p: str, t: int) -> float:
        if (v, p, t) not in timed:
            raise _NotLoaded("could not be loaded")
        return timed[(v, p, t)]

    return measure


def save_tuning(bundle: Path, manifest: dict, target: str | None, record: dict) -> dict:
    """Record a tuning result: the CPU's at the top level (target None), another target's under its
    name (e.g. "web"); what was recorded for the other targets is kept. A shipped bundle (inside the
    installed package) or a signed one is never modified: the record goes to the user cache, keyed
    by the manifest, where `--variant auto` and `vae-edge web` find it."""
    from vae_edge.runtime.bundle import SIGNATURE
    from vae_edge.runtime.files import locked
    from vae_edge.runtime.vae_runtime import is_shipped

    if is_shipped(bundle) or (bundle / SIGNATURE).exists():
        return _save_tuning(bundle, manifest, target, record)
    with locked(bundle, "tune"):  # the manifest is read again under the lock: no update of another is lost
        return _save_tuning(bundle, load_manifest(bundle), target, record)


def _save_tuning(bundle: Path, manifest: dict, target: str | None, record: dict) -> dict:
    from vae_edge.runtime.bundle import SIGNATURE, tuning, user_tuning_file
    from vae_edge.runtime.files import check_cache_path
    from vae_edge.runtime.vae_runtime import is_shipped

    bare = {k: v for k, v in manifest.items() if k != "tuning"}
    old = tuning(manifest)
    if target is None:
        merged = {**record, **{k: v for k, v in old.items() if k in TUNING_TARGETS}}
    else:
        merged = {**old, target: record}
    if is_shipped(bundle) or (bundle / SIGNATURE).exists():
        path = user_tuning_file(bare)
        check_cache_path(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        check_cache_path(path)
        write_json_atomic(path, merged)
    else:
        path = bundle / "manifest.json"
        write_json_atomic(path, {**bare, "tuning": merged})
    return {**record, "saved_to": str(path)}
