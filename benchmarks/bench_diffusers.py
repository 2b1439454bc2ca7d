"""Stable Diffusion's VAE at its real size: an SD 1.x-config diffusers AutoencoderKL (34M + 49M
parameters, random weights: speed and memory do not depend on them) saved with save_pretrained,
then every step through the CLI in a fresh process each (time and peak RSS); decode and encode
latency of every variant against diffusers' own module in torch (eager, channels_last, bf16
autocast, torch.compile), in one run; quality on a small AutoencoderKL trained here; the same
bundles on other CPU families under emulation (an AVX2-only x86, ARM64: what they compute). With
--model taesd, TAESD (diffusers' AutoencoderTiny, 1.2M + 1.2M parameters) the same way, its
quality on an AutoencoderTiny of TAESD's config trained here.

    python benchmarks/bench_diffusers.py [--model sd|taesd] [--size 512] [--calibration 64]
                                         [--part pipeline|latency|quality|devices] [--workdir DIR [--resume]]

Writes benchmarks/results/diffusers.md and .json, or diffusers-taesd.* (docs/diffusers.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # --model: (diffusers class, config, what the docs call it)
    "sd": ("AutoencoderKL", None, "an SD 1.x-config AutoencoderKL"),
    # TAESD: diffusers' AutoencoderTiny defaults are madebyollin's taesd (64 channels, 1/3/3/3 blocks)
    "taesd": ("AutoencoderTiny", {}, "a TAESD-config AutoencoderTiny"),
}
SD15 = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
            block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
MODELS["sd"] = (MODELS["sd"][0], SD15, MODELS["sd"][2])
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
    print(f"{name}: {seconds:.0f} s, peak RSS {peak / 2**20:.2f} GiB", flush=True)
    return {"step": name, "seconds": round(seconds, 1), "peak_rss_gb": round(peak / 2**20, 2)}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def _class(model: str):
    import diffusers

    return getattr(diffusers, MODELS[model][0])


def latency(bundle: Path, folder: Path, sizes: list[int], repeats: int, compile_: bool, model: str = "sd",
            only: str | None = None, graphs: tuple[str, ...] = ("decode", "encode")) -> list[dict]:
    """Decode and encode of one image at each size, one thread and all: torch (eager, channels_last,
    bf16 autocast, torch.compile) against every variant of the bundle, in one run. only: the
    vae-edge variant alone (a row measured again; its torch rows are not)."""
    import torch

    from vae_edge.runtime import VAERuntime

    rows = []
    vae = _class(model).from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False).eval()
    scale = float(vae.config.get("scaling_factor") or 1.0)
    tiny = model == "taesd"
    compiled = {}
    for size in sizes:
        z = np.random.default_rng(0).standard_normal((1, 4, size // 8, size // 8)).astype(np.float32)
        base = np.random.default_rng(1).random((1, 3, 8, 8)).astype(np.float32)
        x = np.repeat(np.repeat(base, size // 8, axis=2), size // 8, axis=3)  # a smooth colour field
        zt, xt = torch.from_numpy(z) / scale, torch.from_numpy(2 * x - 1)
        calls = {"decode": (lambda m, a: m.decode(a).sample, zt),
                 "encode": ((lambda m, a: m.encode(a).latents) if tiny else (lambda m, a: m.encode(a).latent_dist.mean), xt)}
        for threads in (1, os.cpu_count()):
            torch.set_num_threads(threads)
            for graph, (call, arg) in calls.items():
                if graph not in graphs:
                    continue
                first = len(rows)
                with torch.inference_mode():
                    ref = call(vae, arg).float().numpy()
                    if graph == "decode":
                        ref = ((ref + 1) / 2).clip(0, 1)
                if only is None:  # the torch rows (a variant measured again alone has none)
                    with torch.inference_mode():
                        rows.append({"graph": graph, "size": size, "who": "torch eager fp32", "threads": threads,
                                     "ms": median_ms(lambda c=call, a=arg: c(vae, a), repeats)})
                        vae.to(memory_format=torch.channels_last)
                        ac = arg.contiguous(memory_format=torch.channels_last)
                        rows.append({"graph": graph, "size": size, "who": "torch channels_last fp32", "threads": threads,
                                     "ms": median_ms(lambda c=call, ac=ac: c(vae, ac), repeats)})
                        vae.to(memory_format=torch.contiguous_format)
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            bf = call(vae, arg).float().numpy()
                            if graph == "decode":  # diffusers' [-1, 1] as the reference's [0, 1]
                                bf = ((bf + 1) / 2).clip(0, 1)
                            rows.append({"graph": graph, "size": size, "who": "torch bf16 autocast", "threads": threads,
                                         "ms": median_ms(lambda c=call, a=arg: c(vae, a), repeats), **agreement(graph, bf, ref)})
                if compile_ and only is None:
                    rows.append(_compiled(compiled, vae, graph, call, arg, ref, size, threads, repeats))
                for variant in (only,) if only else ("fp32", "int8-static", "fp16"):
                    rt = VAERuntime.load(bundle, variant=variant, threads=threads, warn=lambda s: None)
                    rt.max_memory = 1 << 40  # the whole image in one call, as torch runs it (tiles: the pipeline's rows)
                    if graph == "decode":
                        got = rt.decode(z)
                        ms = median_ms(lambda rt=rt, z=z: rt.decode(z), repeats)
                    else:
                        got = rt.to_raw(rt.encode(x)[0])
                        ms = median_ms(lambda rt=rt, x=x: rt.encode(x), repeats)
                    rows.append({"graph": graph, "size": size, "who": f"vae-edge {variant}", "threads": threads,
                                 "ms": ms, **agreement(graph, got, ref)})
                    rt.close()
                for r in rows[first:]:
                    print(r, flush=True)
    return rows


def _compiled(cache: dict, vae, graph: str, call, arg, ref, size: int, threads: int, repeats: int) -> dict:
    """torch.compile (inductor, the default mode) of the call: its compile time is not counted."""
    import torch

    row = {"graph": graph, "size": size, "who": "torch.compile fp32", "threads": threads}
    try:
        fn = cache.get(graph)
        if fn is None:
            t0 = time.perf_counter()
            fn = cache[graph] = torch.compile(lambda a: call(vae, a))
            with torch.inference_mode():
                fn(arg)
            row["compile_s"] = round(time.perf_counter() - t0)
        with torch.inference_mode():
            got = fn(arg).float().numpy()
            row["ms"] = median_ms(lambda: fn(arg), repeats)
        row.update(agreement(graph, ((got + 1) / 2).clip(0, 1) if graph == "decode" else got, ref))
    except Exception as e:  # say what failed, keep the other rows
        row["failed"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    return row


def agreement(graph: str, got: np.ndarray, ref: np.ndarray) -> dict:
    """How far a contender's output is from torch fp32's: PSNR of the image, or the latent's largest
    difference (raw latents)."""
    if graph == "decode":
        return {"psnr_db": psnr(got, ref)}
    return {"max_diff": float(f"{float(np.max(np.abs(np.asarray(got, np.float64) - ref))):.2g}")}


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


def train_small(folder: Path, steps: int, model: str = "sd") -> dict:
    """A small diffusers model trained here so that quantization meets the activations of a trained
    model; saved with save_pretrained. sd: an AutoencoderKL (KL-regularised, L2 reconstruction);
    taesd: an AutoencoderTiny of TAESD's own config (deterministic: L2 reconstruction alone; at 32x32
    its 4x4x4 latent compresses 48x, as SD's 64x64x4 latent of a 512x512 image does). Adam."""
    import diffusers
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    x = torch.from_numpy(colour_fashion("train", 20000, 0))
    tiny = model == "taesd"
    vae = diffusers.AutoencoderTiny() if tiny else diffusers.AutoencoderKL(**SMALL)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        batch = x[torch.randint(0, len(x), (64,))] * 2 - 1
        if tiny:
            recon = vae.decode(vae.encode(batch).latents).sample
            loss = ((recon - batch) ** 2).sum((1, 2, 3)).mean()
        else:
            dist = vae.encode(batch).latent_dist
            recon = vae.decode(dist.sample()).sample
            loss = ((recon - batch) ** 2).sum((1, 2, 3)).mean() + 1e-3 * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 200 == 0:
            print(f"small {type(vae).__name__} step {i}: loss {loss.item():.1f}", flush=True)
    vae.eval().save_pretrained(folder)
    return {"class": type(vae).__name__, "steps": steps, "seconds": round(time.perf_counter() - t0),
            "final_loss": round(float(loss.item()), 2), "parameters": sum(p.numel() for p in vae.parameters())}


