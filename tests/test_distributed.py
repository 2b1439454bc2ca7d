"""Training under torchrun with DistributedDataParallel: 2 CPU processes (gloo) reach the weights
of one process on the same global batch, write one checkpoint (rank 0), and resume exactly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vae_edge.cli import cli
from vae_edge.train import load_checkpoint

pytestmark = pytest.mark.slow


def _args(data, out, steps: int, *extra: str) -> list[str]:
    return ["train", "--arch", "mlp", "--data", str(data), "--hidden", "32", "--latent-dim", "4", "--batch-size", "32",
            "--epochs", "2", "--max-steps", str(steps), "--binarize", "dynamic", "--quiet", "--out", str(out), *extra]


def _torchrun(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vae_edge", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    x = np.random.default_rng(0).random((200, 1, 28, 28), dtype=np.float32)  # 7 steps an epoch (the last short)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, _args(tmp_path / "x.npy", tmp_path / "one", 10))
    assert r.exit_code == 0, r.output
    res = _torchrun(_args(tmp_path / "x.npy", tmp_path / "two", 10), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = load_checkpoint(tmp_path / "one" / "model.pt"), load_checkpoint(tmp_path / "two" / "model.pt")
    assert (one["step"], one["epoch"], one["step_in_epoch"]) == (two["step"], two["epoch"], two["step_in_epoch"]) == (10, 1, 3)
    for k in one["model"]:
        assert torch.allclose(one["model"][k], two["model"][k], atol=1e-5, rtol=1e-4), k
    moved = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in one["model"])
    # Adam's moments hold the gradients' scale (which its update hides): the global batch's, not a rank's
    for i, st in one["optimizer"]["state"].items():
        other = two["optimizer"]["state"][i]
        for m in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(st[m], other[m], atol=1e-7, rtol=1e-3), (i, m)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metrics.jsonl", "model.pt"]
    # resumed under torchrun from a 2-process checkpoint: still the one-process run
    res = _torchrun(_args(tmp_path / "x.npy", tmp_path / "split", 4), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun(_args(tmp_path / "x.npy", tmp_path / "split", 10, "--resume"), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = load_checkpoint(tmp_path / "split" / "model.pt")
    for k in one["model"]:
        assert torch.allclose(one["model"][k], resumed["model"][k], atol=1e-5, rtol=1e-4), k
    print(f"\n2 processes vs 1 after 10 steps: max |weight difference| {moved:.1e}")
