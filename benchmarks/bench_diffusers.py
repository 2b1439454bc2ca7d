"""Stable Diffusion's VAE at its real size: an SD 1.x-config diffusers AutoencoderKL (34M + 49M
parameters, random weights: speed and memory do not depend on them) saved with save_pretrained,
then every step through the CLI in a fresh process each (time and peak RSS), then decoder latency
of every variant against diffusers' own module in torch, in one run.

    python benchmarks/bench_diffusers.py [--size 256] [--calibration 64] [--repeats 5]

Writes benchmarks/results/diffusers.md and .json (docs/diffusers.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SD15 = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
            block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
_WRAP = ("import atexit, sys\n"
         "atexit.register(lambda: sys.stderr.write('\\nPEAK_KB ' + next(l.split()[1] for l in "
         "open('/proc/self/status') if l.startswith('VmHWM:')) + '\\n'))\n"
         "from vae_edge.cli import main\nsys.argv = ['vae-edge'] + sys.argv[1:]\nmain()\n")


def step(name: str, *args: str) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _WRAP, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = next((int(ln.split()[1]) for ln in res.stderr.splitlines() if ln.startswith("PEAK_KB ")), 0)
    if res.returncode != 0:
        sys.exit(f"{name} failed: {res.stderr.strip().splitlines()[-2:]}")
    print(f"{name}: {seconds:.0f} s, peak RSS {peak / 2**20:.2f} GB", flush=True)
    return {"step": name, "seconds": round(seconds, 1), "peak_rss_gb": round(peak / 2**20, 2)}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def latency(bundle: Path, folder: Path, size: int, repeats: int) -> list[dict]:
    import torch
    from diffusers import AutoencoderKL

    from vae_edge.runtime import VAERuntime

    rows = []
    z = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False).eval()
    zt = torch.from_numpy(z) / 0.18215
    ref = None
    for threads in (1, os.cpu_count()):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            out = ((vae.decode(zt).sample + 1) / 2).clamp(0, 1).numpy()
            ref = out if ref is None else ref
            rows.append({"who": "torch eager fp32", "threads": threads,
                         "ms": median_ms(lambda: vae.decode(zt), repeats)})
            vae.to(memory_format=torch.channels_last)
            zc = zt.contiguous(memory_format=torch.channels_last)
            rows.append({"who": "torch channels_last fp32", "threads": threads,
                         "ms": median_ms(lambda zc=zc: vae.decode(zc), repeats)})
            vae.to(memory_format=torch.contiguous_format)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf = ((vae.decode(zt).sample.float() + 1) / 2).clamp(0, 1).numpy()
                rows.append({"who": "torch bf16 autocast", "threads": threads,
                             "ms": median_ms(lambda: vae.decode(zt), repeats), "psnr_db": psnr(bf, ref)})
        for variant in ("fp32", "int8-static", "fp16"):
            rt = VAERuntime.load(bundle, variant=variant, threads=threads, warn=lambda s: None)
            got = rt.decode(z)
            rows.append({"who": f"vae-edge {variant}", "threads": threads, "ms": median_ms(lambda rt=rt: rt.decode(z),
                                                                                          repeats),
                         "psnr_db": psnr(got, ref)})
            rt.close()
        for r in rows[-6:]:
            print(r, flush=True)
    return rows


SMALL = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
             block_out_channels=(32, 64, 64), sample_size=32, scaling_factor=1.0,
             down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)


def colour_fashion(split: str, n: int, seed: int) -> np.ndarray:
    """Fashion-MNIST as 32x32 colour images: each garment padded and tinted with a random colour."""
    from vae_edge.data import load_slice

    x, _ = load_slice(f"fashion-mnist:{split}[0:{n}]", None)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    tint = np.random.default_rng(seed).uniform(0.3, 1.0, (len(x), 3, 1, 1)).astype(np.float32)
    return (x * tint).astype(np.float32)


def train_small(folder: Path, steps: int) -> dict:
    """A small diffusers AutoencoderKL trained here (KL-regularised, L2 reconstruction, Adam) so
    that quantization meets the activations of a trained model; saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    x = torch.from_numpy(colour_fashion("train", 20000, 0))
    vae = AutoencoderKL(**SMALL)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        batch = x[torch.randint(0, len(x), (64,))] * 2 - 1
        dist = vae.encode(batch).latent_dist
        recon = vae.decode(dist.sample()).sample
        loss = ((recon - batch) ** 2).sum((1, 2, 3)).mean() + 1e-3 * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 200 == 0:
            print(f"small AutoencoderKL step {i}: loss {loss.item():.1f}", flush=True)
    vae.eval().save_pretrained(folder)
    return {"steps": steps, "seconds": round(time.perf_counter() - t0), "final_loss": round(float(loss.item()), 2),
            "parameters": sum(p.numel() for p in vae.parameters())}


