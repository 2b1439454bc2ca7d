"""Which upsampling ops should the conv decoder use? Builds the conv decoder three ways (nearest
Resize + Conv then a sub-pixel Conv + DepthToSpace, the default; nearest Resize + Conv twice;
ConvTranspose2d twice), exports each, quantizes it (static QDQ with uint8 and with int8
activations, and dynamic), and times every graph at batch 1 on one thread in alternating blocks.
Writes benchmarks/results/decoder_ops.{json,md}.

    python benchmarks/bench_decoder_ops.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization.shape_inference import quant_pre_process

from vae_edge.bench import run_blocks, stats
from vae_edge.export.onnx_export import export_graph, graph_specs
from vae_edge.export.quantize import ArrayReader, QuantizeConfig, _dynamic, _static
from vae_edge.model import VAE, VAEConfig
from vae_edge.runtime.sysinfo import environment

RESULTS = Path(__file__).resolve().parent / "results"


def graph_flops_of(upsample: str) -> float:
    from vae_edge.bench import graph_flops

    with tempfile.TemporaryDirectory() as tmp:
        model = VAE(VAEConfig(arch="conv", upsample=upsample)).eval()
        path = Path(tmp) / "d.onnx"
        export_graph(model, graph_specs(model)["decoder"], path, "d")
        return graph_flops(path)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = [{"z": rng.standard_normal((64, 20), dtype=np.float32)} for _ in range(4)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sessions, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for up in ("resize-subpixel", "resize", "convtranspose"):
            model = VAE(VAEConfig(arch="conv", upsample=up)).eval()
            spec = graph_specs(model)["decoder"]
            fp32, pre = tmp / f"{up}.onnx", tmp / f"{up}.pre.onnx"
            export_graph(model, spec, fp32, f"decoder-{up}")
            quant_pre_process(str(fp32), str(pre))
            variants = {"fp32": fp32}
            for act in ("uint8", "int8"):
                variants[f"int8-static ({act} act.)"] = tmp / f"{up}.static-{act}.onnx"
                _static(pre, variants[f"int8-static ({act} act.)"], ArrayReader(calib),
                        QuantizeConfig(activation_type=act), [])
            # all ops, Conv included (ConvInteger): what the toolkit's auto mode avoids
            from onnxruntime.quantization import QuantType, quantize_dynamic
            variants["int8-dynamic (ConvInteger)"] = tmp / f"{up}.dynamic.onnx"
            quantize_dynamic(str(pre), str(variants["int8-dynamic (ConvInteger)"]), weight_type=QuantType.QInt8)
            variants["int8-dynamic (MatMul/Gemm only)"] = tmp / f"{up}.dynamic-mm.onnx"
            _dynamic(pre, variants["int8-dynamic (MatMul/Gemm only)"], QuantizeConfig(), [])
            for v, path in variants.items():
                sessions[(up, v)] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {"z": rng.standard_normal((1, 20), dtype=np.float32)}
        times = run_blocks({k: (lambda s=s: s.run(["probs"], feeds)) for k, s in sessions.items()},
                           warmup=20, min_time=1.0)
    for (up, v), ts in times.items():
        st = stats(ts)
        fp32 = stats(times[(up, "fp32")])["p50_ms"]
        rows.append({"upsample": up, "variant": v, **st, "speedup_vs_fp32": fp32 / st["p50_ms"]})
    RESULTS.mkdir(exist_ok=True)
    env = environment()
    (RESULTS / "decoder_ops.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    flops = {up: graph_flops_of(up) for up in ("resize-subpixel", "resize", "convtranspose")}
    md = [f"Conv decoder (latent 20, channels 64->32->1, untrained weights: latency does not depend on them), "
          f"batch 1, one thread, on {env['cpu']['model']}, onnxruntime {env['onnxruntime']}. "
          "MFLOP per image: " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in flops.items()) + ".", "",
          "| upsampling | variant | p50 ms | p90 ms | vs its fp32 |", "|---|---|---:|---:|---:|"]
    md += [f"| {r['upsample']} | {r['variant']} | {r['p50_ms']:.4f} | {r['p90_ms']:.4f} | {r['speedup_vs_fp32']:.2f}x |"
           for r in rows]
    (RESULTS / "decoder_ops.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
