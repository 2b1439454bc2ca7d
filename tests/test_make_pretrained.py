"""The shipped models' recipe (vae_edge/pretrained/make_pretrained.py): where each training stage
runs, and that a fine-tuned model's record covers every stage it took."""

from __future__ import annotations

import json
from pathlib import Path

from vae_edge.pretrained import make_pretrained as mp


def test_stage_folders():
    run = Path("runs/m")
    assert mp.stage_folders(run, [["--epochs", "5"]]) == [run]
    assert mp.stage_folders(run, [["--epochs", "5"], ["--resume", "--epochs", "9"]]) == [run, run]
    fine = [["--epochs", "5"], ["--resume", "--epochs", "9"], ["--init-from", mp.PREVIOUS, "--iw-k", "5"]]
    assert mp.stage_folders(run, fine) == [Path("runs/m-stage1"), Path("runs/m-stage1"), run]


def test_training_record_sums_every_stage(tmp_path):
    base, fine = tmp_path / "m-stage1", tmp_path / "m"
    for folder, rows in ((base, [(1, 10.0), (2, 11.0)]), (fine, [(1, 40.0)])):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "seconds": s, "device": "cpu"}) + "\n"
                                                      for e, s in rows))
    rec = mp.training_record([base, base, fine])
    assert rec["train_seconds"] == 61.0 and rec["train_epochs"] == 3
    log = [json.loads(line) for line in mp.training_log([base, fine]).splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [(1, 1), (1, 2), (2, 1)]
    # one stage: the log is the run's own, untagged
    assert mp.training_log([fine]) == (fine / "metrics.jsonl").read_text()
