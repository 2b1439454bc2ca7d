"""Measurements the benchmark runs in a fresh child process (`python -m vae_edge.probes ...`), so
that what they see is not the benchmark's own warm state: a variant's cold start, and this
machine's single-core fp32 peak. Each prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cold_start(bundle: str, variant: str, provider: str, threads: int) -> dict:
    """Load time, first call of each graph and the resident memory they add, in this process."""
    import numpy as np
    import onnxruntime  # noqa: F401  imported first: library loading is not the variant's cost

    from vae_edge.runtime import VAERuntime

    before = _rss_mb()
    t0 = time.perf_counter()
    rt = VAERuntime.load(bundle, variant=variant, providers=[provider], threads=threads, warn=lambda s: None)
    created = time.perf_counter() - t0
    y = {"y": np.zeros(1, np.int64)} if rt.conditional else {}
    first = {}
    for g, feeds in (("encoder", {"x": np.zeros((1, *rt.image_shape), np.float32), **y}),
                     ("decoder", {"z": np.zeros((1, *rt.latent_shape), np.float32), **y})):
        t1 = time.perf_counter()
        (rt.encoder if g == "encoder" else rt.decoder).run(None, feeds)
        first[g] = (time.perf_counter() - t1) * 1e3
    return {"session_create_ms": created * 1e3, "first_run_ms": first,
            "cold_start_ms": created * 1e3 + sum(first.values()), "rss_delta_mb": round(_rss_mb() - before, 2)}


def _engines(n: int):
    """n x n x n fp32 matrix products, one thread each: numpy's BLAS, onnxruntime's MLAS (what
    the graphs run on) and torch's, where torch is installed."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    engines = {"numpy": lambda: a @ b}
    try:
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["C"])], "sgemm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], [numpy_helper.from_array(b, "B")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    except ImportError:  # the runtime alone (no onnx): the same graph, serialized by hand is not worth it
        model = None
    if model is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        engines["onnxruntime"] = lambda: sess.run(None, {"A": a})
    try:
        import torch

        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        engines["torch"] = lambda: ta @ tb
    except ImportError:
        pass
    return engines


def peak(sizes: list[int], min_time: float) -> dict:
    """This machine's single-core fp32 peak as measured: the best of repeated n x n x n products
    for each engine and size, the contenders taking turns for about `min_time` seconds each (so
    that they see the same clock speed); the peak is the fastest one's best. Several engines and
    sizes: one alone under-measures where another kernel or blocking is faster on this CPU."""
    contenders = {(name, n): f for n in sizes for name, f in _engines(n).items()}
    for f in contenders.values():
        f(), f()
    best = dict.fromkeys(contenders, float("inf"))
    t_end = time.perf_counter() + min_time * len(contenders)
    rounds = 0
    while time.perf_counter() < t_end or rounds < 3:
        for key, f in contenders.items():
            t0 = time.perf_counter()
            f()
            best[key] = min(best[key], time.perf_counter() - t0)
        rounds += 1
    gflops = {k: 2 * k[1] ** 3 / t / 1e9 for k, t in best.items()}
    top = max(gflops, key=gflops.get)
    return {"n": top[1], "engine": top[0], "best_ms": best[top] * 1e3, "gflops": gflops[top],
            "engines_gflops": {f"{k[0]} n={k[1]}": round(v, 2) for k, v in gflops.items()}}


def main(argv: list[str]) -> None:
    what, args = argv[0], argv[1:]
    if what == "cold":
        out = cold_start(args[0], args[1], args[2], int(args[3]))
    elif what == "peak":
        out = peak([int(n) for n in args[0].split(",")], float(args[1]))
    else:
        raise SystemExit(f"unknown probe {what!r}: cold or peak")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
