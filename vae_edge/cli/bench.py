"""`vae-edge bench`, `tune` and `pipeline`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vae_edge import VaeEdgeError
from vae_edge.cli.base import (
    _csv,
    json_option,
    positive,
    trust_first,
    trusted_key_option,
    warner,
)


@click.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: mlp-mnist).")
@click.option("--variants", default="all", show_default=True, help="Comma-separated variants, or all.")
@click.option("--graphs", default="encoder,decoder", show_default=True, callback=_csv(str), help="Graphs to time.")
@click.option("--providers", default="cpu", show_default=True, callback=_csv(str), help="Comma-separated execution providers to time (unavailable ones are skipped).")
@click.option("--batch-sizes", default="1,8,64,256,1024", show_default=True, callback=_csv(int),
              help="Comma-separated batch sizes.")
@click.option("--threads", default="1", show_default=True, callback=_csv(int), help="Comma-separated intra-op thread counts.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed calls per contender first.")
@click.option("--min-time", type=float, default=0.3, show_default=True, help="Seconds of calls per contender and setting.")
@click.option("--baseline", type=click.Choice(["torch", "none"]), default="torch", show_default=True, help="torch: also time PyTorch eager on the same checkpoint; none: onnxruntime only.")
@click.option("--checkpoint", type=click.Path(), default=None, help="PyTorch weights for the baseline (default: beside the bundle).")
@click.option("--module", default=None, metavar="PATH.py:FACTORY",
              help="Your own VAE as the PyTorch baseline (as `vae-edge export --module` takes it; the file runs "
                   "as Python code: pass only files you trust).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict for --module (weights_only).")
@click.option("--adapter", type=click.Choice(["diffusers", "attributes"]), default=None, help="Adapter for --module.")
@click.option("--report", "report_dir", type=click.Path(), default=None, help="Write bench.json, bench.md and PNG charts here.")
@click.option("--target", type=click.Choice(["cpu", "web"]), default="cpu", show_default=True,
              help="cpu: this machine's execution providers; web: headless Chromium with onnxruntime-web "
                   "(needs chromium and pip install 'vae-edge[web]'), beside the Python runtime.")
@trusted_key_option
@json_option
def bench(bundle, variants, graphs, providers, batch_sizes, threads, warmup, min_time, baseline, checkpoint,
          module, weights, adapter, report_dir, target, trusted_key, as_json) -> None:
    """Latency of every variant against bare onnxruntime and PyTorch eager, or in the browser.

    \b
    Example: vae-edge bench --batch-sizes 1,1024 --report bench-out
             vae-edge bench --target web --batch-sizes 1,256
             vae-edge bench --bundle bundles/mine --module my_vae.py:make --weights weights.pt
    """
    from vae_edge.bench import BenchConfig, benchmark, markdown, write_report

    if report_dir and Path(report_dir).exists() and not Path(report_dir).is_dir():
        raise VaeEdgeError(f"report directory {report_dir} is a file")
    if report_dir and not Path(report_dir).parent.is_dir():  # before any work
        raise VaeEdgeError(f"the folder of --report {report_dir} does not exist (only the last level is created)")
    trust_first(bundle, trusted_key)
    if target == "web":
        _bench_web(bundle, variants, graphs, batch_sizes, threads, min_time, report_dir, as_json)
        return
    cfg = BenchConfig(variants=() if variants == "all" else tuple(v.strip() for v in variants.split(",")),
                      graphs=graphs, providers=providers, batch_sizes=batch_sizes, threads=threads,
                      warmup=warmup, min_time=min_time, baseline_torch=baseline == "torch")
    with click.progressbar(length=1, label="benchmarking", file=sys.stderr) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)
        report = benchmark(bundle, cfg, checkpoint=checkpoint, progress=progress, warn=warner(), module=module,
                           weights=weights, adapter=adapter)
    if report_dir:
        paths = write_report(report, report_dir)
        click.echo(f"report: {', '.join(str(p) for p in paths.values())}", err=True)
    click.echo(json.dumps(report) if as_json else markdown(report))


def _bench_web(bundle, variants, graphs, batch_sizes, threads, min_time, report_dir, as_json) -> None:
    from vae_edge.runtime.files import write_json_atomic
    from vae_edge.web.browser import bench_web, markdown_web

    with click.progressbar(length=1, label="benchmarking in Chromium", file=sys.stderr) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)
        report = bench_web(bundle, tuple(v.strip() for v in variants.split(",")), tuple(graphs), tuple(batch_sizes),
                           threads=threads[0], min_time=min_time, progress=progress,
                           warn=warner())
    md = markdown_web(report)
    if report_dir:
        out = Path(report_dir)
        out.mkdir(exist_ok=True)
        write_json_atomic(out / "bench_web.json", report)
        (out / "bench_web.md").write_text(md)
        click.echo(f"report: {out / 'bench_web.json'}, {out / 'bench_web.md'}", err=True)
    click.echo(json.dumps(report) if as_json else md)


@click.command()
@click.option("--bundle", default=None, help="Bundle folder or shipped model name (default: mlp-mnist).")
@click.option("--max-elbo-delta", type=float, default=0.5, show_default=True, help="Accuracy budget in nats of test -ELBO.")
@click.option("--batch-size", type=int, default=1, show_default=True, callback=positive("batch size"), help="Images per call to time.")
@click.option("--threads", default=None, callback=_csv(int), help="Thread counts to try (default: 1 and all cores).")
@click.option("--min-time", type=float, default=0.3, show_default=True, help="Seconds of calls per candidate.")
@click.option("--target", type=click.Choice(["cpu", "web"]), default="cpu", show_default=True,
              help="cpu: for `--variant auto` here; web: timed in headless Chromium, for `vae-edge web --variant auto`.")
@trusted_key_option
@json_option
def tune(bundle, max_elbo_delta, batch_size, threads, min_time, target, trusted_key, as_json) -> None:
    """Pick the fastest variant x provider x threads within the accuracy budget; record it.

    \b
    Example: vae-edge tune --bundle bundles/mlp --max-elbo-delta 0.5
             vae-edge sample --bundle bundles/mlp --variant auto -o samples.png
             vae-edge tune --target web && vae-edge web --out site
    """
    from vae_edge.bench import tune as run_tune

    trust_first(bundle, trusted_key)
    warn = warner()
    if target == "web":
        from vae_edge.web.browser import tune_web

        res = tune_web(bundle, max_elbo_delta=max_elbo_delta, batch_size=batch_size, min_time=min_time,
                       warn=warn)
        if as_json:
            click.echo(json.dumps(res))
            return
        w = max([len("variant")] + [len(r["variant"]) for r in res["table"]]) + 2
        click.echo(f"{'variant':<{w}}{'ms enc+dec':>12}{'-ELBO delta':>13}  ok   ({res['browser']})")
        for r in sorted(res["table"], key=lambda r: r["ms_encode_plus_decode"]):
            d = "-" if r["neg_elbo_delta"] is None else f"{r['neg_elbo_delta']:+.3f}"
            click.echo(f"{r['variant']:<{w}}{r['ms_encode_plus_decode']:>12.4f}{d:>13}  "
                       f"{'yes' if r['within_budget'] else 'no'}")
        click.echo(f"chosen for the page: {res['choice']['variant']}; `vae-edge web --variant auto` now uses it "
                   f"(saved to {res['saved_to']})")
        return

    res = run_tune(bundle, max_elbo_delta=max_elbo_delta, batch_size=batch_size, threads=threads,
                   min_time=min_time, warn=warn)
    if as_json:
        click.echo(json.dumps(res))
        return
    w = max([len("variant")] + [len(r["variant"]) for r in res["table"]]) + 2
    click.echo(f"{'variant':<{w}}{'provider':<10}{'threads':>8}{'p50 ms':>10}{'-ELBO delta':>13}  ok")
    for r in sorted(res["table"], key=lambda r: r["p50_ms"]):
        d = "-" if r["neg_elbo_delta"] is None else f"{r['neg_elbo_delta']:+.3f}"
        click.echo(f"{r['variant']:<{w}}{r['provider']:<10}{r['threads']:>8}{r['p50_ms']:>10.4f}{d:>13}  "
                   f"{'yes' if r['within_budget'] else 'no'}")
    c = res["choice"]
    click.echo(f"chosen: {c['variant']} on {c['provider']} with {c['threads']} thread(s); "
               "`--variant auto` now uses it")
