"""fp16 storage of an fp32 graph's weights: each large weight is stored as fp16 and followed by a
Cast back to fp32. The file is about half the size and the arithmetic stays fp32; onnxruntime
folds the Casts when it loads the graph, so the graph runs as fast as one with fp32 weights.

Lossless when the weights are fp16 values to begin with (a checkpoint slimmed with
`weights_dtype="float16"` is rounded once, before export); the classifier rounds its own here.
Quantizers need fp32 weights beside their MatMul/Conv nodes: `fold_fp16_weights` gives them back.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CAST_PREFIX = "cast_fp16_"
MIN_SIZE = 1024  # smaller tensors (biases, scales) stay fp32: they are not worth a node each


def weights_as_fp16(model: onnx.ModelProto, min_size: int = MIN_SIZE) -> onnx.ModelProto:
    """Store the fp32 initializers of at least `min_size` elements as fp16 + Cast (in place)."""
    g = model.graph
    casts = []
    for init in list(g.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_size:
            continue
        half = numpy_helper.from_array(w.astype(np.float16), init.name + "_fp16")
        g.initializer.remove(init)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=CAST_PREFIX + init.name))
    for node in reversed(casts):
        g.node.insert(0, node)
    onnx.checker.check_model(model)
    return model


def has_fp16_weights(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Cast" and n.name.startswith(CAST_PREFIX) for n in model.graph.node)


def fold_fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Undo `weights_as_fp16` (in place): fp32 initializers under the original names, no Casts."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for node in [n for n in g.node if n.op_type == "Cast" and n.name.startswith(CAST_PREFIX)]:
        half = inits.pop(node.input[0])
        g.initializer.remove(half)
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(half).astype(np.float32), node.output[0]))
        g.node.remove(node)
    onnx.checker.check_model(model)
    return model
