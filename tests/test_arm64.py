"""The runtime on ARM64, under user-mode emulation (qemu-user-static, Debian's arm64 Python,
PyPI's aarch64 onnxruntime 1.27): both shipped bundles and a freshly exported one, every variant,
through the Python API and the CLI, compared with the same calls on x86; under two CPU models:
neoverse-n1 (NEON + dotprod, like a Raspberry Pi 5 or Graviton 2) and max (adds SVE, i8mm, SME).

If the emulated environment cannot be set up, these tests fail (they never skip): see
tools/arm64_env.py for what `.ci/run` installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tools import arm64_env

pytestmark = [pytest.mark.arm64, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
CPUS = ("neoverse-n1", "max")
FP32_ATOL = 1e-5


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    try:
        env = arm64_env.ensure()
    except arm64_env.SetupError as e:
        pytest.fail(f"the emulated ARM64 environment could not be set up: {e}")
    root = tmp_path_factory.mktemp("arm64")
    stage = arm64_env.stage_project(root)
    shutil.copy(HERE / "runtime_probe.py", root / "runtime_probe.py")
    return env, stage, root


@pytest.fixture(scope="module")
def spec(arm, quantized, mnist_dir):
    from vae_edge.data import load_slice
    from vae_edge.runtime import shipped_bundles
    from vae_edge.runtime.bundle import load_manifest

    _, stage, root = arm
    x, _ = load_slice("mnist:test[0:3]", mnist_dir)
    np.save(root / "x.npy", x)
    fresh = root / "fresh"
    shutil.copytree(quantized, fresh)
    bundles = {"mlp-mnist": str(stage / "vae_edge/pretrained/mlp-mnist/bundle"),
               "conv-mnist": str(stage / "vae_edge/pretrained/conv-mnist/bundle"), "fresh": str(fresh)}
    assert {k: Path(v).is_dir() for k, v in bundles.items()} == dict.fromkeys(bundles, True)
    assert set(shipped_bundles()) == {"mlp-mnist", "conv-mnist", "conv-cond-mnist", "conv-mnist8", "conv-fashion8"}
    variants = {k: list(load_manifest(v)["variants"]) for k, v in bundles.items()}
    path = root / "spec.json"
    path.write_text(json.dumps({"images": str(root / "x.npy"), "bundles": bundles, "variants": variants}))
    # the x86 reference: the same script, this machine's Python and onnxruntime, the staged code
    res = subprocess.run([sys.executable, str(root / "runtime_probe.py"), str(path), str(root / "x86.npz")],
                         capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(stage), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr
    from vae_edge.runtime.sysinfo import cpu

    feats = cpu()["int8_features"]
    return {"path": path, "variants": variants, "bundles": bundles, "x86": dict(np.load(root / "x86.npz")),
            "x86_report": json.loads(res.stdout.strip().splitlines()[-1]), "x": x,
            "x86_saturates": not (feats.get("avx512_vnni") or feats.get("avx_vnni"))}


def _onnx_reference_mu(bundle: str, variant: str, x: np.ndarray) -> np.ndarray:
    """The encoder's mu by the ONNX specification itself (onnx's reference evaluator)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    from vae_edge.runtime.bundle import load_manifest

    name = load_manifest(bundle)["variants"][variant]["files"]["encoder"]
    return ReferenceEvaluator(onnx.load(str(Path(bundle) / name))).run(["mu"], {"x": x})[0]


def _tolerance(bundle: str, variant: str) -> float:
    from vae_edge.runtime.bundle import load_manifest

    golden = load_manifest(bundle)["variants"][variant]["golden"]
    return float(max(golden["tolerance"].values()))


