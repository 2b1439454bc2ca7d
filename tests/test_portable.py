"""The portable (integer) networks (issue 32): a bundle of an unconditional MLP or conv model with
a Bernoulli or 8-bit likelihood carries one (export/portable.py); the compressor runs it instead of
the float graphs, so a file made on any device decompresses exactly on every other: this x86, an
AVX2-only x86 (qemu-x86_64 -cpu EPYC-Rome), emulated ARM64 (neoverse-n1 and max)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import _train

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ar8(tmp_path_factory, mnist_dir):
    """A logistic-ar conv model with a residual block (a few steps: exactness does not need a good model)."""
    root = tmp_path_factory.mktemp("portable")
    ckpt = _train(root / "run", mnist_dir, steps=20, arch="conv", channels=(8, 16), latent_dim=8, res_blocks=1,
                  likelihood="logistic-ar")
    r = CliRunner().invoke(cli, ["export", str(ckpt), "--out", str(root / "b"), "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0 and "portable network" in r.output, r.output
    return root, ckpt


def _eight_bit(mnist_dir, n: int) -> np.ndarray:
    from vae_edge.data import load_slice

    x, _ = load_slice(f"mnist:test[0:{n}]", mnist_dir)
    return (np.rint(x * 255) / 255.0).astype(np.float32)  # k/255 as the coder gives it back


def test_the_portable_network_is_integer_and_close_to_the_model(ar8, mnist_dir):
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    root, ckpt = ar8
    manifest = json.loads((root / "b" / "manifest.json").read_text())
    entry = manifest["portable"]
    assert entry["file"] in manifest["files"] and max(entry["max_abs_diff"].values()) < 0.05
    with np.load(root / "b" / entry["file"]) as z:
        ws = [z[k] for k in z.files if k.endswith(".w")]
    assert ws and all(w.dtype == np.int16 for w in ws)
    rt = VAERuntime.load(root / "b", warn=lambda s: None)
    net = rt.portable
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    x = _eight_bit(mnist_dir, 16)
    mu, logvar = net.encode(x)
    with torch.no_grad():
        tmu, tlogvar = model.encode(torch.from_numpy(x))
    assert np.abs(mu - tmu.numpy()).max() < 0.05 and np.abs(logvar - tlogvar.numpy()).max() < 0.05
    # the outputs are exact binary fractions of integers: the same however the sums are ordered
    dec = net.decode(mu)
    assert set(dec) == {"probs", "log_scale", "context"} and dec["probs"].dtype == np.float64
    # a tampered file is refused when first read
    data = (root / "b" / entry["file"]).read_bytes()
    bad = root / "tampered"
    shutil.copytree(root / "b", bad)
    (bad / entry["file"]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(VaeEdgeError, match="sha256"):
        _ = VAERuntime.load(bad, warn=lambda s: None).portable


def test_files_are_coded_by_the_portable_network_and_round_trip(ar8, mnist_dir):
    from vae_edge.runtime import compress as C

    root, _ = ar8
    rt = VAERuntime.load(root / "b", warn=lambda s: None)
    x = _eight_bit(mnist_dir, 30)
    data = C.compress(rt, x)
    assert C.read_header(data)[0]["variant"] == "portable"
    assert np.array_equal(C.decompress(rt, data), x)
    # any variant of the bundle reads it (the portable network does the work)
    r = CliRunner().invoke(cli, ["quantize", str(root / "b"), "--mode", "dynamic", "--data-dir", str(mnist_dir)])
    assert r.exit_code == 0, r.output
    rt8 = VAERuntime.load(root / "b", variant="int8-dynamic", warn=lambda s: None)
    assert rt8.portable is not None and np.array_equal(C.decompress(rt8, data), x)
    # the rate is the float graphs' (the integer network's outputs are within 0.05 of them)
    elbo = float(np.mean(rt.bits_per_dim_8bit(rt.score(x, elbo_samples=32))))
    assert abs(8 * len(data) / x.size - elbo) < 0.3 * elbo


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_binary_mlps_of_either_activation_have_portable_networks(tmp_path, mnist_dir, activation):
    """ReLU MLPs requantize their integer sums; tanh ones (the shipped mlp-mnist's) take det_tanh
    of the exact sums, in units of 2^-15: close to torch, and files round trip at the model's rate."""
    from vae_edge.data import binarize
    from vae_edge.export import export_bundle
    from vae_edge.runtime import compress as C
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    ckpt = _train(tmp_path / "run", mnist_dir, steps=30, arch="mlp", hidden=64, depth=2, latent_dim=8,
                  activation=activation)
    bundle = export_bundle(ckpt, tmp_path / "b", data_dir=mnist_dir, log=lambda s: None)
    rt = VAERuntime.load(bundle, warn=lambda s: None)
    assert rt.portable is not None
    x = binarize(_eight_bit(mnist_dir, 40), 0)
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    with torch.no_grad():
        tmu, _ = model.encode(torch.from_numpy(x))
        tlogits = model.decode(tmu)
    mu, _ = rt.portable.encode(x)
    assert np.abs(mu - tmu.numpy()).max() < 0.05
    logits = rt.portable.decode(tmu.numpy())["logits"].reshape(tlogits.shape)
    assert np.abs(logits - tlogits.numpy()).max() < 0.1
    data = C.compress(rt, x)
    assert C.read_header(data)[0]["variant"] == "portable" and np.array_equal(C.decompress(rt, data), x)
    floats = C.compress(rt, x, portable=False)
    assert abs(len(data) - len(floats)) < 0.05 * len(floats)  # about the same rate (40 images: start-up noise)


def test_an_oversized_layer_is_refused(monkeypatch):
    import vae_edge.export.portable as P
    from vae_edge.model import VAE, VAEConfig

    model = VAE(VAEConfig(arch="mlp", hidden=16, latent_dim=4, likelihood="bernoulli"))
    monkeypatch.setattr(P, "EXACT", 1000.0)
    with pytest.raises(VaeEdgeError, match="past 2\\^53"):
        P.build(model, n=8)
    assert P.eligible(VAE(VAEConfig(arch="mlp", activation="tanh"))) is None  # tanh MLPs have one (mlp-mnist)
    assert P.eligible(VAE(VAEConfig(arch="mlp", conditional=True))) == "a conditional model"
    assert P.eligible(VAE(VAEConfig(arch="mlp", likelihood="gaussian", sigma=0.1))) is not None


# -- across devices ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.arm64
def test_portable_files_open_on_every_device(tmp_path, mnist_dir):
    """Files of every shipped compression model (conv-mnist8 and conv-fashion8 for 8-bit images,
    mlp-mnist and conv-mnist for binary ones) made on this x86 decompress exactly on an AVX2-only x86 and on
    emulated ARM64 (neoverse-n1, max), and files made there exactly here: every pair of devices."""
    from tools import arm64_env
    from vae_edge.data import binarize

    try:
        env = arm64_env.ensure()
    except arm64_env.SetupError as e:
        pytest.fail(f"the emulated ARM64 environment could not be set up: {e}")
    stage = arm64_env.stage_project(tmp_path / "stage")
    d = tmp_path / "files"
    d.mkdir()
    shutil.copy(HERE / "compress_probe.py", d / "compress_probe.py")
    np.save(d / "x8.npy", _eight_bit(mnist_dir, 1))  # one image: the emulated coder is slow
    np.save(d / "xb.npy", binarize(_eight_bit(mnist_dir, 1), 0))
    shipped = {name: stage / "vae_edge" / "pretrained" / name / "bundle"  # as the staged package ships them
               for name in ("conv-mnist8", "conv-fashion8", "mlp-mnist", "conv-mnist")}
    assert all("portable" in json.loads((b / "manifest.json").read_text()) for b in shipped.values())
    (d / "pairs.json").write_text(json.dumps([[str(b), "fp32", "x8.npy" if name.endswith("8") else "xb.npy"]
                                              for name, b in shipped.items()]))
    devices = {"x86": None, "avx2": "EPYC-Rome", "n1": "neoverse-n1", "max": "max"}
    order, results = list(devices), {}
    # each device writes its files, reads them back, and reads those of the devices before it; then
    # the devices but the last read those of the devices after them: every ordered pair once
    runs = [(dev, order[:i]) for i, dev in enumerate(order)] + [(dev, order[i + 1:]) for i, dev in enumerate(order[:-1])]
    for dev, others in runs:
        for pair, row in _probe(env, stage, d, dev, others, devices[dev]).items():
            assert row["own"] == "exact", (dev, pair, row)
            results.update({(pair, made, dev): got for made, got in row.get("others", {}).items()})
    bad = {k: v for k, v in results.items() if v != "exact"}
    assert len(results) == 4 * 4 * 3 and not bad, bad
    print(f"\nportable files: {len(results)} (model, made on, read on) pairs of devices, all exact")


def _probe(env, stage: Path, d: Path, tag: str, others: list[str], cpu: str | None) -> dict:
    args = [str(d / "compress_probe.py"), str(d), tag, *others]
    if tag in ("n1", "max"):
        res = env.run(args, cpu, stage)
    else:
        cmd = [sys.executable, *args]
        if cpu:
            qemu = shutil.which("qemu-x86_64-static")
            if qemu is None:
                pytest.fail("qemu-x86_64-static is not installed (Debian: apt-get install qemu-user-static)")
            cmd = [qemu, "-cpu", cpu, *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=d, timeout=900,
                             env={"PYTHONPATH": str(stage), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
