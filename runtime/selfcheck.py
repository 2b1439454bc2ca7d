"""Golden vectors: a device checks that it computes what the bundle's maker computed.

Where a variant is made (export, quantize), a few fixed inputs are run through its two graphs and
the outputs are stored in the manifest with a tolerance derived from the variant's own accuracy
record. `VAERuntime.load` runs them once (one small batch per graph) and refuses a variant whose
outputs on this device differ by more than that: a CPU whose int8 kernels compute other numbers
must never return silently wrong images. numpy + onnxruntime only.
"""

from __future__ import annotations

import base64
import platform
from collections.abc import Callable

import numpy as np

from vae_edge import VaeEdgeError

N_GOLDEN = 4
LARGE_IMAGE = 64 * 64 * 3  # image values from which one golden image is recorded, not four (the
                           # manifest holds them: four 512x512 decodes were 17 MB per variant)
FP32_TOL = 1e-4  # float kernels differ by rounding across CPUs (FMA, summation order)
INT8_FLOOR = 2e-3  # one activation-quantization step may round the other way on another CPU
# A quantized variant whose outputs here miss the maker's by more than its tolerance is still taken
# if it is as accurate here as there: against the fp32 variant's golden outputs (the same inputs),
# its RMS deviation at most ACCURACY_RMS times the maker's (1 dB) and its largest at most
# ACCURACY_MAX times (and only when the maker's golden outputs agree with the variant's accuracy
# record: their largest deviation within ACCURACY_MAX times the recorded one). In a deep int8
# network a float op computed by other kernels (likely the tanh that begins TAESD's decoder) flips a
# few activation steps that later layers carry far: a trained TAESD
# decoder's int8 outputs moved by 0.146 on an AVX2-only x86 (tolerance 0.046) while its RMS deviation
# from fp32 went from 0.0094 to 0.0102 and its images stayed within 0.1 dB (docs/diffusers.md).
# Kernels that compute something else land far outside both (0.93 in probability for the SME case).
ACCURACY_RMS = 1.25
ACCURACY_MAX = 2.0


class SelfCheckFailed(VaeEdgeError):
    """A variant computes other numbers on this device than where it was made."""


