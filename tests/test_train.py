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
                                 dict(max_steps=0), dict(dataset="cifar"), dict(iw_k=-2)])
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


def test_iwae_loss_is_the_importance_weighted_bound():
    """iwae_loss against the bound computed independently (log-densities of model.py) from the
    same draws; k=1 is the sampled ELBO; more samples give a tighter (lower) loss on average."""
    import math

    from vae_edge.model import VAE, log_normal
    from vae_edge.train import iwae_loss

    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden=32, latent_dim=4, depth=2, activation="tanh", dec_hidden=16))
    x = torch.bernoulli(torch.rand(6, 1, 28, 28))
    k = 7
    loss, rec, kl = iwae_loss(model, x, None, k, 1.0, torch.Generator().manual_seed(3))
    mu, logvar = model.encode(x)
    eps = torch.randn((k, *mu.shape), generator=torch.Generator().manual_seed(3))
    z = mu + eps * torch.exp(0.5 * logvar)
    logits = model.decode(z.flatten(0, 1)).view(k, 6, -1)
    log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.flatten(1).expand(k, -1, -1), reduction="none").sum(-1)
    log_w = log_px_z + log_normal(z, torch.zeros(4), torch.zeros(4)) - log_normal(z, mu, logvar)
    want = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert rec.item() == pytest.approx(-log_px_z.mean(0).sum().item(), rel=1e-5)
    with torch.no_grad():
        losses = {kk: sum(iwae_loss(model, x, None, kk, 1.0, torch.Generator().manual_seed(s))[0].item()
                          for s in range(20)) / 20 for kk in (1, 50)}
    assert losses[50] < losses[1] - 1.0  # an untrained model's posterior is poor: a large gap


def test_train_on_the_iwae_bound(tmp_path, tiny_idx):
    cfg = VAEConfig(hidden=32, latent_dim=4, dec_hidden=16, depth=2, activation="tanh")
    train(cfg, TrainConfig(epochs=1, batch_size=16, iw_k=4, binarize="dynamic"), tmp_path, data_dir=tiny_idx,
          progress=False, log=lambda s: None)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["train_config"]["iw_k"] == 4
    assert ckpt["model"]["dec.0.weight"].shape == (16, 4) and ckpt["model"]["enc.0.weight"].shape == (32, 784)
    with pytest.raises(VaeEdgeError, match="iw k"):
        TrainConfig(iw_k=0)


def test_fp16_slim_checkpoint(tmp_path, tiny_idx):
    from vae_edge.train import atomic_torch_save, fp16_weights, slim_checkpoint

    train(VAEConfig(hidden=32, latent_dim=4), TrainConfig(max_steps=2, batch_size=16), tmp_path / "run",
          data_dir=tiny_idx, progress=False, log=lambda s: None)
    full = load_checkpoint(tmp_path / "run" / "model.pt")
    half = slim_checkpoint(full, "float16")
    assert fp16_weights(half) and not fp16_weights(full) and "optimizer" not in half
    atomic_torch_save(half, tmp_path / "half.pt")
    m = model_from_checkpoint(load_checkpoint(tmp_path / "half.pt"))  # computes in fp32
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, full["model"][k].half().float()), k
    # the training checkpoint holds fp32 weights and Adam's two moments: the slim fp16 one a sixth
    assert (tmp_path / "half.pt").stat().st_size < 0.25 * (tmp_path / "run" / "model.pt").stat().st_size
    with pytest.raises(VaeEdgeError, match="float32 or float16"):
        slim_checkpoint(full, "int8")


def test_init_from_starts_at_the_parent_weights(tmp_path, tiny_idx):
    from vae_edge.runtime.files import sha256_file
    from vae_edge.train import slim_checkpoint

    kw = dict(data_dir=tiny_idx, progress=False, log=lambda s: None)
    train(VAEConfig(hidden=16, latent_dim=3), TrainConfig(epochs=1, batch_size=16), tmp_path / "parent", **kw)
    parent = load_checkpoint(tmp_path / "parent")
    torch.save(slim_checkpoint(parent, "float16"), tmp_path / "slim.pt")  # what ships: fp16, no optimizer
    for src in (tmp_path / "parent", tmp_path / "slim.pt"):
        out = tmp_path / f"ft-{src.stem}"
        # the architecture options passed are not the parent's: the parent's win
        train(VAEConfig(hidden=99, latent_dim=7), TrainConfig(batch_size=16, lr=1e-12, max_steps=1, iw_k=3), out,
              init_from=src, **kw)
        ft = load_checkpoint(out)
        assert ft["config"]["hidden"] == 16 and ft["config"]["latent_dim"] == 3
        assert ft["step"] == 1  # a fresh optimizer and schedule, not the parent's step count
        origin = ft["train_config"]["extra"]["init_from"]
        assert origin["step"] == parent["step"] and origin["sha256"] == sha256_file(src if src.is_file() else src / "model.pt")
        for k, v in parent["model"].items():  # lr 1e-12: still the parent's weights (fp16-rounded for the slim one)
            assert torch.allclose(ft["model"][k], v.float(), atol=2e-3 if src.suffix else 1e-6), k
    # without init_from the same settings start elsewhere (the check above can tell the two apart)
    train(VAEConfig(hidden=16, latent_dim=3), TrainConfig(batch_size=16, lr=1e-12, max_steps=1, seed=5), tmp_path / "fresh", **kw)
    assert not torch.allclose(load_checkpoint(tmp_path / "fresh")["model"]["enc.0.weight"], parent["model"]["enc.0.weight"], atol=1e-2)
