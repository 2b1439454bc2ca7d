"""Training recipes as data (vae_edge/recipes/*.toml): read by `vae-edge train --recipe` and by
make_pretrained.py, and true to the shipped models they made."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from vae_edge import recipes
from vae_edge.cli import cli
from vae_edge.cli.train import train as train_command
from vae_edge.pretrained import make_pretrained as mp

TRAIN_OPTIONS = {p.name for p in train_command.params}
MODEL_KEYS = {"arch", "latent_dim", "hidden", "dec_hidden", "depth", "activation", "res_blocks", "conditional", "likelihood",
              "cond_planes"}
TRAIN_KEYS = {"epochs", "lr", "lr_schedule", "kl_warmup", "iw_k", "binarize", "seed", "dataset"}


def test_every_recipe_loads_and_uses_train_options_only():
    assert {"mlp-mnist", "conv-mnist", "conv-cond-mnist"} <= set(recipes.names())
    for name in recipes.names():
        r = recipes.load(name)
        assert r.why and r.stages, name
        for stage in r.stages:
            assert set(stage) <= TRAIN_OPTIONS, (name, set(stage) - TRAIN_OPTIONS)
    assert set(mp.MODELS) == {n for n in recipes.names() if recipes.load(n).shipped} == \
        {"mlp-mnist", "conv-mnist", "conv-cond-mnist", "conv-mnist8", "conv-fashion8"}
    assert mp.MODELS["conv-mnist"][0][1][:2] == ["--init-from", mp.PREVIOUS]


@pytest.mark.parametrize("name", ["mlp-mnist", "conv-mnist", "conv-cond-mnist", "conv-mnist8", "conv-fashion8"])
def test_recipe_is_what_the_shipped_checkpoint_was_trained_with(name):
    """The shipped model.pt records its architecture and its last stage's training options: the
    recipe's last stage says the same (and the first stage the architecture)."""
    ckpt = torch.load(mp.HERE / name / "model.pt", map_location="cpu", weights_only=False)
    r = recipes.load(name)
    for key, value in r.stages[0].items():
        if key in MODEL_KEYS:
            assert ckpt["config"][key] == value, (name, key)
    for key, value in r.stages[-1].items():
        if key in TRAIN_KEYS:
            assert ckpt["train_config"][key] == pytest.approx(value), (name, key)


def test_train_with_a_recipe(tmp_path, mnist_dir):
    """The recipe's options become the defaults; what the command line gives wins."""
    res = CliRunner().invoke(cli, ["train", "--recipe", "mlp-mnist", "--epochs", "1", "--max-steps", "2", "--quiet",
                                   "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=False)
    assert (ckpt["config"]["hidden"], ckpt["config"]["dec_hidden"], ckpt["config"]["latent_dim"]) == (384, 300, 50)
    assert ckpt["train_config"]["iw_k"] == 5 and ckpt["train_config"]["epochs"] == 1


@pytest.mark.parametrize("args, match", [
    (["--recipe", "nope"], "no recipe 'nope'"),
    (["--recipe", "mlp-mnist:2"], "stages 1 to 1"),
    (["--recipe", "conv-mnist:2"], "pass --init-from"),
])
def test_bad_recipe_is_a_usage_error(tmp_path, args, match):
    res = CliRunner().invoke(cli, ["train", *args, "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and match in res.output, res.output
    assert not (tmp_path / "run").exists()
