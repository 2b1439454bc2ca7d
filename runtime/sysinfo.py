"""What machine this is: CPU model and the instruction sets that matter for int8, onnxruntime."""

from __future__ import annotations

import functools
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


# x86-64 System V: cpuid(leaf=edi, subleaf=esi) -> out[4] = eax, ebx, ecx, edx (rdx: out).
_CPUID_CODE = bytes([
    0x53,                    # push rbx
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])
# (leaf, subleaf, register, bit) of each int8-relevant feature (Intel SDM vol. 2, CPUID)
_CPUID_BITS = {"avx2": (7, 0, 1, 5), "avx512f": (7, 0, 1, 16), "avx512_vnni": (7, 0, 2, 11),
               "avx_vnni": (7, 1, 0, 4), "amx_int8": (7, 0, 3, 25)}


@functools.lru_cache(maxsize=1)  # the CPU does not change under a process: one CPUID run each
def _x86_cpuid() -> dict[str, bool] | None:
    """The x86 features CPUID reports to this process: what onnxruntime's kernels dispatch on.
    /proc/cpuinfo is the host's under an emulator (qemu-user -cpu Haswell on an AVX-512 host: the
    process has no AVX-512, its /proc/cpuinfo says it has). None where CPUID cannot be run here
    (not Linux x86-64, or no executable memory)."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        import ctypes
        import mmap

        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    view = ctypes.c_char.from_buffer(buf)
    try:
        buf.write(_CPUID_CODE)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(
            ctypes.addressof(view))
        regs = (ctypes.c_uint32 * 4)()
        leaves = {}
        for leaf, sub in ((0, 0), (7, 0), (7, 1)):
            fn(leaf, sub, regs)
            leaves[(leaf, sub)] = list(regs)
        if leaves[(0, 0)][0] < 7:  # no leaf 7: none of these features
            return dict.fromkeys(_CPUID_BITS, False)
        if leaves[(7, 0)][0] < 1:  # no sub-leaf 1
            leaves[(7, 1)] = [0] * 4
        return {k: bool(leaves[(leaf, sub)][reg] >> bit & 1) for k, (leaf, sub, reg, bit) in _CPUID_BITS.items()}
    finally:
        del view
        buf.close()


def _x86_features(flags: set[str]) -> dict[str, bool]:
    found = _x86_cpuid()
    if found is not None:
        return dict(found)  # a copy: the cached one is shared
    return {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
            "avx_vnni": "avx_vnni" in flags, "amx_int8": "amx_int8" in flags}


def is_arm64() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def x86_family(flags: set[str] | None = None) -> str:
    """x86-vnni where the CPU has AVX-512 VNNI or AVX-VNNI (u8 x s8 products exact and fast),
    else x86-avx2 (onnxruntime's u8 x s8 kernel saturates pairwise sums at 16 bits there)."""
    if flags is not None:
        return "x86-vnni" if {"avx512_vnni", "avx512vnni", "avx_vnni"} & flags else "x86-avx2"
    feats = _x86_features(_cpuinfo()[1])
    return "x86-vnni" if feats["avx512_vnni"] or feats["avx_vnni"] else "x86-avx2"


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
    feats = _arm_features(flags) if is_arm64() else _x86_features(flags)
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

    path, info = opened.path, opened.info
    signature = {"verified": f"valid, signed by {opened.key}",
                 "unchecked": "signed, NOT checked (pass --trusted-key PUBLIC.pem)",
                 "unsigned": "unsigned"}[opened.signature]
    variants = [{"variant": name, "size_bytes": sum(info.files[f].size for f in v.files.values() if f in info.files),
                 "neg_elbo_delta": v.accuracy.get("neg_elbo_delta")} for name, v in info.variants.items()]
    return {
        "path": str(path), "name": info.name, "arch": info.model.arch,
        "latent_dim": info.model.latent_dim, "conditional": info.model.conditional,
        "evaluation": info.evaluation, "variants": variants, "tuned": tuned_choice(info, warn),
        "target_variant": target_variant(info), "signature": signature,
        "release": info.release, "image_shape": list(info.model.image_shape),
        "latent_shape": list(info.model.latent_shape), "likelihood": info.model.likelihood,
        "any_size_multiple_of": info.model.spatial_factor or None,
    }
