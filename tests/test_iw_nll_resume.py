"""benchmarks/iw_nll_onnx.py: an estimate stopped with --max-minutes resumes to the same scores,
and a partial file of other graphs is refused rather than mixed in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import iw_nll_onnx  # noqa: E402


def _run(monkeypatch, results: Path, *args: str) -> int:
    monkeypatch.setattr(iw_nll_onnx, "RESULTS", results)
    monkeypatch.setattr(sys, "argv", ["iw_nll_onnx.py", *args])
    try:
        iw_nll_onnx.main()
    except SystemExit as e:
        return int(e.code)
    return 0


def test_stopped_estimate_resumes_to_the_uninterrupted_scores(monkeypatch, tmp_path, quantized, mnist_dir):
    common = ["--model", str(quantized), "--iw-samples", "16", "--limit", "250", "--threads", "1",
              "--data-dir", str(mnist_dir)]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _run(monkeypatch, whole, *common, "--name", "m") == 0
    ref = json.loads((whole / "iw_nll_m.json").read_text())
    assert ref["images"] == 250 and not (whole / "iw_nll_m.partial.json").exists()

    # --max-minutes 0: one chunk of 100 images per run, then exit 3 with the scores kept
    for n_done in (100, 200):
        assert _run(monkeypatch, parts, *common, "--name", "m", "--max-minutes", "0") == 3
        saved = json.loads((parts / "iw_nll_m.partial.json").read_text())
        assert len(saved["scores"]) == n_done and not (parts / "iw_nll_m.json").exists()
        running = iw_nll_onnx.load_result("m")  # what the tables show meanwhile
        assert running["images"] == f"{n_done} of 250 images, unfinished"
        assert running["iw_nll"] == pytest.approx(np.mean(saved["scores"]))
    assert _run(monkeypatch, parts, *common, "--name", "m") == 0
    got = json.loads((parts / "iw_nll_m.json").read_text())
    assert got["images"] == 250 and not (parts / "iw_nll_m.partial.json").exists()
    assert iw_nll_onnx.load_result("m")["images"] == 250
    assert got["iw_nll"] == pytest.approx(ref["iw_nll"], abs=1e-3)  # scores are kept to 4 decimals
    assert got["graphs"] == ref["graphs"] and set(got["graphs"]) == {"decoder", "encoder"}


def test_partial_scores_of_other_graphs_are_refused(monkeypatch, tmp_path, quantized, mnist_dir, capsys):
    common = ["--model", str(quantized), "--iw-samples", "8", "--limit", "200", "--threads", "1",
              "--data-dir", str(mnist_dir), "--name", "m"]
    assert _run(monkeypatch, tmp_path, *common, "--max-minutes", "0") == 3
    # the same estimate through another variant's graphs (same K, same images) must not continue it
    partial = tmp_path / "iw_nll_m.partial.json"
    saved = json.loads(partial.read_text())
    saved["key"]["graphs"]["decoder"] = "0" * 64
    partial.write_text(json.dumps(saved))
    from vae_edge import VaeEdgeError

    with pytest.raises(VaeEdgeError, match="another estimate"):
        _run(monkeypatch, tmp_path, *common)
    assert np.asarray(json.loads(partial.read_text())["scores"]).shape == (100,)  # left as it was


def test_conditional_model_is_scored_given_the_true_digit(monkeypatch, tmp_path, bundles, mnist_dir):
    from vae_edge.data import binarize, load_split, to_float
    from vae_edge.runtime import VAERuntime

    assert _run(monkeypatch, tmp_path, "--model", str(bundles["mlp-cond"]), "--iw-samples", "16", "--limit", "120",
                "--threads", "1", "--data-dir", str(mnist_dir), "--name", "c") == 0
    got = json.loads((tmp_path / "iw_nll_c.json").read_text())
    assert got["given"] == "label" and got["images"] == 120
    images, labels = load_split(mnist_dir, "test")
    x, y = binarize(to_float(images), seed=0)[:120], labels[:120].astype(np.int64)
    with VAERuntime.load(bundles["mlp-cond"], threads=1) as rt:
        # the same chunks and seeds as the script: 100 images from seed 0, then 20 from seed 100
        true = np.concatenate([rt.score(x[:100], y[:100], iw_samples=16, seed=0),
                               rt.score(x[100:], y[100:], iw_samples=16, seed=100)])
        wrong = np.concatenate([rt.score(x[:100], (y[:100] + 1) % 10, iw_samples=16, seed=0),
                                rt.score(x[100:], (y[100:] + 1) % 10, iw_samples=16, seed=100)])
    assert got["iw_nll"] == pytest.approx(true.mean(), abs=1e-3)
    assert abs(got["iw_nll"] - wrong.mean()) > 1e-2  # the digit is an input: another one scores otherwise
