"""Run on an emulated CPU by tests/test_arm64.py (ARM64) and tests/test_x86_avx2.py (an AVX2-only
x86), and natively for the reference: load each bundle's variants (self-check on), and record what
sample / reconstruct / score return.

    python runtime_probe.py SPEC.json OUT.npz
"""

from __future__ import annotations

import json
import platform
import sys

import numpy as np

from vae_edge.runtime import VAERuntime
from vae_edge.runtime.selfcheck import SelfCheckFailed
from vae_edge.runtime.sysinfo import cpu


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    x = np.load(spec["images"])  # [n, 1, 28, 28]
    out, report = {}, {"machine": platform.machine(), "cpu": cpu(), "variants": {}}
    for name, path in spec["bundles"].items():
        for v in spec["variants"][name]:
            key = f"{name}/{v}"
            try:
                rt = VAERuntime.load(path, variant=v, threads=1, warn=lambda s: None)
            except SelfCheckFailed as e:
                report["variants"][key] = {"refused": str(e)}
                continue
            report["variants"][key] = {"self_check": rt.self_check_diffs}
            out[f"{key}/sample"] = rt.sample(4, seed=0)
            out[f"{key}/reconstruct"] = rt.reconstruct(x)
            out[f"{key}/encode"] = rt.encode(x)[0]
            out[f"{key}/neg_elbo"] = rt.score(x, seed=0)
            out[f"{key}/iw_nll"] = rt.score(x[:2], iw_samples=64, seed=0)
        report["auto/" + name] = VAERuntime.load(path, variant="auto", threads=1, warn=lambda s: None).variant
    np.savez(sys.argv[2], **out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
