from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vae_edge.data import write_idx

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("VAE_EDGE_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


# The user's own settings that vae-edge reads: a test sees none of them (a developer with
# VAE_EDGE_DATA or a trusted key set gets the same results as a fresh CI machine).
USER_VARIABLES = ("VAE_EDGE_DATA", "VAE_EDGE_TRUSTED_KEY", "VAE_EDGE_EXPECT")


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_cache(tmp_path_factory):
    """Tests never read or write the developer's user cache (data, tuning choices) nor read their
    vae-edge variables: they see what a fresh CI machine sees. (The emulated ARM64 and peer
    environments keep their own caches under ~/.cache: they are built once, not read as settings.)"""
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", *USER_VARIABLES)}
    for k in USER_VARIABLES:
        os.environ.pop(k, None)
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST is expected in {MNIST} (set VAE_EDGE_TEST_MNIST)")
    return MNIST


def make_idx_dir(directory: Path, n_train: int = 64, n_test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """Tiny MNIST-format files: a bright bar per digit, at a position that encodes the label."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, lab in enumerate(labels):
            images[i, 4 + 2 * lab : 6 + 2 * lab, 4:24] = 255
        write_idx(directory / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{ext}", labels)
    return directory


@pytest.fixture
def tiny_idx(tmp_path: Path) -> Path:
    return make_idx_dir(tmp_path / "tiny")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _train(out: Path, mnist: Path, steps: int = 40, **cfg) -> Path:
    from vae_edge.model import VAEConfig
    from vae_edge.train import TrainConfig, train

    tc_keys = {"binarize", "batch_size", "epochs"}
    tc = TrainConfig(max_steps=steps, batch_size=cfg.pop("batch_size", 128),
                     **{k: cfg.pop(k) for k in list(cfg) if k in tc_keys})
    train(VAEConfig(**cfg), tc, out, data_dir=mnist, progress=False, log=lambda s: None)
    return out / "model.pt"


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    """Small models, trained a few steps on real MNIST (fast, but real weights)."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "mlp": _train(root / "mlp", mnist_dir, hidden=128, latent_dim=8),
        "conv": _train(root / "conv", mnist_dir, arch="conv", channels=(8, 16), latent_dim=8, binarize="dynamic"),
        "mlp-cond": _train(root / "cond", mnist_dir, hidden=128, latent_dim=8, conditional=True),
    }


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, ckpts, mnist_dir) -> dict[str, Path]:
    from vae_edge.export import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    return {name: export_bundle(ck, root / name, data_dir=mnist_dir) for name, ck in ckpts.items()}


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, bundles, mnist_dir) -> Path:
    """A copy of the mlp bundle with every variant."""
    import shutil

    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle

    dest = tmp_path_factory.mktemp("q") / "mlp"
    shutil.copytree(bundles["mlp"], dest)
    for mode in ("dynamic", "static", "fp16"):
        quantize_bundle(dest, QuantizeConfig(mode=mode, calibration_size=128, eval_size=500), data_dir=mnist_dir)
    return dest


@pytest.fixture
def bundle_copy(tmp_path, quantized) -> Path:
    import shutil

    dest = tmp_path / "bundle"
    shutil.copytree(quantized, dest)
    return dest


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two ECDSA P-256 key pairs (vae-edge keygen's): the signer's, and another's."""
    from vae_edge.runtime.trust import keygen

    root = tmp_path_factory.mktemp("keys")
    a_priv, a_pub = keygen(root / "a.priv.pem", root / "a.pub.pem")
    b_priv, b_pub = keygen(root / "b.priv.pem", root / "b.pub.pem")
    assert oct(a_priv.stat().st_mode & 0o777) == "0o600"
    return {"priv": a_priv, "pub": a_pub, "other_priv": b_priv, "other_pub": b_pub}


@pytest.fixture
def signed(tmp_path, quantized, keys) -> Path:
    """A copy of the quantized bundle, signed with keys["priv"]."""
    import shutil

    from vae_edge.runtime.trust import sign_bundle

    b = tmp_path / "signed"
    shutil.copytree(quantized, b)
    sign_bundle(b, keys["priv"])
    return b