@pytest.mark.parametrize("cpu", CPUS)
def test_api_on_arm64_matches_x86(arm, spec, cpu):
    env, stage, root = arm
    t0 = time.perf_counter()
    res = env.run([str(root / "runtime_probe.py"), str(spec["path"]), str(root / f"{cpu}.npz")], cpu, stage)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    got = dict(np.load(root / f"{cpu}.npz"))
    assert report["machine"] == "aarch64"
    feats = report["cpu"]["int8_features"]
    assert feats["neon"] and feats["dotprod"] and feats["sme"] == (cpu == "max") and feats["i8mm"] == (cpu == "max")
    refused = sorted(k for k, r in report["variants"].items() if "refused" in r)
    # With SME, onnxruntime >= 1.23 runs int8-weight dynamic quantization through KleidiAI's SME
    # kernels, which give other numbers here: the self-check must refuse exactly those variants.
    assert refused == (["fresh/int8-dynamic", "mlp-mnist/int8-dynamic"] if cpu == "max" else []), report
    compared, worst, spec_checked = 0, {}, []
    for key, want in spec["x86"].items():
        bundle, variant, what = key.split("/")
        if f"{bundle}/{variant}" in refused:
            assert key not in got
            continue
        if variant == "int8-dynamic" and spec["x86_saturates"]:
            # This x86 CPU (AVX2, no VNNI) saturates onnxruntime's u8 x s8 products (vpmaddubsw), so
            # it is not the reference for int8-weight dynamic graphs: the ONNX specification is.
            if what == "encode":
                # within the variant's tolerance: the spec's float order differs from the fused
                # kernel's, and in a graph of three dynamically quantized layers a rounding tie of
                # one activation can land one step apart (3e-3 in mu for the shipped MLP; the SME
                # path this guards against differs by far more, and is refused above)
                ref = _onnx_reference_mu(spec["bundles"][bundle], variant, spec["x"])
                tol = _tolerance(spec["bundles"][bundle], variant)
                assert float(np.max(np.abs(got[key] - ref))) <= tol, f"{key} on {cpu} differs from the ONNX spec"
                spec_checked.append(f"{bundle}/{variant}")
            continue
        tol = FP32_ATOL if variant == "fp32" else _tolerance(spec["bundles"][bundle], variant)
        if what in ("neg_elbo", "iw_nll"):  # nats summed over 784 pixels
            tol = 1e-3 if variant == "fp32" else 784 * tol
        elif what == "reconstruct" and variant != "fp32":
            # two graphs in a chain: the encoder's difference moves the decoder's input, so two CPUs'
            # int8 kernels (x86 without VNNI saturates, ARM does not) may differ by the decoder's whole
            # recorded deviation from fp32, not half of it (one pixel of the float-output conv-mnist:
            # 0.114 against 0.093); a kernel computing something else is still far outside (0.93)
            tol = 2 * tol
        diff = float(np.max(np.abs(got[key].astype(np.float64) - want)))
        worst[key] = diff
        assert diff <= tol, f"{key} on {cpu}: max|diff| {diff:.3g} > {tol:.3g}"
        compared += 1
    assert compared >= 4 * 8
    # --variant auto takes the variant recorded for the target (arm64: int8-dynamic-arm64; x86:
    # int8-dynamic), and never one this CPU computes differently
    assert report["auto/mlp-mnist"] == "int8-dynamic-arm64"
    assert spec["x86_report"]["auto/mlp-mnist"] == "int8-dynamic"
    print(f"\nARM64 {cpu}: {compared} outputs equal x86 within tolerance (worst fp32 "
          f"{max(v for k, v in worst.items() if '/fp32/' in k):.1g}); equal to the ONNX spec where x86 is not: "
          f"{spec_checked or 'none'}; refused by the self-check: {refused or 'none'}; {time.perf_counter() - t0:.0f} s")


def test_cli_on_arm64(arm, spec, tmp_path, mnist_dir):
    env, stage, root = arm

    def cli(cpu: str, *args: str):
        res = env.run(["-m", "vae_edge", *args], cpu, stage, cwd=tmp_path)
        # onnxruntime's own line under qemu (its cpuinfo finds no ARM vendor in the host's /proc/cpuinfo)
        res.stderr = "".join(ln for ln in res.stderr.splitlines(True) if "cpuid_info warning" not in ln)
        return res

    res = cli("max", "sample", "-n", "4", "--variant", "int8-dynamic", "-o", str(tmp_path / "bad.png"))
    assert res.returncode == 1 and not (tmp_path / "bad.png").exists()
    assert res.stderr.strip().startswith("Error: variant int8-dynamic fails its self-check on this device")
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli("max", "sample", "-n", "4", "--seed", "0", "--variant", "auto", "-o", str(tmp_path / "auto.npy"))
    assert res.returncode == 0, res.stderr
    assert np.allclose(np.load(tmp_path / "auto.npy"), spec["x86"]["mlp-mnist/int8-dynamic-arm64/sample"], atol=1e-5)
    res = cli("neoverse-n1", "score", "mnist:test[0:3]", "--variant", "int8-static", "--bundle", "conv-mnist",
              "--data-dir", str(mnist_dir), "--json")
    assert res.returncode == 0, res.stderr
    scores = [r["neg_elbo"] for r in json.loads(res.stdout)]
    tol = 784 * _tolerance(spec["bundles"]["conv-mnist"], "int8-static")  # per-pixel tolerance, summed
    assert np.allclose(scores, spec["x86"]["conv-mnist/int8-static/neg_elbo"], atol=tol)
    res = cli("max", "info")
    assert res.returncode == 0 and "cpu features for int8 (arm64): neon, dotprod" in res.stdout and "sme" in res.stdout
    res = cli("max", "verify", "--json")
    rep = json.loads(res.stdout)
    assert res.returncode == 1 and rep["variants"]["int8-dynamic"]["self_check"] == "FAIL"
    assert rep["variants"]["int8-dynamic-arm64"]["self_check"] == "pass"


