"""The evaluation classifier: a small MNIST CNN whose predictions score conditional samples
("asked for a 3, looks like a 3?") and whose 128-d penultimate features give a Frechet distance
between generated and real digits (vae_edge.sample_quality). Trained here in PyTorch, shipped as
one small ONNX graph (vae_edge/pretrained/classifier/), run with onnxruntime.

    python -m vae_edge.classifier --data-dir ../shared/data/mnist     # re-makes the shipped one
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vae_edge.data import load_split, resolve_data_dir, to_float

logger = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent / "pretrained" / "classifier"
FEATURES = 128


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, 14, 14]
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [B, 64, 7, 7]
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 49, FEATURES), nn.ReLU())
        self.out = nn.Sequential(nn.Dropout(0.25), nn.Linear(FEATURES, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, 28, 28] in [0, 1] -> (logits [B, 10], features [B, 128])."""
        f = self.fc(self.conv(x))
        return self.out(f), f


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translations of up to 2 px (generated digits are not all centred like MNIST's)."""
    pad = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
    return pad[:, :, dy : dy + 28, dx : dx + 28]


def train_classifier(data_dir=None, epochs: int = 4, seed: int = 0, log=None) -> tuple[Classifier, dict]:
    log = log or logger.info
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d = resolve_data_dir("mnist", data_dir)
    xtr, ytr = load_split(d, "train")
    xte, yte = load_split(d, "test")
    xtr, xte = torch.from_numpy(to_float(xtr)), torch.from_numpy(to_float(xte))
    ytr, yte = torch.from_numpy(ytr.astype(np.int64)), torch.from_numpy(yte.astype(np.int64))
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(xtr) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 128):
            idx = perm[i : i + 128]
            logits, _ = model(_shift(xtr[idx], gen))
            loss = F.cross_entropy(logits, ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xte, yte)
        log(f"epoch {epoch + 1}/{epochs}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)")
    info = {"test_accuracy_torch": acc, "epochs": epochs, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    return model, info


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 1000])[0].argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def export_classifier(model: Classifier, out: Path, info: dict) -> None:
    """classifier.onnx (inputs x [B,1,28,28]; outputs logits [B,10], features [B,128]) and
    classifier.json (its sha256, accuracy and recipe)."""
    import hashlib

    import onnx

    from vae_edge.export.weights import weights_as_fp16
    from vae_edge.runtime.files import write_bytes_atomic, write_json_atomic

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "classifier.tmp.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(tmp), input_names=["x"],
                      output_names=["logits", "features"], opset_version=18, dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    data = weights_as_fp16(onnx.load_from_string(tmp.read_bytes())).SerializeToString()
    tmp.unlink()
    import onnxruntime as ort

    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))
    if diff > 0.05:  # fp16-rounded weights: about 1e-3 on logits and features
        raise RuntimeError(f"the exported classifier differs from PyTorch by {diff}")
    write_bytes_atomic(out / "classifier.onnx", data)
    write_json_atomic(out / "classifier.json", {**info, "test_accuracy": onnx_accuracy(data),
                                                "weights": "fp16 storage (Cast to fp32), fp32 arithmetic",
                                                "sha256": hashlib.sha256(data).hexdigest(),
                                                "max_abs_diff_vs_torch_fp16_weights": diff,
                                                "recipe": "python -m vae_edge.classifier --data-dir DIR"})


def onnx_accuracy(data: bytes, data_dir=None) -> float:
    """Test accuracy of the exported graph itself (what evaluations use)."""
    import onnxruntime as ort

    d = resolve_data_dir("mnist", data_dir)
    x, y = load_split(d, "test")
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(["logits"], {"x": to_float(x[i : i + 1000])})[0].argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(SHIPPED))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the epochs, on stderr
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = train_classifier(args.data_dir, args.epochs)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), Path(args.out) / "classifier.state.pt")  # kept if the export fails
    export_classifier(model, Path(args.out), info)
    (Path(args.out) / "classifier.state.pt").unlink()
    print(json.dumps(info))


if __name__ == "__main__":
    main()
