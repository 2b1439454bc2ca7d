"""The peer runtimes of benchmarks/bench_peers.py still convert and run (so the benchmark cannot
rot): a small trained MLP and conv VAE, each graph to ExecuTorch (XNNPACK) and LiteRT, fp32 and
int8, checked against PyTorch. Marked `peers`; runs in CI in the environment of tools/peers_env.py
and fails, never skips, when it cannot be set up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tools.peers_env import peers_python

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r"""
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import peers
from vae_edge.train import load_checkpoint, model_from_checkpoint
out = {}
for ckpt in sys.argv[2:]:
    vae = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    for graph in ("encoder", "decoder"):
        mod, args = peers.wrap(vae, graph), peers.example(vae, graph, 4)
        with torch.no_grad():
            ref = mod(*args)
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        for name, conv, runner in (("executorch", peers.executorch_program, peers.executorch_runner),
                                   ("litert", peers.litert_model, peers.litert_runner)):
            for int8 in (False, True):
                got = runner(conv(mod, args, int8))(args[0].numpy())
                out[f"{vae.cfg.arch}/{graph}/{name}/{'int8' if int8 else 'fp32'}"] = {
                    "shapes_ok": [g.shape == r.shape for g, r in zip(got, ref)] == [True] * len(ref),
                    "max_abs_diff": float(max(np.abs(g - r).max() for g, r in zip(got, ref))),
                    "ref_range": float(max(np.abs(r).max() for r in ref))}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.peers
@pytest.mark.slow
def test_peers_convert_and_run(ckpts):
    python = peers_python()
    res = subprocess.run([str(python), "-W", "ignore", "-c", SCRIPT, str(ROOT / "benchmarks"),
                          str(ckpts["mlp"]), str(ckpts["conv"])], capture_output=True, text=True, timeout=900)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert res.returncode == 0 and line, res.stderr[-3000:]
    out = json.loads(line[len("RESULT "):])
    assert len(out) == 2 * 2 * 2 * 2  # archs x graphs x peers x precisions
    for key, r in out.items():
        assert r["shapes_ok"], key
        if key.endswith("fp32"):
            assert r["max_abs_diff"] < 1e-4, (key, r)
        else:  # int8: close, and not identical to fp32 (it was quantized)
            assert 0 < r["max_abs_diff"] < 0.2 * max(r["ref_range"], 1.0), (key, r)