def test_compressed_files_across_x86_and_arm64(arm, mnist_dir):
    """A file compressed on x86 with the float graphs decompressed on ARM64 and the other way, for
    the shipped binary models' variants: exact, or refused with the line naming the other device's
    numerics (never other images). Each device's own files come back exactly."""
    from vae_edge.data import binarize, load_slice

    env, stage, root = arm
    d = root / "compress"
    d.mkdir()
    shutil.copy(HERE / "compress_probe.py", d / "compress_probe.py")
    x, _ = load_slice("mnist:test[0:8]", mnist_dir)
    np.save(d / "x.npy", binarize(x, 0))
    # coded by the float graphs, as bundles without a portable network are (tests/test_portable.py
    # covers the portable networks: every device)
    pairs = [["mlp-mnist", "fp32", "x.npy", "float"], ["mlp-mnist", "int8-dynamic-arm64", "x.npy", "float"],
             ["conv-mnist", "int8-static", "x.npy", "float"]]
    (d / "pairs.json").write_text(json.dumps(pairs))
    probe = [str(d / "compress_probe.py"), str(d)]
    res = subprocess.run([sys.executable, *probe, "x86"], capture_output=True, text=True, cwd=d,
                         env={"PYTHONPATH": str(stage), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    res = env.run([*probe, "arm", "x86"], "neoverse-n1", stage)
    assert res.returncode == 0, res.stderr[-2000:]
    on_arm = json.loads(res.stdout.strip().splitlines()[-1])
    res = subprocess.run([sys.executable, *probe, "x86", "arm"], capture_output=True, text=True, cwd=d,
                         env={"PYTHONPATH": str(stage), "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    on_x86 = json.loads(res.stdout.strip().splitlines()[-1])
    named = "was made on a device that computes"
    table = []
    for pair in on_arm:
        assert on_arm[pair]["own"] == "exact" and on_x86[pair]["own"] == "exact", (pair, on_arm, on_x86)
        for where, got in (("x86 -> arm64", on_arm[pair]["other"]), ("arm64 -> x86", on_x86[pair]["other"])):
            assert got == "exact" or (got.startswith("refused: ") and named in got), (pair, where, got)
            table.append(f"{pair} {where}: {'exact' if got == 'exact' else 'refused (numerics differ)'}")
    print("\n" + "\n".join(table))


def test_a_users_own_vae_on_arm64(arm, tmp_path_factory):
    """A colour conv VAE written outside vae-edge ([3, 16, 16] images, a [4, 4, 4] latent, a
    Gaussian decoder), exported here, run by the CLI on emulated ARM64: its reconstructions,
    samples and scores equal x86's within fp32 tolerance."""
    import importlib.util

    import torch

    from vae_edge.export import export_vae
    from vae_edge.runtime import VAERuntime

    env, stage, root = arm
    spec = importlib.util.spec_from_file_location("test_byo_module", HERE / "test_byo.py")
    byo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(byo)
    namespace: dict = {}
    exec(compile(byo.MODULE, "my_vae.py", "exec"), namespace)
    d = root / "byo"
    d.mkdir()
    bundle = export_vae(namespace["make"]().eval(), byo.SHAPE, d / "bundle", likelihood="gaussian", sigma=byo.SIGMA,
                        name="tiny-colour")
    x = np.random.default_rng(5).random((3, *byo.SHAPE), dtype=np.float32)
    np.save(d / "x.npy", x)
    rt = VAERuntime.load(bundle, warn=lambda s: None)
    want = {"r": rt.reconstruct(x), "s": rt.sample(4, seed=0), "score": rt.score(x)}
    assert torch.__version__  # the export ran with torch; ARM64 below has none

    def cli(*args: str):
        res = env.run(["-m", "vae_edge", *args, "--bundle", str(bundle)], "neoverse-n1", stage, cwd=d)
        assert res.returncode == 0, res.stderr[-2000:]
        return res

    cli("reconstruct", str(d / "x.npy"), "-o", str(d / "r.npy"))
    cli("sample", "-n", "4", "--seed", "0", "-o", str(d / "s.npy"))
    scores = [r["neg_elbo"] for r in json.loads(cli("score", str(d / "x.npy"), "--json").stdout)]
    assert np.max(np.abs(np.load(d / "r.npy") - want["r"])) < FP32_ATOL
    assert np.max(np.abs(np.load(d / "s.npy") - want["s"])) < FP32_ATOL
    assert np.allclose(scores, want["score"], atol=1e-2)  # nats summed over 768 values
