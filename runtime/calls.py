"""How the runtime calls a graph, at the least cost per call.

Large batches go through onnxruntime's C++ `run` (the Python wrapper's own input checks skipped:
the runtime has checked the inputs already), which hands its output buffers to numpy without a
copy. Small batches, where the fixed cost of a call is most of its time, go through an IOBinding
whose input and output buffers are allocated and bound once per (batch size, inputs, outputs) and
reused (per input shape, for graphs of any image size): each call copies its inputs in, runs, and copies the outputs out (or, with copy=False,
returns the bound buffers themselves, which the next call of that size overwrites). On the shipped
MLP decoder at batch 1 this cut a call from 14.8 to 12.6 us (11.1 us with copy=False)
(benchmarks/bench_levers.py).

Each thread has its own bound buffers, so concurrent calls never share one (and need no lock).
"""

from __future__ import annotations

from threading import get_ident

import numpy as np

SMALL_BATCH = 16  # at most this many rows per call go through the bound buffers
MAX_BINDINGS = 256  # (thread, batch size, inputs, outputs) combinations kept


class GraphCall:
    """call(output_names, feeds, run_options=None, copy=True) -> list of arrays, like
    InferenceSession.run, for feeds the runtime has already checked (C-contiguous, right dtypes)."""

    def __init__(self, sess, small_batch: int = SMALL_BATCH):
        self._sess = sess
        inner = getattr(sess, "_sess", None)
        if inner is not None and callable(getattr(inner, "run", None)):
            self._run = inner.run
        else:  # a session-like object without the C++ handle: the public call
            self._run = lambda names, feeds, opts=None: sess.run(names, feeds, opts)
        self._inner = inner
        try:
            cpu_only = list(sess.get_providers()) == ["CPUExecutionProvider"]
        except AttributeError:
            cpu_only = False
        # Bound CPU buffers suit the CPU provider; other providers copy across devices anyway.
        self._bind = small_batch > 0 and cpu_only and callable(getattr(inner, "run_with_iobinding", None))
        self.small_batch = small_batch
        self._bound: dict[tuple, tuple] = {}
        self._run_options = None

    def __call__(self, names: list[str], feeds: dict[str, np.ndarray], opts=None, copy: bool = True) -> list:
        if opts is None and self._bind:
            n, shape = self.small_batch + 1, ()  # no feeds: the plain run says what is missing
            for value in feeds.values():
                n, shape = len(value), value.shape  # (graphs of any image size: bound per size)
                break
            if n <= self.small_batch:
                # Buffers per thread: no lock, and concurrent calls never share a buffer.
                key = (get_ident(), shape, *names, "|", *feeds)
                bound = self._bound.get(key)
                if bound is None:
                    return self._first_call(key, names, feeds)
                binding, inputs, outputs = bound
                for name, buf in inputs:
                    buf[...] = feeds[name]
                self._inner.run_with_iobinding(binding, self._run_options)
                return [o.copy() for o in outputs] if copy else list(outputs)
        return self._run(names, feeds, opts)

    def plain(self, names: list[str], feeds: dict[str, np.ndarray]) -> list:
        """A call that binds nothing: for one-off calls (the load-time self-check)."""
        return self._run(names, feeds, None)

    def _first_call(self, key: tuple, names: list[str], feeds: dict) -> list:
        """A plain run, which says the output shapes; then the buffers for later calls."""
        outs = self._run(names, feeds, None)
        if len(self._bound) >= MAX_BINDINGS:  # threads come and go: keep the cache bounded
            self._bound.clear()
        self._bound[key] = self._binding(names, feeds, outs)
        return outs

    def _binding(self, names: list[str], feeds: dict, outs: list) -> tuple:
        import onnxruntime as ort

        if self._run_options is None:
            self._run_options = ort.RunOptions()
        inputs = [(name, np.empty(value.shape, value.dtype)) for name, value in feeds.items()]
        binding, outputs = _bind(self._sess, inputs, names, outs)
        return binding, inputs, outputs

def bare_call(sess, names: list[str], feeds: dict[str, np.ndarray]):
    """The fastest call of a graph from Python, the floor the runtime is measured against: an
    IOBinding with these feeds and the output buffers bound once, so a call copies and allocates
    nothing (onnxruntime's C++ run where a binding does not apply). Returns a function of no
    arguments."""
    import onnxruntime as ort

    inner = getattr(sess, "_sess", None)
    if inner is None or not callable(getattr(inner, "run_with_iobinding", None)):
        return lambda: sess.run(names, feeds)
    outs = inner.run(names, feeds, None)
    inputs = [(name, np.ascontiguousarray(value)) for name, value in feeds.items()]
    binding, outputs = _bind(sess, inputs, names, outs)
    keep = (inputs, outputs)  # the bound buffers live as long as the call
    options = ort.RunOptions()

    def call(keep=keep):
        inner.run_with_iobinding(binding, options)
    return call


def _bind(sess, inputs: list[tuple[str, np.ndarray]], names: list[str], outs: list) -> tuple:
    """An IOBinding of `sess` with these input buffers and new output buffers shaped like `outs`;
    returns (binding, output buffers)."""
    import onnxruntime as ort

    binding = sess.io_binding()._iobinding
    for name, buf in inputs:
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(buf)._ortvalue)
    outputs = []
    for name, value in zip(names, outs, strict=True):
        buf = np.empty(value.shape, value.dtype)
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf)._ortvalue)
        outputs.append(buf)
    return binding, outputs
