from __future__ import annotations

import json

import pytest
import torch

from vae_edge import VaeEdgeError
from vae_edge.model import VAEConfig
from vae_edge.train import TrainConfig, load_checkpoint, model_from_checkpoint, train


@pytest.mark.slow
def test_smoke_loss_falls_reload_bit_identical(tmp_path, mnist_dir):
    out = tmp_path / "run"
    train(VAEConfig(hidden=200), TrainConfig(max_steps=300), out, data_dir=mnist_dir, progress=False, log=lambda s: None)
    ckpt = load_checkpoint(out / "model.pt")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 300 and rows[-1]["train_loss"] < 200  # ~543 at the start
    m1, m2 = model_from_checkpoint(ckpt), model_from_checkpoint(load_checkpoint(out / "model.pt"))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(m1.encode(x)[0], m2.encode(x)[0]) and torch.equal(m1.decode(m1.encode(x)[0]), m2.decode(m2.encode(x)[0]))


def test_resume_continues_exactly(tmp_path, tiny_idx):
    cfg = VAEConfig(hidden=32, latent_dim=4)
    kw = dict(data_dir=tiny_idx, progress=False, log=lambda s: None)
    train(cfg, TrainConfig(epochs=3, batch_size=16, binarize="dynamic"), tmp_path / "full", **kw)
    train(cfg, TrainConfig(epochs=3, batch_size=16, binarize="dynamic", max_steps=6), tmp_path / "half", **kw)
    assert load_checkpoint(tmp_path / "half")["step"] == 6
    train(cfg, TrainConfig(epochs=3, batch_size=16), tmp_path / "half", resume=True, **kw)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "half")
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_seeded_reproducible(tmp_path, tiny_idx):
    kw = dict(data_dir=tiny_idx, progress=False, log=lambda s: None)
    for name in ("a", "b"):
        train(VAEConfig(hidden=16, latent_dim=2), TrainConfig(epochs=1, batch_size=16), tmp_path / name, **kw)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_existing_run_needs_resume(tmp_path, tiny_idx):
    kw = dict(data_dir=tiny_idx, progress=False, log=lambda s: None)
    train(VAEConfig(hidden=16, latent_dim=2), TrainConfig(max_steps=1), tmp_path, **kw)
    with pytest.raises(VaeEdgeError, match="--resume"):
        train(VAEConfig(hidden=16, latent_dim=2), TrainConfig(max_steps=1), tmp_path, **kw)


def test_kl_warmup_and_cosine(tmp_path, tiny_idx):
    from vae_edge.train import kl_weight

    tc = TrainConfig(epochs=2, batch_size=32, kl_warmup=4, beta=1.0, lr_schedule="cosine")
    assert [kl_weight(tc, e) for e in (0.0, 1.0, 2.0, 4.0, 9.0)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert kl_weight(TrainConfig(), 0.0) == 1.0  # no warm-up: the full weight from the start
    train(VAEConfig(hidden=16, latent_dim=2), tc, tmp_path, data_dir=tiny_idx, progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # logged at each epoch's end: ramping over 4 epochs, 2 trained
    assert [r["kl_weight"] for r in rows] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9) and rows[0]["lr"] > 0


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=-1), dict(lr=0), dict(binarize="static"),
                                 dict(max_steps=0), dict(dataset="cifar")])
def test_bad_train_config(bad):
    with pytest.raises(VaeEdgeError):
        TrainConfig(**bad)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"garbage")
    with pytest.raises(VaeEdgeError, match="not a vae-edge checkpoint"):
        load_checkpoint(p)
    torch.save({"format": "vae-edge-checkpoint", "version": 99}, p)
    with pytest.raises(VaeEdgeError, match="version 99"):
        load_checkpoint(p)
