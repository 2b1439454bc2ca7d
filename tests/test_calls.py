"""The runtime's graph calls (runtime/calls.py): bound buffers for small batches, the C++ run for
large ones, always the same numbers as a plain InferenceSession.run."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from vae_edge.runtime import VAERuntime
from vae_edge.runtime.calls import SMALL_BATCH, GraphCall


def _two_input_session() -> ort.InferenceSession:
    """out = x * float(y)[:, None] + 1: a float input and an int64 one, like a conditional decoder."""
    nodes = [
        helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["yf", "axes"], ["yc"]),
        helper.make_node("Mul", ["x", "yc"], ["m"]),
        helper.make_node("Add", ["m", "one"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("y", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _feeds(rng, n):
    return {"x": rng.standard_normal((n, 4), dtype=np.float32), "y": rng.integers(0, 10, n).astype(np.int64)}


def _expected(f):
    return f["x"] * f["y"][:, None].astype(np.float32) + 1


@pytest.mark.parametrize("n", [1, 2, SMALL_BATCH, SMALL_BATCH + 1, 100])
def test_every_call_computes_its_own_inputs(n):
    call = GraphCall(_two_input_session())
    rng = np.random.default_rng(n)
    first = _feeds(rng, n)
    kept = [call(["out"], first)[0] for _ in range(3)]  # the first binds, the later ones reuse
    second = _feeds(rng, n)
    out2 = call(["out"], second)[0]
    np.testing.assert_allclose(out2, _expected(second), rtol=1e-6)
    for out in kept:  # earlier results are the caller's: the next call did not overwrite them
        np.testing.assert_allclose(out, _expected(first), rtol=1e-6)


def test_copy_false_returns_the_bound_buffer_until_the_next_call():
    call = GraphCall(_two_input_session())
    rng = np.random.default_rng(0)
    a, b = _feeds(rng, 3), _feeds(rng, 3)
    call(["out"], a)  # binds
    ra = call(["out"], a, None, False)[0]
    np.testing.assert_allclose(ra, _expected(a), rtol=1e-6)
    rb = call(["out"], b, None, False)[0]
    assert np.shares_memory(ra, rb)  # the documented trade: one buffer per batch size
    np.testing.assert_allclose(ra, _expected(b), rtol=1e-6)
    big = _feeds(rng, SMALL_BATCH + 1)  # large batches never hand out a shared buffer
    r1, r2 = call(["out"], big, None, False)[0], call(["out"], big, None, False)[0]
    assert not np.shares_memory(r1, r2)


def test_concurrent_calls_stay_correct():
    call = GraphCall(_two_input_session())
    rng = np.random.default_rng(1)
    feeds = [_feeds(rng, 2) for _ in range(8)]
    wrong = []

    def work(i):
        for _ in range(400):
            if not np.allclose(call(["out"], feeds[i])[0], _expected(feeds[i]), rtol=1e-6):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_runtime_small_batches_match_the_plain_run():
    rt = VAERuntime.load("mlp-mnist", variant="int8-dynamic", threads=1)
    rng = np.random.default_rng(2)
    for n in (1, 5, SMALL_BATCH + 3):
        z = rng.standard_normal((n, rt.latent_dim), dtype=np.float32)
        x = rng.random((n, 1, 28, 28), dtype=np.float32)
        for _ in range(2):
            np.testing.assert_array_equal(rt.decode(z), rt.decoder.run(["probs"], {"z": z})[0])
            mu, logvar = rt.encode(x)
            ref_mu, ref_lv = rt.encoder.run(["mu", "logvar"], {"x": x})
            np.testing.assert_array_equal(mu, ref_mu)
            np.testing.assert_array_equal(logvar, ref_lv)
    z1 = rng.standard_normal((1, rt.latent_dim), dtype=np.float32)
    p = rt.decode(z1)
    rt.decode(-z1)
    np.testing.assert_array_equal(p, rt.decoder.run(["probs"], {"z": z1})[0])


@pytest.mark.parametrize("bad", [-0.5, 1.0001, np.nan, np.inf])
def test_fast_image_check_refuses_what_the_exact_one_does(bad):
    rt = VAERuntime.load("mlp-mnist", threads=1)
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 5, 5] = bad
    with pytest.raises(Exception, match="NaN or inf|must lie in"):
        rt.encode(x)
    x[0, 0, 5, 5] = -0.0  # negative zero is in range
    assert rt.encode(x)[0].shape == (1, rt.latent_dim)

