"""Sample quality through the evaluation classifier (vae_edge/classifier.py, shipped as ONNX):
the Frechet distance between generated digits and real test digits in its 128-d feature space
("FID" with an MNIST classifier instead of Inception), and, for conditional models, how often a
sample asked for digit d is classified as d. numpy + onnxruntime only.

Samples are the decoder's Bernoulli means (what `vae-edge sample` shows), drawn with a fixed seed.
The floor is the distance between two real sets (10,000 training digits vs the test set).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError

CLASSIFIER = Path(__file__).resolve().parent / "pretrained" / "classifier"


class EvalClassifier:
    """The shipped classifier in an onnxruntime session (its sha256 is checked first)."""

    def __init__(self, folder: str | Path = CLASSIFIER, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        try:
            self.info = json.loads((folder / "classifier.json").read_text())
            data = (folder / "classifier.onnx").read_bytes()
        except (OSError, ValueError) as e:
            raise VaeEdgeError(f"the evaluation classifier in {folder} cannot be read: {e}") from e
        if hashlib.sha256(data).hexdigest() != self.info.get("sha256"):
            raise VaeEdgeError(f"{folder / 'classifier.onnx'} does not match its sha256 in classifier.json")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """x [N, 1, 28, 28] in [0, 1] -> (logits [N, 10], features [N, 128])."""
        outs = [self.session.run(None, {"x": np.ascontiguousarray(x[i : i + batch], np.float32)})
                for i in range(0, len(x), batch)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def feature_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), with the matrix square root taken through
    the symmetric S_a^1/2 S_b S_a^1/2 (eigh: stable, no scipy)."""
    (ma, sa), (mb, sb) = a, b
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((ma - mb) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def sample_quality(
    bundle=None,
    variants: tuple[str, ...] = ("all",),
    samples: int = 10000,
    seed: int = 0,
    data_dir=None,
    threads: int | None = None,
    classifier: EvalClassifier | None = None,
    warn=lambda s: None,
) -> dict:
    """Frechet distance (classifier features) of each variant's samples to the MNIST test set, and
    the conditional accuracy of conditional models; with the real-vs-real floor."""
    from vae_edge.data import load_slice
    from vae_edge.runtime.bundle import load_manifest
    from vae_edge.runtime.vae_runtime import VAERuntime, resolve_bundle

    if samples < 100 or samples > 60000:
        raise VaeEdgeError(f"samples must lie in 100-60000 (a covariance of 128 features), got {samples}")
    clf = classifier or EvalClassifier(threads=threads)
    test, ytest = load_slice("mnist:test", data_dir)
    train, _ = load_slice(f"mnist:train[0:{min(samples, 10000)}]", data_dir)
    logits, f_test = clf.run(test)
    real = feature_stats(f_test)
    out = {"classifier": {k: clf.info.get(k) for k in ("test_accuracy", "parameters", "sha256")},
           "test_accuracy_here": float((logits.argmax(1) == ytest).mean()),
           "floor_train_vs_test": frechet_distance(feature_stats(clf.run(train)[1]), real),
           "samples": samples, "seed": seed, "rows": []}
    path = resolve_bundle(bundle)
    manifest = load_manifest(path)
    names = list(manifest["variants"]) if "all" in variants else list(variants)
    for v in names:
        with VAERuntime.load(path, variant=v, threads=threads, warn=warn) as rt:
            row = {"variant": v}
            if rt.conditional:
                per = samples // 10
                xs = [rt.sample(per, seed=seed + d, digit=d) for d in range(10)]
                x, want = np.concatenate(xs), np.repeat(np.arange(10), per)
                pred = clf.run(x)[0].argmax(1)
                row["conditional_accuracy"] = float((pred == want).mean())
                row["per_digit"] = [float((pred[want == d] == d).mean()) for d in range(10)]
            else:
                x = np.concatenate([rt.sample(min(4096, samples - i), seed=seed + i)
                                    for i in range(0, samples, 4096)])
            row["frechet"] = frechet_distance(feature_stats(clf.run(x)[1]), real)
            out["rows"].append(row)
    return out
