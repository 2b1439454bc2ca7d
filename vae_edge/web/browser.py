"""Driving the site in a real headless Chromium (Playwright): the browser tests and
`vae-edge bench --target web` / `vae-edge tune --target web`. Needs the `[web]` extra (playwright)
and a Chromium (Debian's `chromium`, or $VAE_EDGE_CHROMIUM); no browser is downloaded."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vae_edge import VaeEdgeError, install_hint


def chromium_path() -> str:
    """$VAE_EDGE_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    given = os.environ.get("VAE_EDGE_CHROMIUM")
    if given:
        if not Path(given).is_file():
            raise VaeEdgeError(f"$VAE_EDGE_CHROMIUM={given} does not exist")
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise VaeEdgeError("no Chromium found: apt-get install chromium (or set $VAE_EDGE_CHROMIUM to a Chrome/Chromium binary)")


def _playwright():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise VaeEdgeError(f"the browser tools need playwright: {install_hint('playwright')}") from None
    return Error, sync_playwright


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Playwright's Browser); one per thread at a time."""
    error, sync_playwright = _playwright()
    exe = chromium_path()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except error as e:
            raise VaeEdgeError(f"Chromium ({exe}) did not start: {str(e).splitlines()[0]}") from None
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(url: str, browser=None, viewport: tuple[int, int] = (1100, 900),
              timeout_s: float = 60) -> Iterator[tuple[object, list[str]]]:
    """(page, console_errors) for a served site, once its models are loaded (window.vaeEdge.ready).
    A page that reports an error while starting raises VaeEdgeError with the page's message."""
    error, _ = _playwright()
    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(chromium())
        errors: list[str] = []
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        stack.callback(page.close)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        try:
            page.wait_for_function("window.vaeEdge && (window.vaeEdge.ready || window.vaeEdge.errors.length > 0)",
                                   timeout=timeout_s * 1000)
        except error:
            raise VaeEdgeError(f"the page at {url} did not load its models within {timeout_s:.0f} s") from None
        page_errors = page.evaluate("window.vaeEdge.errors")
        if page_errors:
            raise VaeEdgeError(f"the page reported: {page_errors[0]}")
        yield page, errors


# ---------------------------------------------------------------------------------------------
# Timing in the browser: `vae-edge bench --target web`, `vae-edge tune --target web`
# ---------------------------------------------------------------------------------------------

def _time_in_blocks(page, runtimes: dict, chosen, graph: str, batch: int, x, z, min_time: float,
                    rounds: int) -> list[dict]:
    """One graph and batch size: each variant on the page and through the Python runtime, in
    `rounds` alternating blocks of calls sized to min_time / rounds each; one row per contender."""
    import time

    import numpy as np

    def web_block(v, calls):
        return page.evaluate("(o) => window.vaeEdge.bench(o)",
                             {"variant": v, "graph": graph, "batch": batch, "calls": calls})

    def native_block(v, calls):
        rt = runtimes[v]
        fn = (lambda: rt.encode(x)) if graph == "encoder" else (lambda: rt.decode(z))
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls * 1e3

    contenders = {("web", v): web_block for v in chosen}
    contenders.update({("python", v): native_block for v in runtimes})
    calls = {}
    for key, fn in contenders.items():  # warm up, then size blocks to min_time / rounds
        fn(key[1], 5)
        per = max(fn(key[1], 5), 1e-3)
        calls[key] = max(3, int(min_time / rounds * 1e3 / per))
    blocks = {key: [] for key in contenders}
    for _ in range(rounds):
        for key, fn in contenders.items():
            blocks[key].append(fn(key[1], calls[key]))
    return [{"runtime": "onnxruntime-web (wasm)" if where == "web" else "onnxruntime (python)",
             "where": where, "variant": v, "graph": graph, "batch": batch,
             "ms_per_call": float(np.median(ms)), "ms_min": float(np.min(ms)),
             "blocks": len(ms), "calls_per_block": calls[(where, v)]} for (where, v), ms in blocks.items()]


