"""Per-target quantization settings: data, not branches. `vae-edge quantize --target T` applies
T's settings (where the user did not set them), names the variant for T when its settings differ
from x86's, and records the choice in the manifest under targets[T]; on a device, `--variant
auto` reads the entry of the device's own target. Each setting says why (measured here, or
onnxruntime's documentation)."""

from __future__ import annotations

from vae_edge import VaeEdgeError

TARGETS: dict[str, dict] = {
    "x86": {
        "settings": {"activation_type": "uint8", "weight_type": "int8", "per_channel": False},
        "why": "U8S8 is onnxruntime's x86 default and its fastest int8 GEMM; ConvInteger (dynamic conv) ran 4-5x "
               "slower than fp32 here, so conv graphs are quantized statically (benchmarks/results/decoder_ops.md).",
    },
    "x86-vnni": {
        "settings": {"activation_type": "uint8", "weight_type": "int8", "per_channel": True},
        "isa": "x86",
        "why": "CPUs with AVX-512 VNNI or AVX-VNNI compute u8 x s8 products exactly (VPDPBUSD); per-channel weight "
               "scales, which track each output channel's range, then cut the -ELBO cost of int8 (on a Xeon with "
               "VNNI: 0.40 -> 0.32 nats for conv-mnist, 0.34 -> 0.18 for mlp-mnist; docs/results.md: x86 CPU "
               "families).",
    },
    "x86-avx2": {
        "settings": {"activation_type": "uint8", "weight_type": "int8", "per_channel": False, "reduce_range": True},
        "isa": "x86",
        "why": "Without VNNI, onnxruntime's u8 x s8 kernel (VPMADDUBSW) saturates pairwise sums at 16 bits; 7-bit "
               "weights (reduce_range) keep them in range, as onnxruntime's quantization guide advises.",
    },
    "arm64": {
        "settings": {"activation_type": "uint8", "weight_type": "uint8", "per_channel": False},
        "only_for": ("dynamic",),
        "why": "With int8 weights, onnxruntime >= 1.23 fuses dynamic quantization into DynamicQuantizeMatMul, "
               "which runs KleidiAI's SME kernels on CPUs with SME; under emulation those returned different "
               "numbers (README: Running on ARM64). uint8 weights never take that path and were exact on every "
               "CPU model tried. Static QDQ graphs were exact everywhere and keep x86's settings.",
    },
    "wasm": {
        "settings": {"activation_type": "uint8", "weight_type": "int8", "per_channel": False},
        "why": "onnxruntime-web's wasm kernels are MLAS's portable ones: x86's settings apply (in the browser "
               "int8-dynamic beat fp32 for the MLP, int8-static for the conv decoder).",
    },
}


def target_settings(target: str, methods: set[str]) -> dict:
    """The settings a target asks for, given the quantization methods used ({'dynamic', 'static'})."""
    if target not in TARGETS:
        raise VaeEdgeError(f"unknown target {target!r}: choose from {', '.join(TARGETS)}")
    t = TARGETS[target]
    only = t.get("only_for")
    if only and not (set(only) & methods):
        return dict(TARGETS["x86"]["settings"])
    return dict(t["settings"])


def differs_from_x86(target: str, methods: set[str]) -> bool:
    return target != "x86" and target_settings(target, methods) != TARGETS["x86"]["settings"]


def detected() -> str:
    """The target of this machine's CPU family: x86-vnni, x86-avx2 or arm64."""
    from vae_edge.runtime.sysinfo import current_targets

    return current_targets()[0]