def quality(tmp: Path, steps: int) -> dict:
    """PSNR of each variant's reconstructions of held-out images (vs the images and vs fp32's) and
    the -ELBO delta quantize records, on the small trained model."""
    from vae_edge.runtime import VAERuntime

    trained = train_small(tmp / "small", steps)
    np.save(tmp / "small-calib.npy", colour_fashion("train", 256, 1)[-256:])
    step("export small", "export", "--diffusers", str(tmp / "small"), "--out", str(tmp / "sb"))
    step("quantize small static", "quantize", str(tmp / "sb"), "--mode", "static", "--calibration-data",
         str(tmp / "small-calib.npy"))
    step("quantize small fp16", "quantize", str(tmp / "sb"), "--mode", "fp16", "--calibration-data",
         str(tmp / "small-calib.npy"))
    x = colour_fashion("test", 500, 2)
    rows, ref = [], None
    manifest = json.loads((tmp / "sb" / "manifest.json").read_text())
    for v in ("fp32", "int8-static", "fp16"):
        rt = VAERuntime.load(tmp / "sb", variant=v, warn=lambda s: None)
        rec = np.concatenate([rt.reconstruct(x[i:i + 100]) for i in range(0, len(x), 100)])
        ref = rec if ref is None else ref
        acc = manifest["variants"][v].get("accuracy") or {}
        rows.append({"variant": v, "psnr_vs_images_db": psnr(rec, x), "psnr_vs_fp32_db": psnr(rec, ref),
                     "neg_elbo_delta_nats": acc.get("neg_elbo_delta")})
        print(rows[-1], flush=True)
    return {"trained": trained, "rows": rows}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float(round(10 * np.log10(1.0 / mse), 1)) if mse > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=600,
                    help="Steps of the small trained model (quality); 0: no quality part.")
    ap.add_argument("--name", default="diffusers", help="Results file: benchmarks/results/NAME.md and .json.")
    args = ap.parse_args()
    import torch
    from diffusers import AutoencoderKL

    from vae_edge.runtime.sysinfo import cpu

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        vae = AutoencoderKL(**SD15)
        params = {g: sum(p.numel() for n, p in vae.named_parameters() if n.startswith(g)) for g in ("encoder", "decoder")}
        vae.save_pretrained(tmp / "sd-vae")
        del vae
        rng = np.random.default_rng(0)  # calibration images: smooth colour fields, not noise
        base = rng.random((args.calibration, 3, 8, 8)).astype(np.float32)
        calib = np.repeat(np.repeat(base, args.size // 8, axis=2), args.size // 8, axis=3)
        np.save(tmp / "calib.npy", calib)
        del calib
        s = str(args.size)
        steps = [step(f"export --diffusers at {s}x{s}", "export", "--diffusers", str(tmp / "sd-vae"),
                      "--input-shape", f"3,{s},{s}", "--out", str(tmp / "b")),
                 step(f"quantize --mode static, {args.calibration} images of {s}x{s}", "quantize", str(tmp / "b"),
                      "--mode", "static", "--calibration-data", str(tmp / "calib.npy")),
                 step(f"quantize --mode fp16 (guarded), {args.calibration} images", "quantize", str(tmp / "b"),
                      "--mode", "fp16", "--calibration-data", str(tmp / "calib.npy"))]
        z = np.random.default_rng(1).standard_normal((1, 4, 4 * args.size // 8, 4 * args.size // 8)).astype(np.float32)
        np.save(tmp / "z4.npy", z)
        steps.append(step(f"decode {4 * args.size}x{4 * args.size} in {s}x{s} tiles (int8-static)", "decode",
                          str(tmp / "z4.npy"), "--bundle", str(tmp / "b"), "--variant", "int8-static",
                          "-o", str(tmp / "big.npy")))
        manifest = json.loads((tmp / "b" / "manifest.json").read_text())
        sizes = {v: sum(manifest["files"][f]["size"] for f in e["files"].values()) / 2**20
                 for v, e in manifest["variants"].items()}
        rows = latency(tmp / "b", tmp / "sd-vae", args.size, args.repeats)
        qual = quality(tmp, args.train_steps) if args.train_steps else None
    info = cpu()
    report = {"cpu": info, "size": args.size, "parameters": params, "steps": steps,
              "bundle_mb": {k: round(v, 1) for k, v in sizes.items()}, "latency": rows, "quality": qual}
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    cmd = " ".join(sys.argv[1:])
    md = [f"Measured by `python benchmarks/bench_diffusers.py {cmd}` on "
          f"{info['model']}, {info['cores']} cores: an SD 1.x-config AutoencoderKL ({params['encoder'] / 1e6:.1f}M encoder, "
          f"{params['decoder'] / 1e6:.1f}M decoder parameters; random weights), every step a new process.", "",
          "| step | time | peak RSS |", "|---|---:|---:|"]
    md += [f"| {s['step']} | {s['seconds']:.0f} s | {s['peak_rss_gb']:.2f} GB |" for s in steps]
    md += ["", "| variant | size (both graphs) |", "|---|---:|"]
    md += [f"| {v} | {mb:.1f} MB |" for v, mb in sizes.items()]
    md += ["", f"Decoding one {args.size}x{args.size} image (latent {args.size // 8}x{args.size // 8}), median of "
           f"{args.repeats} after a warm-up; PSNR against torch fp32's image (random weights: a check of the "
           "arithmetic, not of quality):", "", "| who | threads | ms | PSNR vs torch fp32 |", "|---|---:|---:|---:|"]
    md += [f"| {r['who']} | {r['threads']} | {r['ms']:.0f} | "
           f"{'' if r.get('psnr_db') is None else str(r['psnr_db']) + ' dB'} |" for r in rows]
    if qual is None:
        (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    t = qual["trained"]
    md += ["", f"Quality, on a small AutoencoderKL trained here ({t['parameters'] / 1e6:.2f}M parameters, {t['steps']} "
           f"steps of Adam in {t['seconds']} s on tinted 32x32 Fashion-MNIST), 500 held-out test images "
           "reconstructed; quantized with 256 training images:", "",
           "| variant | PSNR vs the images | PSNR vs fp32's reconstruction | -ELBO delta (quantize's record) |",
           "|---|---:|---:|---:|"]
    md += [f"| {r['variant']} | {r['psnr_vs_images_db']} dB | "
           f"{'(the reference)' if r['psnr_vs_fp32_db'] is None else str(r['psnr_vs_fp32_db']) + ' dB'} | "
           f"{'' if r['neg_elbo_delta_nats'] is None else format(r['neg_elbo_delta_nats'], '+.3f')} |" for r in qual["rows"]]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