def bench_web(
    bundle=None,
    variants: tuple[str, ...] = ("all",),
    graphs: tuple[str, ...] = ("encoder", "decoder"),
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256),
    threads: int = 1,
    min_time: float = 0.5,
    rounds: int = 5,
    native: bool = True,
    progress=None,
    warn=lambda s: None,
    browser=None,
) -> dict:
    """Per-call latency of every variant in headless Chromium (onnxruntime-web, wasm), and of the
    same graphs through the Python runtime on this CPU, in one run: for each graph and batch size
    the contenders alternate in `rounds` blocks of calls (the page's timer is coarse, so blocks
    are timed, not single calls); the median block is reported. browser: a Playwright Browser to
    use (one per thread at a time: pass the one already open there), else one is started."""
    import tempfile

    import numpy as np

    from vae_edge.runtime.sysinfo import environment
    from vae_edge.runtime.vae_runtime import VAERuntime, resolve_bundle
    from vae_edge.web import ORT_WEB_VERSION, build_site, serving

    path = resolve_bundle(bundle)
    with tempfile.TemporaryDirectory(prefix="vae-edge-web-bench-") as tmp:
        site = build_site(path, tuple(variants), Path(tmp) / "site", log=warn, with_score_range=False)
        chosen = site["variants"]
        with serving(Path(tmp) / "site") as url, open_page(f"{url}?threads={threads}", browser) as (page, errors):
            version = page.context.browser.version  # open_page starts a browser when given none
            isolated = page.evaluate("window.vaeEdge.isolated()")
            runtimes = {v: VAERuntime.load(path, variant=v, threads=threads, warn=warn) for v in chosen} if native else {}
            rng = np.random.default_rng(7)
            d = runtimes[chosen[0]].latent_dim if runtimes else page.evaluate("window.vaeEdge.config().model.latent_dim")
            rows, todo, done = [], len(graphs) * len(batch_sizes), 0
            for graph in graphs:
                for batch in batch_sizes:
                    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
                    z = rng.standard_normal((batch, d), dtype=np.float32)
                    rows += _time_in_blocks(page, runtimes, chosen, graph, batch, x, z, min_time, rounds)
                    done += 1
                    if progress:
                        progress(done, todo)
            for rt in runtimes.values():
                rt.close()
            if errors:
                warn(f"note: the page logged errors while timing: {errors[0]}")
    env = environment()
    return {"bundle": str(path), "variants": chosen, "threads": threads, "rounds": rounds, "min_time": min_time,
            "browser": f"Chromium {version} (headless)", "onnxruntime_web": ORT_WEB_VERSION,
            "cross_origin_isolated": isolated, "environment": env, "rows": rows}


def markdown_web(report: dict) -> str:
    """One table per graph: ms per call in the browser and natively, per variant and batch size."""
    rows = report["rows"]
    out = [f"{report['browser']}, onnxruntime-web {report['onnxruntime_web']} (wasm, {report['threads']} thread(s), "
           f"cross-origin isolated: {'yes' if report['cross_origin_isolated'] else 'no'}) vs the Python runtime "
           f"(onnxruntime {report['environment'].get('onnxruntime', '?')}, {report['threads']} thread(s)) on "
           f"{report['environment']['cpu']['model']}; median of {report['rounds']} alternating blocks.", ""]
    native = any(r["where"] == "python" for r in rows)
    for graph in dict.fromkeys(r["graph"] for r in rows):
        out += [f"**{graph}** (ms per call)", "",
                "| variant | batch | browser | " + ("Python (native) | browser / native |" if native else ""),
                "|---|---:|---:|" + ("---:|---:|" if native else "")]
        for v in report["variants"]:
            for b in dict.fromkeys(r["batch"] for r in rows):
                web = [r for r in rows if r["where"] == "web" and r["variant"] == v and r["graph"] == graph and r["batch"] == b]
                nat = [r for r in rows if r["where"] == "python" and r["variant"] == v and r["graph"] == graph and r["batch"] == b]
                if not web:
                    continue
                line = f"| {v} | {b} | {web[0]['ms_per_call']:.4f} |"
                if native and nat:
                    line += f" {nat[0]['ms_per_call']:.4f} | {web[0]['ms_per_call'] / nat[0]['ms_per_call']:.2f}x |"
                out.append(line)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def tune_web(bundle=None, max_elbo_delta: float = 0.5, batch_size: int = 1, min_time: float = 0.5,
             warn=lambda s: None, browser=None) -> dict:
    """Time every browser-eligible variant in Chromium (encoder + decoder at one batch size), keep
    those within the accuracy budget, and record the fastest as the page's `--variant auto`."""
    from vae_edge.bench import save_tuning
    from vae_edge.runtime.bundle import load_manifest
    from vae_edge.runtime.vae_runtime import resolve_bundle

    path = resolve_bundle(bundle)
    report = bench_web(path, ("all",), batch_sizes=(batch_size,), min_time=min_time, native=False, warn=warn,
                       browser=browser)
    manifest = load_manifest(path)
    table = []
    for v in report["variants"]:
        ms = sum(r["ms_per_call"] for r in report["rows"] if r["variant"] == v)
        delta = 0.0 if v == "fp32" else ((manifest["variants"][v].get("accuracy") or {}).get("neg_elbo_delta"))
        table.append({"variant": v, "ms_encode_plus_decode": ms, "neg_elbo_delta": delta,
                      "within_budget": delta is not None and abs(delta) <= max_elbo_delta})
    ok = [r for r in table if r["within_budget"]]
    if not ok:
        raise VaeEdgeError(f"no variant is within {max_elbo_delta} nats of fp32")
    best = min(ok, key=lambda r: r["ms_encode_plus_decode"])
    record = {"choice": {"variant": best["variant"]}, "batch_size": batch_size, "max_elbo_delta": max_elbo_delta,
              "table": table, "browser": report["browser"], "onnxruntime_web": report["onnxruntime_web"],
              "measured": "median ms of encode + decode per call in headless Chromium (wasm, 1 thread)"}
    return save_tuning(path, manifest, "web", record)