def quality(tmp: Path, steps: int, model: str = "sd") -> dict:
    """PSNR of each variant's reconstructions of held-out images (vs the images and vs fp32's) and
    the -ELBO delta quantize records, on the small trained model."""
    from vae_edge.runtime import VAERuntime

    trained = train_small(tmp / "small", steps, model)
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
    return {"trained": trained, "rows": rows, "tiles": seams(tmp / "sb", x)}


def seams(bundle: Path, x: np.ndarray, tile: int = 64) -> dict:
    """Tiled against whole decodes of 128x128 mosaics of 4x4 test images (fp32)."""
    from vae_edge.runtime import VAERuntime

    rt = VAERuntime.load(bundle, warn=lambda s: None)
    m = x[:64].reshape(4, 4, 4, 3, 32, 32).transpose(0, 3, 1, 4, 2, 5).reshape(4, 3, 128, 128)
    mu = rt.encode(np.ascontiguousarray(m))[0]
    whole = rt.decode(mu)
    rt.tile = tile
    tiled = rt.decode(mu)
    d = np.abs(tiled - whole)
    return {"images": len(m), "size": 128, "tile": tile, "max_diff": float(d.max()), "mean_diff": float(d.mean()),
            "psnr_db": psnr(tiled, whole)}


DEVICES = {  # --part devices: where the probe runs (emulated CPUs: their arithmetic, not their speed)
    "this CPU": None,
    "x86 AVX2 (qemu EPYC-Rome)": ("x86", "EPYC-Rome"),
    "ARM64 Neoverse-N1 (qemu)": ("arm64", "neoverse-n1"),
}


