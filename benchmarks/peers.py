"""Peer runtimes as benchmark contenders (never engines): ExecuTorch (XNNPACK delegate) and LiteRT
(TFLite, XNNPACK delegate), converted from the *same checkpoint* as vae-edge's bundles, each by
its own documented recipe, in fp32 and int8. Needs the `[peers]` extra:
`pip install 'vae-edge[peers]'` (executorch, ai-edge-litert, litert-torch, ai-edge-quantizer).

- ExecuTorch: torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte; int8 by
  PT2E with XNNPACKQuantizer (symmetric, per-channel weights; dynamic activations for MLP graphs,
  static with MNIST calibration for conv graphs, whose convolutions dynamic quantization skips).
- LiteRT: litert_torch.convert -> .tflite; int8 by ai-edge-quantizer's dynamic_wi8_afp32 recipe
  (int8 weights, dynamic int8 activations).

Both are converted for one batch size at a time (static shapes: what both delegates plan best,
and LiteRT's XNNPACK delegate cannot resize the conv decoder's graph).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Decoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.vae.decode(z))  # probs, as the ONNX decoder's "probs"


class Encoder(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


def wrap(vae, graph: str) -> nn.Module:
    return (Encoder(vae) if graph == "encoder" else Decoder(vae)).eval()


def example(vae, graph: str, batch: int) -> tuple[torch.Tensor]:
    if graph == "encoder":
        return (torch.rand(batch, 1, 28, 28),)
    return (torch.randn(batch, vae.cfg.latent_dim),)


# ---------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------

def executorch_program(module: nn.Module, args: tuple, int8: bool, calibration: list[tuple] | None = None,
                       dynamic: bool = True) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if int8:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
        graph = torch.export.export(module, args).module()
        prepared = prepare_pt2e(graph, quantizer)
        for batch in calibration or [args]:
            prepared(*batch)
        module = convert_pt2e(prepared)
    ep = torch.export.export(module, args)
    return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def executorch_runner(program: bytes) -> Callable[[np.ndarray], list[np.ndarray]]:
    from executorch.runtime import Runtime

    loaded = Runtime.get().load_program(program)  # reads from `program` without copying it:
    method = loaded.load_method("forward")       # both must outlive the method (kept in the closure)

    def run(x: np.ndarray, _keep=(program, loaded)) -> list[np.ndarray]:
        return [o.numpy() for o in method.execute([torch.from_numpy(x)])]
    return run


# ---------------------------------------------------------------------------------------------
# LiteRT
# ---------------------------------------------------------------------------------------------

def litert_model(module: nn.Module, args: tuple, int8: bool) -> bytes:
    import litert_torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        litert_torch.convert(module, args).export(str(path))
        if not int8:
            return path.read_bytes()
        from ai_edge_quantizer import quantizer, recipe

        qt = quantizer.Quantizer(str(path))
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        q = Path(tmp) / "model_int8.tflite"
        qt.quantize().export_model(str(q), overwrite=True)
        return q.read_bytes()


def litert_runner(model: bytes, threads: int = 1) -> Callable[[np.ndarray], list[np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = [d["index"] for d in sorted(it.get_output_details(), key=lambda d: d["name"])]

    def run(x: np.ndarray) -> list[np.ndarray]:
        it.set_tensor(inp, x)
        it.invoke()
        return [it.get_tensor(i) for i in outs]
    return run


def pin_to_one_core() -> int | None:
    """Pin this process to one core (the first it may use); returns it, or None where unsupported."""
    try:
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    except (AttributeError, OSError):
        return None
