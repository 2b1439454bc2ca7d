"""Execution providers: short names, options, sessions, and an explicit check for fallback."""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

from vae_edge import VaeEdgeError

logger = logging.getLogger(__name__)

# short name -> (onnxruntime provider, the package whose build has it)
PROVIDERS: dict[str, tuple[str, str]] = {
    "cpu": ("CPUExecutionProvider", "onnxruntime"),
    "cuda": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": ("TensorrtExecutionProvider", "onnxruntime-gpu (with TensorRT installed)"),
    "openvino": ("OpenVINOExecutionProvider", "onnxruntime-openvino"),
    "coreml": ("CoreMLExecutionProvider", "onnxruntime (its macOS/iOS build)"),
    "xnnpack": ("XnnpackExecutionProvider", "onnxruntime (its Android/iOS builds, or a source build with --use_xnnpack)"),
    "qnn": ("QNNExecutionProvider", "onnxruntime-qnn"),
    "dml": ("DmlExecutionProvider", "onnxruntime-directml"),
    "acl": ("ACLExecutionProvider", "a source build of onnxruntime with --use_acl (Arm Compute Library)"),
}
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(VaeEdgeError):
    pass


def available() -> list[str]:
    """Short names of the providers this onnxruntime build has."""
    have = set(ort.get_available_providers())
    return [short for short, (full, _) in PROVIDERS.items() if full in have]


def parse_provider_options(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['device_id=0', 'trt_fp16_enable=1'] -> dict; a bad item is a user error."""
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise VaeEdgeError(f"provider option {item!r} is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def resolve(names: list[str] | tuple[str, ...] | None, options: dict[str, str] | None = None,
            strict: bool = False, warn=None) -> list:
    """Short names, in order of preference -> the providers list for InferenceSession, CPU last as
    the fallback. A provider this onnxruntime build lacks is skipped with a note (an error with
    strict, or when none of those asked for is available). Options apply to the first provider
    that is used."""
    names = list(names or ["cpu"])
    have = set(ort.get_available_providers())
    for short in names:
        if short not in PROVIDERS:
            raise VaeEdgeError(f"unknown provider {short!r}: choose from {', '.join(PROVIDERS)}")
    missing = [s for s in names if PROVIDERS[s][0] not in have]
    usable = [s for s in names if PROVIDERS[s][0] in have]
    if missing and (strict or not usable):
        short = missing[0]
        full, package = PROVIDERS[short]
        raise ProviderUnavailable(
            f"provider {short} ({full}) is not in this onnxruntime build "
            f"(it has: {', '.join(available())}); install {package}" + (" (--strict)" if usable else "")
        )
    if missing and warn is not None:
        warn(f"note: skipping provider(s) {', '.join(missing)}, not in this onnxruntime build "
             f"(install {PROVIDERS[missing[0]][1]}); using {', '.join(usable)}")
    out = []
    for i, short in enumerate(usable):
        full = PROVIDERS[short][0]
        out.append((full, dict(options or {})) if i == 0 and options else full)
    if "CPUExecutionProvider" not in [p if isinstance(p, str) else p[0] for p in out]:
        out.append("CPUExecutionProvider")
    return out


def max_threads() -> int:
    """The most intra-op threads a session may ask for: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def session_options(threads: int | None = None, opt_level: str = "all") -> ort.SessionOptions:
    if opt_level not in OPT_LEVELS:
        raise VaeEdgeError(f"unknown graph optimization level {opt_level!r}: {', '.join(OPT_LEVELS)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    if threads is not None:
        cores = os.cpu_count() or 1
        if not isinstance(threads, int) or isinstance(threads, bool) or threads <= 0:
            raise VaeEdgeError(f"threads must be a positive whole number, got {threads!r}")
        if threads > max_threads():
            raise VaeEdgeError(f"--threads {threads} is more than this machine's {cores} CPU(s) can use: "
                               f"give at most {max_threads()} (more threads than cores only slow a call down)")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def make_session(
    model: str | os.PathLike | bytes,
    providers: list,
    so: ort.SessionOptions,
    strict: bool = False,
    warn=None,
    name: str | None = None,
) -> ort.InferenceSession:
    """Create a session (from a path, or from bytes already checked) and compare the providers it
    uses with those asked for (Olive's check_ort_fallback): a fallback is said in one line, or is an
    error with strict."""
    path = name or ("<bytes>" if isinstance(model, bytes) else str(model))
    try:
        sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=so,
                                    providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaeEdgeError(f"onnxruntime cannot load {path}: {first}") from e
    asked = [p if isinstance(p, str) else p[0] for p in providers]
    used = sess.get_providers()
    missing = [p for p in asked if p != "CPUExecutionProvider" and p not in used]
    if missing:
        msg = (f"onnxruntime fell back from {', '.join(missing)} to {', '.join(used)} "
               f"for {os.path.basename(str(path))}")
        if strict:
            raise ProviderUnavailable(msg + " (--strict)")
        (warn or logger.warning)("warning: " + msg)
    return sess
