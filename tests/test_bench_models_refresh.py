"""benchmarks/bench_models.py --refresh-iw: the IW-NLL column follows the estimate files, every
measured column stays as it was."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_models  # noqa: E402
import iw_nll_onnx  # noqa: E402


def _row(variant: str, iw: float | None, images) -> dict:
    return {"model": "m", "variant": variant, "arch": "conv", "conditional": False, "parameters": 500_000,
            "iw_nll": iw, "iw_images": images, "iw_samples": 5000 if iw else None,
            "neg_elbo_binarized": 90.5, "neg_elbo_delta": 0.0, "frechet": 64.75, "conditional_accuracy": None,
            "decoder_ms_b1": 0.2061, "decoder_ms_b256": 51.6, "variant_bytes": 1_000_000,
            "model_folder_bytes": 2_890_000, "train_seconds": 9120, "train_hardware": "2 cores"}


def test_refresh_iw_rewrites_only_the_iw_column(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_models, "OUT", tmp_path)
    monkeypatch.setattr(iw_nll_onnx, "RESULTS", tmp_path)
    old = {"rows": [_row("fp32", 83.23, "2600 of 10000 images, unfinished"), _row("int8-static", None, None)],
           "frechet_floor_train_vs_test": 1.5, "classifier": {"test_accuracy": 0.9931}}
    (tmp_path / "models.json").write_text(json.dumps(old))
    # the fp32 estimate has finished since; the int8 one is part way
    (tmp_path / "iw_nll_m.json").write_text(json.dumps({"model": "m", "iw_nll": 83.4567, "iw_nll_sem": 0.2,
                                                        "images": 10000, "iw_samples": 5000}))
    (tmp_path / "iw_nll_m.int8-static.partial.json").write_text(json.dumps({
        "key": {"model": "m", "variant": "int8-static", "iw_samples": 5000, "images": 10000},
        "scores": [80.0, 82.0, 84.0], "seconds": 3.0}))

    bench_models.refresh_iw("models")
    rows = json.loads((tmp_path / "models.json").read_text())["rows"]
    assert (rows[0]["iw_nll"], rows[0]["iw_images"]) == (83.4567, 10000)
    assert rows[1]["iw_nll"] == pytest.approx(82.0) and rows[1]["iw_images"] == "3 of 10000 images, unfinished"
    for new, was in zip(rows, old["rows"], strict=True):
        assert {k: v for k, v in new.items() if not k.startswith("iw_")} == \
               {k: v for k, v in was.items() if not k.startswith("iw_")}
    md = (tmp_path / "models.md").read_text()
    assert "| 83.46 (10000) |" in md and "| 82.00 (3 of 10000 images, unfinished) |" in md
    assert "0.2061" in md and "64.75" in md and "83.23" not in md


def test_refresh_iw_needs_a_measured_table(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_models, "OUT", tmp_path)
    with pytest.raises(SystemExit, match="without --refresh-iw first"):
        bench_models.refresh_iw("models")
