"""Run by `bench_diffusers.py --part devices` on this CPU and on emulated ones (an AVX2-only x86
under qemu-x86_64, ARM64 under qemu-aarch64): numpy + onnxruntime only, as on a device.

For each bundle and variant: load it as a user would (self-check on) and record what it computes
(reconstruct of images, or decode of latents); where the self-check refuses the variant, say why
and record what it would have computed without the check (self_check=False), so the report can
show what the refusal saved.

    python diffusers_probe.py SPEC.json OUT.npz     (prints a JSON report as its last line)
"""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

from vae_edge.runtime import VAERuntime
from vae_edge.runtime.selfcheck import SelfCheckFailed
from vae_edge.runtime.sysinfo import cpu


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out, report = {}, {"machine": platform.machine(), "cpu": cpu(), "onnxruntime": ort.__version__, "runs": {}}
    for name, job in spec["bundles"].items():
        data = np.load(job["inputs"])
        for variant in job["variants"]:
            key, entry = f"{name}/{variant}", {}
            try:
                rt = VAERuntime.load(job["path"], variant=variant, threads=1, warn=lambda s: None)
            except SelfCheckFailed as e:
                entry["refused"] = str(e).splitlines()[0][:300]
                rt = VAERuntime.load(job["path"], variant=variant, threads=1, warn=lambda s: None, self_check=False)
            rt.max_memory = 1 << 40  # whole images: tiles are another question
            t0 = time.perf_counter()
            out[key] = rt.reconstruct(data) if job["call"] == "reconstruct" else rt.decode(data)
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            rt.close()
            report["runs"][key] = entry
            print(key, entry, file=sys.stderr, flush=True)
    np.savez(sys.argv[2], **out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
