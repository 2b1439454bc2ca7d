"""Why the int8-dynamic variant gives other numbers on some ARM64 CPUs: the evidence, regenerated.

    python benchmarks/arm64/cause.py        # writes benchmarks/results/arm64_int8.md

For each QEMU_CPU model: the CPU features the process sees (HWCAP), whether qemu's NEON i8mm
instructions (SMMLA/UMMLA/USMMLA) compute their architectural definition, onnxruntime's fused
dynamic-quantized MatMul against the unfused graph for int8 and uint8 weights, and the shipped
decoder against the ONNX reference evaluator (the specification's own numbers, computed on x86).
Uses the emulated environment of tools/arm64_env.py.
"""
from __future__ import annotations

import ast
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools import arm64_env  # noqa: E402

HERE = Path(__file__).resolve().parent
CPUS = ["neoverse-n1", "a64fx", "max,sve=off", "max,sme=off", "max"]


def build(work: Path) -> None:
    rng = np.random.default_rng(1)
    for k, n in ((20, 400), (400, 784)):
        w = rng.normal(0, 0.3, (k, n)).astype(np.float32)
        g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(w, "W")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.save(m, work / f"f_{k}_{n}.onnx")
        for wt, qt in (("s8", QuantType.QInt8), ("u8", QuantType.QUInt8)):
            quantize_dynamic(work / f"f_{k}_{n}.onnx", work / f"q_{k}_{n}_{wt}.onnx", weight_type=qt)
    np.save(work / "x.npy", rng.normal(0, 1, (4, 400)).astype(np.float32))
    dec = ROOT / "vae_edge/pretrained/mlp-mnist/bundle/decoder.int8-dynamic.onnx"
    (work / "decoder.int8-dynamic.onnx").write_bytes(dec.read_bytes())
    model = onnx.load(str(dec))
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value  # the latent size
    z = np.sin(np.arange(1, d + 1, dtype=np.float32))[None]
    np.save(work / "ref_probs.npy", ReferenceEvaluator(model).run(["probs"], {"z": z})[0].reshape(-1))


def _older_ort(env: arm64_env.Arm64Python) -> arm64_env.Arm64Python:
    """onnxruntime 1.22.0, the last release before DynamicQuantizeMatMul could take KleidiAI's path."""
    site = arm64_env.CACHE / "site-ort1.22.0"
    if not (site / ".complete").is_file():
        plat = [a for p in arm64_env.PLATFORMS for a in ("--platform", p)]
        arm64_env._run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), *plat,
                        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        "onnxruntime==1.22.0", "numpy==2.2.6"], "pip download of onnxruntime 1.22.0")
        (site / ".complete").write_text("onnxruntime==1.22.0")
    return arm64_env.Arm64Python(env.qemu, env.root, site)


def main() -> None:
    env = arm64_env.ensure()
    work = Path(tempfile.mkdtemp(prefix="arm64-cause-"))
    build(work)
    stage = work / "stage"
    stage.mkdir()
    rows = []
    runs = [(cpu, env) for cpu in CPUS] + [("max", _older_ort(env))]
    for cpu, env in runs:
        caps = env.run([str(HERE / "hwcaps.py")], cpu, stage).stdout.strip().splitlines()[-1]
        mm = env.run([str(HERE / "i8mm_instructions.py")], cpu, stage)
        wrong = [ln.split()[3] for ln in mm.stdout.splitlines() if "wrong in" in ln]
        mm_text = (f"SMMLA/UMMLA/USMMLA: {'/'.join(wrong)} of 2000 random cases wrong" if wrong
                   else "illegal instruction (no i8mm)")
        fused = env.run([str(HERE / "fused_dynamic.py"), str(work)], cpu, stage)
        data = json.loads(fused.stdout.strip().splitlines()[-1])
        rows.append({"cpu": cpu, "hwcaps": caps, "i8mm": mm_text, **data})
        print(json.dumps(rows[-1]), flush=True)
    md = ["| QEMU_CPU | features (HWCAP) | NEON i8mm vs definition | fused - unfused, int8 weights | "
          "fused - unfused, uint8 weights | shipped int8-dynamic decoder vs ONNX reference |",
          "|---|---|---|---:|---:|---:|"]
    for r in rows:
        caps = ast.literal_eval(r["hwcaps"].replace("} {", "}, {"))  # two dicts printed by hwcaps.py
        on = [k for d in caps for k, v in d.items() if v]
        s8 = max(v for k, v in r["fused_minus_unfused"].items() if k.endswith("_s8.onnx"))
        u8 = max(v for k, v in r["fused_minus_unfused"].items() if k.endswith("_u8.onnx"))
        md.append(f"| {r['cpu']} (onnxruntime {r['onnxruntime']}) | {', '.join(on)} | {r['i8mm']} | {s8:.3g} | {u8:.3g} | "
                  f"{r['decoder_vs_onnx_reference']:.3g} |")
    out = ROOT / "benchmarks" / "results" / "arm64_int8.md"
    out.write_text("PyPI's aarch64 onnxruntime wheels under qemu-user-static 7.2; "
                   "`python benchmarks/arm64/cause.py`.\n\n" + "\n".join(md) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