def devices(work: Path, model: str, n_images: int = 32, big: int = 64) -> dict:
    """The variants on other CPU families (emulated: what they compute, not how fast): the trained
    small model of --part quality reconstructing held-out images, and the real-size graphs of
    --part pipeline decoding a big x big image from a random latent, on this CPU, an AVX2-only x86
    (no VNNI: u8 x s8 products saturate at 16 bits) and ARM64. Adds to the small bundle the static
    variant quantize advises for AVX2 CPUs (--target x86-avx2: 7-bit weights)."""
    sys.path.insert(0, str(ROOT))
    from tools import arm64_env

    sb = work / "sb"
    if not (sb / "manifest.json").exists():
        sys.exit(f"--part devices needs the trained bundle of --part quality in --workdir ({sb} is missing)")
    made = json.loads((sb / "manifest.json").read_text())["variants"]
    if "int8-static-x86-avx2" not in made:
        step("quantize small static --target x86-avx2", "quantize", str(sb), "--mode", "static", "--target",
             "x86-avx2", "--calibration-data", str(work / "small-calib.npy"))
        made = json.loads((sb / "manifest.json").read_text())["variants"]
    x = colour_fashion("test", 500, 2)[:n_images]
    np.save(work / "dev-x.npy", x)
    jobs = {"small": {"path": str(sb), "variants": list(made), "inputs": str(work / "dev-x.npy"),
                      "call": "reconstruct"}}
    if (work / "b" / "manifest.json").exists():  # the real-size graphs (random weights)
        bm = json.loads((work / "b" / "manifest.json").read_text())
        c = bm["model"]["latent_shape"][0]
        np.save(work / "dev-z.npy", np.random.default_rng(3).standard_normal((1, c, big // 8, big // 8)).astype(np.float32))
        jobs["real size"] = {"path": str(work / "b"), "variants": list(bm["variants"]), "inputs": str(work / "dev-z.npy"),
                             "call": "decode"}
    spec = work / "dev-spec.json"
    spec.write_text(json.dumps({"bundles": jobs}))
    probe = str(ROOT / "benchmarks" / "diffusers_probe.py")
    env = arm64_env.ensure()
    shutil.rmtree(work / "arm64", ignore_errors=True)  # this checkout's code, not an earlier run's
    stage = arm64_env.stage_project(work / "arm64")

    def probe_on(name: str) -> tuple[dict, dict]:
        where, out = DEVICES[name], work / f"dev-{list(DEVICES).index(name)}.npz"
        t0 = time.perf_counter()
        if where is None:
            res = subprocess.run([sys.executable, probe, str(spec), str(out)], capture_output=True, text=True)
        elif where[0] == "x86":
            res = subprocess.run(["qemu-x86_64-static", "-cpu", where[1], sys.executable, probe, str(spec), str(out)],
                                 capture_output=True, text=True)
        else:
            res = env.run([probe, str(spec), str(out)], where[1], stage, timeout=7200)
        seconds = round(time.perf_counter() - t0)
        if res.returncode != 0:
            sys.exit(f"probe on {name} failed: {res.stderr.strip().splitlines()[-3:]}")
        print(f"{name}: {seconds} s", flush=True)
        return {**json.loads(res.stdout.strip().splitlines()[-1]), "seconds": seconds}, dict(np.load(out))

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(DEVICES)) as pool:  # one thread each: the emulated CPUs side by side
        done = dict(zip(DEVICES, pool.map(probe_on, DEVICES), strict=True))
    reports = {k: v[0] for k, v in done.items()}
    got = {k: v[1] for k, v in done.items()}
    here = got["this CPU"]
    rows = []
    for name, outs in got.items():
        rep = reports[name]
        for key, y in outs.items():
            bundle, variant = key.split("/", 1)
            run = rep["runs"][key]
            rows.append({"device": name, "onnxruntime": rep["onnxruntime"], "model": bundle,
                         "variant": variant, "refused": run.get("refused"),
                         "psnr_vs_images_db": psnr(y, x) if bundle == "small" else None,
                         "psnr_vs_fp32_here_db": psnr(y, here[f"{bundle}/fp32"]),
                         "psnr_vs_same_here_db": psnr(y, here[key]),
                         "max_diff_vs_same_here": float(np.max(np.abs(y.astype(np.float64) - here[key])))})
            print(rows[-1], flush=True)
    return {"images": n_images, "big": big, "rows": rows,
            "cpus": {k: {"machine": r["machine"], "target": r["cpu"]["targets"][0], "onnxruntime": r["onnxruntime"],
                         "probe_seconds": r["seconds"]} for k, r in reports.items()}}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float(round(10 * np.log10(1.0 / mse), 1)) if mse > 0 else None


def pipeline(work: Path, size: int, n_calib: int, n_eval: int, tiled_sizes: list[int], resume: bool,
             model: str = "sd") -> dict:
    """Every CLI step at the real size in a new process each: export, static int8 with n_calib
    calibration images, guarded fp16, and decodes of large images within the default --max-memory.

    Each step's row is kept in WORK/steps.json as it completes; with resume, a step whose row is
    there (and the model and bundle it worked on) is not run again: a run cut short goes on."""
    import torch

    cache_path = work / "steps.json"
    cache = json.loads(cache_path.read_text()) if resume and cache_path.exists() else {}
    torch.manual_seed(0)
    vae = _class(model)(**MODELS[model][1])
    params = {g: sum(p.numel() for n, p in vae.named_parameters() if n.startswith(g)) for g in ("encoder", "decoder")}
    if not (resume and (work / "sd-vae" / "config.json").exists()):
        vae.save_pretrained(work / "sd-vae")
        cache = {}  # a new model: nothing measured on the old one stands
    del vae
    # quantize keeps half the images it is given to calibrate, a quarter to choose the float layers
    # and a quarter to measure the accuracy (each quarter at most --eval-size)
    n = 2 * n_calib
    if not (resume and (work / "calib.npy").exists()):
        rng = np.random.default_rng(0)  # smooth colour fields, not noise, stored as 8-bit
        base = (rng.random((n, 3, 8, 8)) * 255).astype(np.uint8)
        np.save(work / "calib.npy", np.repeat(np.repeat(base, size // 8, axis=2), size // 8, axis=3))
        del base
    b, s_ = work / "b", str(size)

    def run(name: str, *args: str) -> dict:
        if name in cache:
            print(f"{name}: kept from {cache_path}", flush=True)
            return cache[name]
        row = cache[name] = step(name, *args)
        cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        return row

    steps = [run(f"export --diffusers (any size; {s_}x{s_} its own)", "export", "--diffusers", str(work / "sd-vae"),
                 "--input-shape", f"3,{s_},{s_}", "--out", str(b)),
             run(f"quantize --mode static, {n_calib} calibration images of {s_}x{s_}", "quantize", str(b), "--mode",
                 "static", "--calibration-data", str(work / "calib.npy"), "--eval-size", str(n_eval)),
             run(f"quantize --mode fp16 (guarded), {n_calib} images of {s_}x{s_}", "quantize", str(b), "--mode", "fp16",
                 "--calibration-data", str(work / "calib.npy"), "--eval-size", str(n_eval))]
    channels = json.loads((work / "sd-vae" / "config.json").read_text()).get("latent_channels", 4)
    for big in tiled_sizes:
        z = np.random.default_rng(1).standard_normal((1, channels, big // 8, big // 8)).astype(np.float32)
        np.save(work / f"z{big}.npy", z)
        for variant in ("int8-static", "fp32"):
            steps.append(run(f"decode {big}x{big}, {variant}, default --max-memory (2G)", "decode",
                             str(work / f"z{big}.npy"), "--bundle", str(b), "--variant", variant,
                             "-o", str(work / f"big{big}.npy")))
    steps.append(run(f"sample 1 image of {s_}x{s_} (its own size), int8-static", "sample", "-n", "1", "--bundle", str(b),
                     "--variant", "int8-static", "-o", str(work / "sample.png")))
    steps.append(run("verify (sha256 of every file, streamed; golden vectors of every variant)", "verify", str(b)))
    manifest = json.loads((b / "manifest.json").read_text())
    sizes = {v: round(sum(manifest["files"][f]["size"] for f in e["files"].values()) / 2**20, 1)
             for v, e in manifest["variants"].items()}
    return {"model": MODELS[model][2], "parameters": params, "steps": steps, "bundle_mb": sizes,
            "accuracy": {v: e.get("accuracy") for v, e in manifest["variants"].items() if v != "fp32"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512, help="The model's own size: calibration images, sample.")
    ap.add_argument("--calibration", type=int, default=64, help="Calibration images of --size.")
    ap.add_argument("--eval-size", type=int, default=8, help="Images of --size that choose float layers and measure.")
    ap.add_argument("--tiled", default="1024,2048", help="Sizes decoded within the default --max-memory.")
    ap.add_argument("--latency-sizes", default="256,512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="Leave torch.compile out of the latency table.")
    ap.add_argument("--train-steps", type=int, default=600, help="Steps of the small trained model (quality).")
    ap.add_argument("--model", choices=sorted(MODELS), default="sd",
                    help="sd: SD 1.x's AutoencoderKL; taesd: TAESD (AutoencoderTiny).")
    ap.add_argument("--part", choices=["pipeline", "latency", "quality", "devices", "all"], default="all",
                    help="Run one part (the others' results are kept from the results file).")
    ap.add_argument("--workdir", default=None, help="Keep the models and bundles here (latency reuses pipeline's).")
    ap.add_argument("--only", default=None, metavar="VARIANT",
                    help="latency: measure this vae-edge variant again alone (its rows replace the results file's, "
                         "marked); with --graphs.")
    ap.add_argument("--graphs", default="decode,encode", help="latency: decode, encode or both.")
    ap.add_argument("--resume", action="store_true",
                    help="pipeline: keep the steps already measured in --workdir (a run cut short goes on).")
    ap.add_argument("--name", default=None,
                    help="Results file: benchmarks/results/NAME.md and .json (diffusers, or diffusers-taesd).")
    args = ap.parse_args()
    from vae_edge.runtime.sysinfo import cpu

    out = ROOT / "benchmarks" / "results"
    args.name = args.name or ("diffusers" if args.model == "sd" else f"diffusers-{args.model}")
    path = out / f"{args.name}.json"
    report = json.loads(path.read_text()) if path.exists() and args.part != "all" else {}
    if report and "commands" not in report:  # a results file of the older layout: start afresh
        report = {}
    commands = report.get("commands", {})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/bench_diffusers.py " + " ".join(sys.argv[1:])
        if args.part in ("pipeline", "all"):
            report["pipeline"] = pipeline(work, args.size, args.calibration, args.eval_size,
                                          [int(n) for n in args.tiled.split(",") if n], args.resume, args.model)
            report["size"], commands["pipeline"] = args.size, cmd
        if args.part in ("latency", "all"):
            if not (work / "b").is_dir():
                sys.exit(f"--part latency needs the bundle of --part pipeline in --workdir ({work / 'b'} is missing)")
            rows = latency(work / "b", work / "sd-vae", [int(n) for n in args.latency_sizes.split(",")],
                           args.repeats, not args.no_compile, args.model, args.only, tuple(args.graphs.split(",")))
            if args.only:  # replace those rows of the earlier run, marked as measured again
                key = lambda r: (r["graph"], r["size"], r["who"], r["threads"])  # noqa: E731
                again = {key(r): {**r, "again": cmd} for r in rows}
                report["latency"] = [again.pop(key(r), r) for r in report.get("latency", [])] + list(again.values())
            else:
                report["latency"] = rows
                commands["latency"] = cmd
        if args.part in ("quality", "all"):
            report["quality"] = quality(work, args.train_steps, args.model)
            commands["quality"] = cmd
        if args.part in ("devices", "all"):
            report["devices"] = devices(work, args.model)
            commands["devices"] = cmd
    report["cpu"], report["commands"] = cpu(), commands
    path.write_text(json.dumps(report, indent=1) + "\n")
    md = render(report)
    (out / f"{args.name}.md").write_text(md)
    print(md)


def render(report: dict) -> str:
    info, md = report["cpu"], []
    p = report.get("pipeline")
    if p:
        params = p["parameters"]
        md += [f"Measured by `{report['commands']['pipeline']}` on {info['model']}, {info['cores']} cores: "
               f"{p.get('model', MODELS['sd'][2])} ({params['encoder'] / 1e6:.1f}M encoder, {params['decoder'] / 1e6:.1f}M "
               "decoder parameters; random weights), every step a new process.", "",
               "| step | time | peak RSS |", "|---|---:|---:|"]
        md += [f"| {s['step']}{' (' + s['measured'] + ')' if s.get('measured') else ''} | {s['seconds']:.0f} s | "
               f"{s['peak_rss_gb']:.2f} GiB |" for s in p["steps"]]
        md += ["", "| variant | size (both graphs) |", "|---|---:|"]
        md += [f"| {v} | {mb:.1f} MB |" for v, mb in p["bundle_mb"].items()]
    rows = report.get("latency")
    if rows:
        md += ["", f"Latency by `{report['commands']['latency']}` ({info['model']}, {info['cores']} cores): one image, "
               "median after a warm-up; against torch fp32's output (random weights: a check of the arithmetic, not "
               "of quality): the decoded image's PSNR, the encoder's largest latent difference.", "",
               "| graph | size | who | threads | ms | vs torch fp32 |", "|---|---:|---|---:|---:|---:|"]
        for r in rows:
            agree = (f"{r['psnr_db']} dB" if r.get("psnr_db") is not None else
                     f"max {r['max_diff']:g}" if r.get("max_diff") is not None else "")
            ms = f"{r['ms']:.0f}" if "ms" in r else f"failed ({r.get('failed', '')})"
            extra = f" (compiled in {r['compile_s']} s)" if r.get("compile_s") else ""
            mark = " (measured again: see below)" if r.get("again") else ""
            md.append(f"| {r['graph']} | {r['size']} | {r['who']}{extra}{mark} | {r['threads']} | {ms} | {agree} |")
        again = sorted({r["again"] for r in rows if r.get("again")})
        if again:
            md += ["", "Rows marked were measured again alone, after the run above, by " +
                   ", ".join(f"`{c}`" for c in again) + " (the vae-edge calls of the first run tiled at the default "
                   "--max-memory where the variant did not fit: they now run the whole image, as torch does)."]
    qual = report.get("quality")
    if qual:
        t = qual["trained"]
        what, nll = (("an AutoencoderTiny of TAESD's own config", "reconstruction NLL (Gaussian, sigma 0.05)")  # no KL
                     if t.get("class") == "AutoencoderTiny" else ("a small AutoencoderKL", "-ELBO"))
        md += ["", f"Quality by `{report['commands']['quality']}`, on {what} trained here "
               f"({t['parameters'] / 1e6:.2f}M parameters, {t['steps']} steps of Adam in {t['seconds']} s on tinted "
               "32x32 Fashion-MNIST), 500 held-out test images reconstructed; quantized with 256 training images:", "",
               f"| variant | PSNR vs the images | PSNR vs fp32's reconstruction | {nll} delta (quantize's record) |",
               "|---|---:|---:|---:|"]
        md += [f"| {r['variant']} | {r['psnr_vs_images_db']} dB | "
               f"{'(the reference)' if r['psnr_vs_fp32_db'] is None else str(r['psnr_vs_fp32_db']) + ' dB'} | "
               f"{'' if r['neg_elbo_delta_nats'] is None else format(r['neg_elbo_delta_nats'], '+.3f')} |"
               for r in qual["rows"]]
        seams = qual.get("tiles")
        if seams:
            md += ["", f"Tiles against the whole image, on the same trained model: {seams['images']} mosaics of "
                   f"{seams['size']}x{seams['size']} (16 test images each) encoded whole, decoded whole and in tiles of "
                   f"{seams['tile']} pixels (25% overlap, linear blending):", "",
                   "| | max abs difference | mean abs difference | PSNR tiled vs whole |", "|---|---:|---:|---:|",
                   f"| decode | {seams['max_diff']:.4f} | {seams['mean_diff']:.5f} | {seams['psnr_db']} dB |"]
    dev = report.get("devices")
    if dev:
        cpus = dev["cpus"]
        md += ["", f"Other CPU families by `{report['commands']['devices']}`: the same bundles on this CPU and, under "
               "qemu-user, on an AVX2-only x86 (no VNNI) and on ARM64, each running its own onnxruntime kernels "
               "(emulation reproduces what a CPU computes, not how fast; targets detected: "
               + ", ".join(f"{k} {v['target']}" for k, v in cpus.items()) + "). small: the trained model above reconstructing "
               f"{dev['images']} held-out test images; real size: the random-weights graphs above decoding one "
               f"{dev['big']}x{dev['big']} image from a random latent. A variant the self-check refuses at load is "
               "one a user of that CPU never gets (`--variant auto` takes the next); its row shows what it would "
               "have computed.", "",
               "| CPU (onnxruntime) | model | variant | at load | PSNR vs the images | vs fp32 on this CPU | "
               "vs the same variant on this CPU |", "|---|---|---|---|---:|---:|---:|"]
        def db(v):  # psnr() gives None for identical arrays
            return "identical" if v is None else f"{v} dB"

        for r in dev["rows"]:
            md.append(f"| {r['device']} ({r['onnxruntime']}) | {r['model']} | {r['variant']} | "
                      f"{'refused by the self-check' if r['refused'] else 'runs'} | "
                      f"{db(r['psnr_vs_images_db']) if r['model'] == 'small' else ''} | {db(r['psnr_vs_fp32_here_db'])} | "
                      f"{db(r['psnr_vs_same_here_db'])} |")
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
