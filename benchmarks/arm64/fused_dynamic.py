"""On the (emulated) device: onnxruntime's dynamic-quantized MatMul, fused (all graph
optimizations: DynamicQuantizeMatMul) against unfused (optimizations off: DynamicQuantizeLinear +
MatMulInteger), for int8 and uint8 weights; and the shipped int8-dynamic decoder against the ONNX
reference outputs computed on x86. Prints one JSON line."""
import glob
import json
import sys

import numpy as np
import onnxruntime as ort

work = sys.argv[1]
x = np.load(f"{work}/x.npy")
res = {"onnxruntime": ort.__version__, "fused_minus_unfused": {}}
for path in sorted(glob.glob(f"{work}/q_*.onnx")):
    k = int(path.rsplit("/", 1)[1].split("_")[1])
    outs = []
    for lvl in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = lvl
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {"x": x[:4, :k]})[0])
    res["fused_minus_unfused"][path.rsplit("/", 1)[1]] = float(np.max(np.abs(outs[1] - outs[0])))
s = ort.InferenceSession(f"{work}/decoder.int8-dynamic.onnx", providers=["CPUExecutionProvider"])
z = np.sin(np.arange(1, s.get_inputs()[0].shape[1] + 1, dtype=np.float32))[None]  # the latent size
p = s.run(["probs"], {"z": z})[0].reshape(-1)
res["decoder_vs_onnx_reference"] = float(np.max(np.abs(p - np.load(f"{work}/ref_probs.npy"))))
res["decoder_probs_300_303"] = [round(float(v), 4) for v in p[300:304]]
print(json.dumps(res))