def _enc(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _enc_images(x: np.ndarray) -> dict:
    """Images on the 1/255 grid, stored exactly as bytes."""
    return {**_enc(np.round(x * 255).astype(np.uint8)), "scale": 1 / 255}


def _dec(d: dict) -> np.ndarray:
    try:
        a = np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise VaeEdgeError(f"a golden vector in the manifest is malformed: {e}") from None
    return (a.astype(np.float32) * np.float32(d["scale"])) if "scale" in d else a


def golden_inputs(manifest: dict) -> dict[str, np.ndarray]:
    """Fixed inputs: latents from a seeded normal; images with digit-like structure made from a
    seeded pattern (no dataset needed), on the 1/255 grid so they are stored exactly. Any image
    and latent shape (the manifest's); for 1x28x28 and vector latents, the same numbers as ever."""
    cfg = manifest["model"]
    spatial = cfg.get("spatial") or {}  # graphs of any size: checked at the small size recorded
    c, h, w = (int(n) for n in (spatial.get("check_image_shape") or cfg.get("image_shape") or (1, 28, 28)))
    latent = tuple(int(n) for n in (spatial.get("check_latent_shape") or cfg.get("latent_shape") or (cfg["latent_dim"],)))
    rng = np.random.default_rng(20251125)
    n_golden = 1 if c * h * w > LARGE_IMAGE else N_GOLDEN
    z = rng.standard_normal((n_golden, int(np.prod(latent)))).astype(np.float32).reshape(n_golden, *latent)
    yy, xx = np.mgrid[0:h, 0:w]
    scale = min(h, w) / 28
    imgs = []
    for i in range(n_golden):
        cy, cx = h / 2 + rng.normal(0, 2) * scale, w / 2 + rng.normal(0, 2) * scale
        r = (6 + 2 * i) * scale
        ring = np.exp(-((np.hypot(yy - cy, xx - cx) - r) ** 2) / (4.0 * scale * scale))
        imgs.append(np.clip(ring + 0.1 * rng.random((c, h, w)), 0, 1))
    x = np.round(np.stack(imgs) * 255).astype(np.uint8).astype(np.float32) * np.float32(1 / 255)
    out = {"z": z, "x": x}
    if cfg.get("conditional"):
        out["y"] = np.arange(n_golden, dtype=np.int64) % 10
    return out


def _feeds(graph: str, inputs: dict) -> dict:
    key = "x" if graph == "encoder" else "z"
    return {key: inputs[key], **({"y": inputs["y"]} if "y" in inputs else {})}


def session_runner(models: dict, so=None) -> Callable[[str, dict], np.ndarray]:
    """A run(graph, feeds) over CPU sessions of {graph: path or bytes}, default session options
    (the runtime's defaults: all graph optimizations)."""
    import onnxruntime as ort

    sessions = {g: ort.InferenceSession(m if isinstance(m, bytes) else str(m), sess_options=so,
                                        providers=["CPUExecutionProvider"]) for g, m in models.items()}
    return lambda graph, feeds: sessions[graph].run([CHECKED[graph]], feeds)[0]


def tolerances(variant_entry: dict) -> dict[str, float]:
    """fp32: rounding only. Quantized: half the variant's own deviation from fp32 (recorded on
    the whole test set), never below a floor; a kernel that computes something else lands far
    outside (0.93 in probability for the case that prompted this)."""
    acc = variant_entry.get("accuracy") or {}
    if variant_entry.get("dtype", "float32") == "float32" or not acc:
        return {"encoder": FP32_TOL, "decoder": FP32_TOL}
    return {"encoder": max(INT8_FLOOR, 0.5 * float(acc.get("encoder_mu_max_abs_diff", 0.0))),
            "decoder": max(INT8_FLOOR, 0.5 * float(acc.get("decoder_probs_max_abs_diff", 0.0)))}


CHECKED = {"encoder": "mu", "decoder": "probs"}  # the output of each graph that is compared


def record(manifest: dict, entry: dict, run: Callable[[str, dict], np.ndarray]) -> dict:
    """Golden vectors for one variant (its manifest entry): run(graph, feeds) -> that graph's
    checked output (encoder mu, decoder probs), computed on this machine."""
    inputs = golden_inputs(manifest)
    outputs = {g: _enc(np.asarray(run(g, _feeds(g, inputs)), np.float32)) for g in ("encoder", "decoder")}
    return {
        "inputs": {k: _enc_images(v) if k == "x" else _enc(v) for k, v in inputs.items()},
        "outputs": outputs,
        "tolerance": tolerances(entry),
        "made_on": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def reference_outputs(variants: dict, variant: str) -> dict | None:
    """What a quantized variant's accuracy on this device is judged by: the fp32 variant's golden
    outputs (the same inputs) and the largest deviation from fp32 the variant's accuracy record
    gives per graph. None for fp32 itself, a float32 variant, one without an accuracy record, or
    when fp32's golden inputs are not this variant's."""
    entry, fp32 = variants.get(variant) or {}, variants.get("fp32") or {}
    g, ref, acc = entry.get("golden") or {}, fp32.get("golden") or {}, entry.get("accuracy") or {}
    recorded = {"encoder": acc.get("encoder_mu_max_abs_diff"), "decoder": acc.get("decoder_probs_max_abs_diff")}
    if (variant == "fp32" or entry.get("dtype", "float32") == "float32" or not ref or ref.get("inputs") != g.get("inputs")
            or None in recorded.values()):
        return None
    try:
        return {"outputs": {k: _dec(ref["outputs"][k]) for k in ("encoder", "decoder")},
                "recorded_max": {k: float(v) for k, v in recorded.items()}}
    except (KeyError, TypeError, ValueError):
        return None


def _as_accurate(got: np.ndarray, want: np.ndarray, ref: np.ndarray, recorded_max: float) -> tuple[bool, str]:
    """Is this device's output (got) as close to fp32's (ref) as the maker's (want) was? Only when
    the maker's golden outputs agree with the variant's accuracy record (their deviation from fp32
    within ACCURACY_MAX times the recorded largest): recorded outputs that do not are no yardstick."""
    own, here = want - ref, got - ref

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt(np.mean(a * a)))

    own_max, here_max = float(np.max(np.abs(own))), float(np.max(np.abs(here)))
    if own_max > ACCURACY_MAX * recorded_max:
        return False, (f"its recorded outputs are {own_max:.3g} from fp32's, beyond its accuracy record "
                       f"({recorded_max:.3g}): no yardstick")
    ok = rms(here) <= ACCURACY_RMS * rms(own) and here_max <= ACCURACY_MAX * own_max
    return ok, (f"it is less accurate here: RMS deviation from fp32 {rms(here):.3g} against {rms(own):.3g} where "
                f"it was made, largest {here_max:.3g} against {own_max:.3g}")


def check(variant: str, golden: dict, run: Callable[[str, dict], np.ndarray],
          reference: dict | None = None) -> dict[str, float]:
    """Run the golden inputs; returns the max |difference| per graph, or raises SelfCheckFailed.

    reference: the fp32 variant's golden outputs (reference_outputs): a quantized variant whose
    outputs miss the maker's by more than the tolerance passes if it is as accurate here as there."""
    try:
        inputs = {k: _dec(v) for k, v in golden["inputs"].items()}
        wants = {g: _dec(golden["outputs"][g]) for g in ("encoder", "decoder")}
    except (KeyError, TypeError) as e:
        raise VaeEdgeError(f"variant {variant}: its golden vectors in the manifest are malformed ({e})") from None
    diffs = {}
    for graph in ("encoder", "decoder"):
        got = np.asarray(run(graph, _feeds(graph, inputs)), np.float64)
        want = wants[graph]
        if got.shape != want.shape:
            raise SelfCheckFailed(f"variant {variant} fails its self-check: {graph} output shape {list(got.shape)} "
                                  f"is not the recorded {list(want.shape)}")
        d = float(np.max(np.abs(got - want))) if np.all(np.isfinite(got)) else float("inf")
        diffs[graph] = d
        tol = float(golden["tolerance"][graph])
        if d <= tol:
            continue
        accuracy = ""
        ref = reference["outputs"][graph] if reference is not None else None
        if ref is not None and np.isfinite(d) and ref.shape == want.shape:
            ok, accuracy = _as_accurate(got, want.astype(np.float64), ref.astype(np.float64),
                                        reference["recorded_max"][graph])
            if ok:
                continue
            accuracy = f", and {accuracy}"
        raise SelfCheckFailed(
            f"variant {variant} fails its self-check on this device: its {graph} outputs differ by {d:.3g} "
            f"from those recorded where it was made ({golden.get('made_on', '?')}; tolerance {tol:.3g}){accuracy}; "
            "this CPU's kernels compute other numbers for it: use another variant (e.g. --variant auto)"
        )
    return diffs


def record_bundle(bundle, only_missing: bool = True, log: Callable[[str], None] | None = None,
                  drop_signature_ok: bool = True) -> list[str]:
    """Maker side: (re)record the golden vectors of a bundle's variants on this machine (those
    without any, or all). Writes the manifest atomically; a signature is voided and removed, or,
    with drop_signature_ok=False, the bundle is refused before anything changes."""
    from pathlib import Path

    from vae_edge.runtime.bundle import SIGNATURE, open_bundle
    from vae_edge.runtime.bundle_writer import drop_signature
    from vae_edge.runtime.files import locked, write_json_atomic

    bundle = Path(bundle)
    with locked(bundle, "record"):
        opened = open_bundle(bundle)
        manifest = opened.manifest
        todo = [v for v, entry in manifest["variants"].items() if not (only_missing and entry.get("golden"))]
        if todo and not drop_signature_ok and (bundle / SIGNATURE).exists():
            raise VaeEdgeError(f"{bundle} is signed and its variant(s) {', '.join(todo)} have no golden vectors: "
                               "recording them changes the manifest and would void the signature; record before "
                               "signing (`vae-edge verify --record`, then `vae-edge sign`)")
        done = []
        for v in todo:
            entry = manifest["variants"][v]
            entry["golden"] = record(manifest, entry, session_runner(opened.variant_bytes(v)))
            done.append(v)
        if done:
            drop_signature(bundle, log)
            write_json_atomic(bundle / "manifest.json", manifest)
    return done
