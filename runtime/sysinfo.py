"""What machine this is: CPU model and the instruction sets that matter for int8, onnxruntime."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vae_edge.runtime.bundle import load_manifest


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


def cpu() -> dict:
    model, flags = _cpuinfo()
    feats = {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx512vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "amx_int8": "amx_int8" in flags,
        "arm_dotprod": "asimddp" in flags,
        "arm_i8mm": "i8mm" in flags,
    }
    return {"model": model, "arch": platform.machine(), "cores": os.cpu_count(), "int8_features": feats}


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


def bundle_summary(bundle=None) -> dict:
    from vae_edge.runtime import trust
    from vae_edge.runtime.bundle import SIGNATURE, tuning
    from vae_edge.runtime.vae_runtime import resolve_bundle

    path = resolve_bundle(bundle)
    m = load_manifest(path)
    signed = (path / SIGNATURE).is_file()
    if not signed:
        signature = "unsigned"
    elif trust.available():
        signature = "signed (checked when loaded with a trusted key)"
    else:
        signature = f"signed, cannot be checked here: {trust.INSTALL_HINT}"
    variants = []
    for name, v in m.get("variants", {}).items():
        size = sum(m["files"][f]["size"] for f in v["files"].values() if f in m["files"])
        variants.append({"variant": name, "size_bytes": size,
                         "neg_elbo_delta": (v.get("accuracy") or {}).get("neg_elbo_delta")})
    return {
        "path": str(path), "name": m.get("name"), "arch": m["model"]["arch"],
        "latent_dim": m["model"]["latent_dim"], "conditional": m["model"]["conditional"],
        "evaluation": m.get("evaluation"), "variants": variants, "tuned": tuning(m).get("choice"), "signature": signature,
    }
