"""What machine this is: CPU model and the instruction sets that matter for int8, onnxruntime."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and val.strip():
            model = val.strip()
        elif key in ("flags", "features"):
            flags |= set(val.split())
    return model, flags


# Linux arm64 HWCAP bits (asm/hwcap.h): what the kernel says this process may use.
_HWCAP = {"neon": 1, "dotprod": 20, "sve": 22}
_HWCAP2 = {"sve2": 1, "sve_i8mm": 9, "i8mm": 13, "bf16": 14, "sme": 23, "sme2": 37}
_CPUINFO_ARM = {"neon": "asimd", "dotprod": "asimddp", "sve": "sve", "sve2": "sve2", "sve_i8mm": "svei8mm",
                "i8mm": "i8mm", "bf16": "bf16", "sme": "sme", "sme2": "sme2"}


def is_arm64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def x86_family(flags: set[str] | None = None) -> str:
    """x86-vnni where the CPU has AVX-512 VNNI or AVX-VNNI (u8 x s8 products exact and fast),
    else x86-avx2 (onnxruntime's u8 x s8 kernel saturates pairwise sums at 16 bits there)."""
    flags = _cpuinfo()[1] if flags is None else flags
    return "x86-vnni" if {"avx512_vnni", "avx512vnni", "avx_vnni"} & flags else "x86-avx2"


def current_targets() -> list[str]:
    """The targets whose settings fit this machine, most specific first: [x86-vnni, x86] or
    [x86-avx2, x86] on x86, [arm64] on ARM64."""
    isa = current_target()
    return [x86_family(), isa] if isa == "x86" else [isa]


def current_target() -> str:
    """The target name bundles record settings under: arm64 or x86."""
    return "arm64" if is_arm64() else "x86"


def _arm_features(flags: set[str]) -> dict[str, bool]:
    """From getauxval(AT_HWCAP/AT_HWCAP2) where it exists (authoritative for this process, and
    right under qemu-user, whose /proc/cpuinfo is the host's), else /proc/cpuinfo's Features."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        h1, h2 = int(libc.getauxval(16)), int(libc.getauxval(26))
        if h1:
            return {**{k: bool(h1 >> b & 1) for k, b in _HWCAP.items()},
                    **{k: bool(h2 >> b & 1) for k, b in _HWCAP2.items()}}
    except (OSError, AttributeError):
        pass
    return {k: f in flags for k, f in _CPUINFO_ARM.items()}


def cpu() -> dict:
    model, flags = _cpuinfo()
    if is_arm64():
        feats = _arm_features(flags)
    else:
        feats = {
            "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
            "avx_vnni": "avx_vnni" in flags,
            "amx_int8": "amx_int8" in flags,
        }
    return {"model": model, "arch": platform.machine(), "cores": os.cpu_count(), "int8_features": feats,
            "target": current_target(), "targets": current_targets()}


def int8_features_text(cpu_info: dict, none: str = "none") -> str:
    """The int8-relevant CPU features present, comma-separated (`none` when there are none)."""
    return ", ".join(k for k, on in cpu_info["int8_features"].items() if on) or none


def environment() -> dict:
    env = {
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "providers_available": ort.get_available_providers(),
        "cpu": cpu(),
    }
    if "torch" in sys.modules:  # never imported here; reported when the caller already has it
        env["torch"] = sys.modules["torch"].__version__
    return env


def bundle_summary(opened, warn=None) -> dict:
    """What `info` shows of an opened bundle (vae_edge.runtime.bundle.Bundle)."""
    from vae_edge.runtime.choice import target_variant, tuned_choice

    path = opened.path
    m = opened.manifest
    signature = {"verified": f"valid, signed by {opened.key}",
                 "unchecked": "signed, NOT checked (pass --trusted-key PUBLIC.pem)",
                 "unsigned": "unsigned"}[opened.signature]
    variants = []
    for name, v in m.get("variants", {}).items():
        size = sum(m["files"][f]["size"] for f in v["files"].values() if f in m["files"])
        variants.append({"variant": name, "size_bytes": size,
                         "neg_elbo_delta": (v.get("accuracy") or {}).get("neg_elbo_delta")})
    return {
        "path": str(path), "name": m.get("name"), "arch": m["model"]["arch"],
        "latent_dim": m["model"]["latent_dim"], "conditional": m["model"]["conditional"],
        "evaluation": m.get("evaluation"), "variants": variants, "tuned": tuned_choice(m, warn),
        "target_variant": target_variant(m), "signature": signature,
        "release": m.get("release", 0),
    }
