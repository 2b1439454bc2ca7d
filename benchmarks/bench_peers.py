"""vae-edge against the runtimes a user would pick instead: ExecuTorch (XNNPACK) and LiteRT, each
converted from the same checkpoint as the shipped bundle, by its own documented recipe, in fp32
and int8 (benchmarks/peers.py). One process, pinned to one core, one thread everywhere; for each
model, graph and batch size the contenders alternate in blocks of calls (vae_edge.bench.run_blocks)
and the median call is reported.

Accuracy, on the same inputs for everyone: fp32 peers against PyTorch (max |diff|, must be
< 1e-4); int8 decoders by PSNR of their probabilities against PyTorch fp32 (5,000 z ~ N(0, I));
-ELBO delta of each contender's encoder + decoder against PyTorch fp32 on the first 4,096 test
digits (binarized with seed 0, the same noise draws for everyone, probabilities clipped to 1e-7).

    pip install 'vae-edge[peers]'
    $(python tools/peers_env.py) benchmarks/bench_peers.py --data-dir ../shared/data/mnist   # the peers' environment

Writes benchmarks/results/peers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

from vae_edge.bench import run_blocks, stats  # noqa: E402
from vae_edge.data import binarize, load_slice  # noqa: E402
from vae_edge.runtime import VAERuntime, shipped_bundles  # noqa: E402
from vae_edge.runtime.bundle import load_manifest  # noqa: E402
from vae_edge.runtime.sysinfo import environment, int8_features_text  # noqa: E402
from vae_edge.train import load_checkpoint, model_from_checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
EVAL_BATCH = 256


def neg_elbo(encode, decode, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """-ELBO per image from probabilities (the same formula for every contender)."""
    out = []
    for i in range(0, len(x), EVAL_BATCH):
        xb, eb = x[i : i + EVAL_BATCH], eps[i : i + EVAL_BATCH]
        mu, logvar = encode(xb)
        z = (mu + np.exp(0.5 * logvar) * eb).astype(np.float32)
        p = np.clip(decode(z).reshape(len(xb), -1).astype(np.float64), 1e-7, 1 - 1e-7)
        t = xb.reshape(len(xb), -1)
        rec = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(1)
        kl = -0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1)
        out.append(rec + kl)
    return np.concatenate(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch-sizes", default="1,8,64,256")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of calls per contender and setting")
    ap.add_argument("--models", default=None, help="comma-separated shipped models (default: all with a checkpoint)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    core = peers.pin_to_one_core()
    torch.set_num_threads(1)
    try:  # ExecuTorch's XNNPACK threadpool: one thread, like everyone else
        from executorch.extension.pybindings import portable_lib
        portable_lib._unsafe_reset_threadpool(1)
    except (ImportError, AttributeError):
        pass
    x_test, _ = load_slice("mnist:test[0:4096]", args.data_dir)
    xb = binarize(x_test, seed=0)
    report = {"environment": environment(), "pinned_core": core, "threads": 1, "batch_sizes": batches, "models": {}}
    wanted = args.models.split(",") if args.models else None
    for name, bundle in shipped_bundles().items():
        ckpt = bundle.parent / "model.pt"
        if (wanted and name not in wanted) or not ckpt.is_file():
            continue
        vae = model_from_checkpoint(load_checkpoint(ckpt)).eval()
        if vae.cfg.conditional:
            continue
        manifest = load_manifest(bundle)
        others = {(t or {}).get("variant") for k, t in (manifest.get("targets") or {}).items() if k not in ("x86", "wasm")}
        variants = [v for v in manifest["variants"] if v not in others]
        d = vae.cfg.latent_dim
        rng = np.random.default_rng(0)
        eps = rng.standard_normal((len(xb), d), dtype=np.float32)
        z_eval = rng.standard_normal((5120, d), dtype=np.float32)
        rts = {v: VAERuntime.load(bundle, variant=v, threads=1, warn=lambda s: None) for v in variants}
        conv_s = {}
        runners: dict[tuple[str, str, int], object] = {}
        for graph in ("encoder", "decoder"):
            mod = peers.wrap(vae, graph)
            for b in sorted(set(batches) | {EVAL_BATCH}):
                ex = peers.example(vae, graph, b)
                n_cal = max(2, min(16, 512 // b))  # calibration batches of the converted batch size
                cal = ([(torch.from_numpy(x_test[i * b : (i + 1) * b]),) for i in range(n_cal)] if graph == "encoder"
                       else [(torch.randn(b, d),) for _ in range(n_cal)])
                for peer, conv, runner in (("ExecuTorch", peers.executorch_program, peers.executorch_runner),
                                           ("LiteRT", peers.litert_model, peers.litert_runner)):
                    for prec in ("fp32", "int8"):
                        t0 = time.perf_counter()
                        if peer == "ExecuTorch":
                            blob = conv(mod, ex, prec == "int8", calibration=cal, dynamic=vae.cfg.arch == "mlp")
                        else:
                            blob = conv(mod, ex, prec == "int8")
                        conv_s[f"{peer} {prec} {graph} b{b}"] = time.perf_counter() - t0
                        runners[(f"{peer} {prec}", graph, b)] = runner(blob)
        contenders = [f"vae-edge {v}" for v in variants] + [f"{p} {q}" for p in ("ExecuTorch", "LiteRT") for q in ("fp32", "int8")]

        def call(c: str, graph: str, b: int, rts=rts, runners=runners):
            if c.startswith("vae-edge"):
                rt = rts[c.split(" ", 1)[1]]
                return (lambda x: rt.encode(x)) if graph == "encoder" else (lambda z: rt.decode(z))
            run = runners[(c, graph, b)]
            return (lambda x: tuple(run(x))) if graph == "encoder" else (lambda z: run(z)[0])

        # accuracy
        acc = {}
        with torch.no_grad():
            t_enc = lambda x, vae=vae: tuple(t.numpy() for t in vae.encode(torch.from_numpy(x)))  # noqa: E731
            t_dec = lambda z, vae=vae: torch.sigmoid(vae.decode(torch.from_numpy(z))).numpy()  # noqa: E731
            ref_elbo = neg_elbo(t_enc, t_dec, xb, eps)
            ref_probs = np.concatenate([t_dec(z_eval[i : i + EVAL_BATCH]) for i in range(0, len(z_eval), EVAL_BATCH)])
            for c in contenders:
                enc, dec = call(c, "encoder", EVAL_BATCH), call(c, "decoder", EVAL_BATCH)
                probs = np.concatenate([dec(z_eval[i : i + EVAL_BATCH]) for i in range(0, len(z_eval), EVAL_BATCH)])
                mu_ref, lv_ref = t_enc(x_test[:EVAL_BATCH])
                mu, lv = enc(x_test[:EVAL_BATCH])
                acc[c] = {"max_abs_diff": float(max(np.abs(probs.reshape(ref_probs.shape) - ref_probs).max(),
                                                    np.abs(mu - mu_ref).max(), np.abs(lv - lv_ref).max())),
                          "decoder_psnr_db": psnr(probs.reshape(ref_probs.shape), ref_probs),
                          "neg_elbo_delta": float(neg_elbo(enc, dec, xb, eps).mean() - ref_elbo.mean())}
        # latency
        rows = []
        for graph in ("encoder", "decoder"):
            for b in batches:
                inp = (rng.random((b, 1, 28, 28), dtype=np.float32) if graph == "encoder"
                       else rng.standard_normal((b, d), dtype=np.float32))
                fns = {c: (lambda f=call(c, graph, b), a=inp: f(a)) for c in contenders}  # noqa: B023
                times = run_blocks(fns, warmup=20, min_time=args.min_time)
                for c, ts in times.items():
                    rows.append({"contender": c, "graph": graph, "batch": b, **stats(ts)})
        report["models"][name] = {"ref_neg_elbo": float(ref_elbo.mean()), "accuracy": acc, "rows": rows,
                                  "conversion_seconds": conv_s, "variants": variants}
        for rt in rts.values():
            rt.close()
        print(f"{name}: done", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "peers.json").write_text(json.dumps(report, indent=1))
    (OUT / "peers.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    env = report["environment"]
    out = [f"One process pinned to core {report['pinned_core']}, one thread for every runtime, {env['cpu']['model']} "
           f"(int8 features: {int8_features_text(env['cpu'])}); "
           f"onnxruntime {env['onnxruntime']}; p50 µs per call, contenders alternating in blocks. "
           "vae-edge rows are `rt.encode` / `rt.decode` (the public API); peers are their bare runner calls.", ""]
    for name, m in report["models"].items():
        out += [f"#### {name}", ""]
        bs = report["batch_sizes"]
        for graph in ("encoder", "decoder"):
            out += [f"**{graph}**", "", "| contender | " + " | ".join(f"b={b} µs" for b in bs) +
                    " | vs LiteRT int8 (b=1 / b=" + str(bs[-1]) + ") | max abs diff vs PyTorch | decoder PSNR dB | −ELBO delta |",
                    "|---|" + "---:|" * len(bs) + "---:|---:|---:|---:|"]
            p50 = {(r["contender"], r["batch"]): r["p50_ms"] * 1e3 for r in m["rows"] if r["graph"] == graph}
            for c in m["accuracy"]:
                a = m["accuracy"][c]
                ratio = " / ".join(f"{p50[(c, b)] / p50[('LiteRT int8', b)]:.2f}x" for b in (bs[0], bs[-1]))
                out.append(f"| {c} | " + " | ".join(f"{p50[(c, b)]:.1f}" for b in bs) + f" | {ratio} | "
                           f"{a['max_abs_diff']:.2e} | {a['decoder_psnr_db']:.1f} | {a['neg_elbo_delta']:+.3f} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
