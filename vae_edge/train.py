"""Training: Adam, beta and KL warm-up, seeded, resumable, atomic checkpoints every epoch."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vae_edge import VaeEdgeError
from vae_edge.data import get_spec, load_split, resolve_data_dir
from vae_edge.model import VAE, VAEConfig, elbo_terms, reconstruction_nll
from vae_edge.runtime.files import fsync_dir, sha256_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vae-edge-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "model.pt"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "none"  # none | cosine
    beta: float = 1.0
    kl_warmup: float = 0.0  # epochs over which the KL weight ramps from 0 to beta
    binarize: str = "none"  # none (greyscale targets) | dynamic (fresh Bernoulli draw per use)
    dataset: str = "mnist"
    seed: int = 0
    max_steps: int | None = None
    # Importance samples per image in the objective: 1 is the ELBO; k > 1 is the IWAE bound
    # (Burda et al. 2015), tighter, which trains models with a better log-likelihood.
    iw_k: int = 1
    # Your own images instead of a named dataset (.npy/.npz arrays, image files, folders): dataset
    # is then "custom", and their sha256 is recorded so that --resume refuses other data.
    data: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "iw_k"):
            if int(getattr(self, name)) <= 0:
                raise VaeEdgeError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise VaeEdgeError(f"learning rate must be positive, got {self.lr}")
        if self.binarize not in ("none", "dynamic"):
            raise VaeEdgeError(f"unknown binarize mode {self.binarize!r}: none or dynamic")
        if self.lr_schedule not in ("none", "cosine"):
            raise VaeEdgeError(f"unknown lr schedule {self.lr_schedule!r}: none or cosine")
        if self.max_steps is not None and self.max_steps <= 0:
            raise VaeEdgeError(f"max steps must be positive, got {self.max_steps}")
        self.data = tuple(self.data)
        if self.data:
            self.dataset = "custom"
        else:
            get_spec(self.dataset)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise VaeEdgeError("--device cuda asked for, but this torch build sees no CUDA GPU")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VaeEdgeError("--device mps asked for, but MPS is not available here")
    if device not in ("cpu", "cuda", "mps"):
        raise VaeEdgeError(f"unknown device {device!r}: auto, cpu, cuda or mps")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def atomic_torch_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the checkpoint
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a vae-edge checkpoint (weights_only=True: no pickled code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise VaeEdgeError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise VaeEdgeError(f"{path} is not a vae-edge checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise VaeEdgeError(f"{path} is not a vae-edge checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise VaeEdgeError(
            f"{path} is a checkpoint of version {ckpt.get('version')}; this vae-edge reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict) -> VAE:
    model = VAE(VAEConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def slim_checkpoint(ckpt: dict, weights_dtype: str = "float32") -> dict:
    """The checkpoint without optimizer and RNG state: what ships and what export needs.
    weights_dtype="float16" rounds the weights to fp16 and stores them so (half the file): the
    model is then those fp16 values, computed in fp32 (loading upcasts them), and `export` stores
    its fp32 graphs' weights as fp16 too, losslessly."""
    if weights_dtype not in ("float32", "float16"):
        raise VaeEdgeError(f"weights dtype must be float32 or float16, got {weights_dtype!r}")
    keep = ("format", "version", "config", "train_config", "model", "epoch", "step", "metrics", "dataset")
    slim = {k: ckpt[k] for k in keep if k in ckpt}
    if weights_dtype == "float16":
        slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return slim


def fp16_weights(ckpt: dict) -> bool:
    """Whether a checkpoint stores its weights as fp16 (slim_checkpoint(..., "float16"))."""
    return any(v.dtype == torch.float16 for v in ckpt["model"].values())


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def load_train_tensors(dataset: str, data_dir, device: torch.device, data: tuple[str, ...] = (),
                       shape: tuple[int, int, int] = (1, 28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images [N, C, H, W] in [0, 1] and their labels (-1 for the user's own data)."""
    if data:
        from vae_edge.runtime.images import load_inputs

        images, _ = load_inputs(list(data), data_dir, shape=shape)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return x, torch.full((len(x),), -1, dtype=torch.int64, device=device)
    directory = resolve_data_dir(dataset, data_dir, split="train")
    images, labels = load_split(directory, "train")
    x = torch.from_numpy(images).to(device).float().div_(255.0).unsqueeze(1)  # [N, 1, 28, 28]
    return x, torch.from_numpy(labels.astype(np.int64)).to(device)


def data_digest(x: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()


def kl_weight(tc: TrainConfig, progress_epochs: float) -> float:
    if tc.kl_warmup <= 0:
        return tc.beta
    return tc.beta * min(1.0, progress_epochs / tc.kl_warmup)


def iwae_loss(model: VAE, x: torch.Tensor, y: torch.Tensor | None, k: int, kl_w: float,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The IWAE bound with k samples per image, negated and averaged over the batch; with the
    summed reconstruction NLL and the summed sampled KL (log q - log p) for the log. During KL
    warm-up the weight scales log p(z) - log q(z|x) inside each importance weight."""
    mu, logvar = model.encode(x, y)
    eps = torch.randn((k, *mu.shape), generator=gen, device=mu.device, dtype=mu.dtype)
    z = mu + eps * torch.exp(0.5 * logvar)  # [k, B, D]
    yk = None if y is None else y.repeat(k)
    logits = model.decode(z.flatten(0, 1), yk)  # [k*B, C', H, W] (C' = 2C for logistic)
    target = x.repeat(k, *([1] * (x.dim() - 1)))  # [k*B, C, H, W], in z's order
    rec = reconstruction_nll(logits, target, model.cfg).flatten(1).sum(-1).view(k, len(x))
    # log q(z|x) - log p(z), per sample [k, B] (the 2*pi terms cancel)
    kl = 0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)
    log_w = -rec - kl_w * kl
    loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    return loss, rec.mean(0).sum().detach(), kl.mean(0).sum().detach()


@dataclass(frozen=True)
class Dist:
    """This process's place in a distributed run (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def _init_distributed(dist: Dist, dev: torch.device) -> None:
    """gloo on CPUs, NCCL on GPUs (torchrun gives the rendezvous in MASTER_ADDR/MASTER_PORT)."""
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=dist.rank, world_size=dist.world)


@dataclass
class _Run:
    """What one training run carries from phase to phase."""
    cfg: VAEConfig
    tc: TrainConfig
    dev: torch.device
    model: VAE
    opt: torch.optim.Optimizer
    sched: object
    gen: torch.Generator
    x_all: torch.Tensor
    y_all: torch.Tensor
    steps_per_epoch: int
    epoch: int = 0
    step_in_epoch: int = 0
    step: int = 0
    perm: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)
    dist: Dist = field(default_factory=Dist)
    ddp: object = None  # the DistributedDataParallel wrapper when dist.world > 1


def train(
    model_cfg: VAEConfig,
    tc: TrainConfig,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    init_from: str | os.PathLike | None = None,
) -> dict:
    """Train a VAE; write out/model.pt every epoch and out/metrics.jsonl. Returns the last metrics.

    init_from: a checkpoint (a run's or a shipped slim one) whose weights start this run, with a
    fresh optimizer, schedule and KL warm-up: fine-tuning, e.g. on the IWAE bound (--iw-k) after an
    ELBO run. The architecture is the checkpoint's; model_cfg is not used. The parent's path, hash
    and step count are recorded in the run's train config.

    Phases: where to start (_starting_point), the run's state (_new_run, _restore), then epochs
    (_train_epoch), each followed by a checkpoint (_save).
    """
    out = Path(out)
    if not out.parent.is_dir():
        raise VaeEdgeError(f"the folder of --out {out} does not exist (only the last level is created)")
    log = log or logger.info
    dist = dist_from_env()
    dev = pick_device(device)
    if dist.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(dev)
    model_cfg, tc, state, parent = _starting_point(model_cfg, tc, out / CHECKPOINT_NAME, resume, init_from, dev)
    if dist.world > 1:
        if tc.iw_k != 1:
            raise VaeEdgeError("distributed training runs the ELBO (--iw-k 1); train the IWAE bound on one process")
        _init_distributed(dist, dev)
    run = _new_run(model_cfg, tc, dev, data_dir)
    _restore(run, state, parent)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.dist = dist
        run.ddp = DistributedDataParallel(run.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        log = log if dist.main else (lambda s: None)
        progress = progress and dist.main
    if dist.main:
        out.mkdir(exist_ok=True)
    run.model.train()
    stopped = False
    while run.epoch < tc.epochs and not stopped:
        row, stopped = _train_epoch(run, progress)
        if dist.main:  # one checkpoint, written by rank 0; the others wait for it
            _save(run, row, out)
        if run.step_in_epoch == 0:  # the epoch finished: the next one draws a new order
            run.perm = None
        if dist.world > 1:
            import torch.distributed as td

            td.barrier()
        log(f"epoch {row['epoch']:.2f}  loss {row['train_loss']:.2f}  rec {row['train_rec']:.2f}  "
            f"kl {row['train_kl']:.2f}  {row['images_per_s'] or 0:.0f} img/s")
    return run.metrics


def _starting_point(model_cfg: VAEConfig, tc: TrainConfig, ckpt_path: Path, resume: bool, init_from, dev):
    """(model config, train config, the checkpoint resumed or None, the parent fine-tuned or None)."""
    state = parent = None
    if resume:
        state = load_checkpoint(ckpt_path, map_location=dev)
        if "optimizer" not in state:
            raise VaeEdgeError(f"{ckpt_path} has no optimizer state (a shipped slim checkpoint?): cannot resume")
        model_cfg = VAEConfig.from_dict(state["config"])
        saved_tc = dict(state["train_config"])
        saved_tc["epochs"] = tc.epochs  # resuming may extend the run
        saved_tc["max_steps"] = tc.max_steps
        tc = TrainConfig(**saved_tc)
    elif ckpt_path.exists():
        raise VaeEdgeError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    if init_from is not None and not resume:  # a resumed fine-tune already holds its weights
        parent_path = Path(init_from)
        if parent_path.is_dir():
            parent_path = parent_path / CHECKPOINT_NAME
        parent = load_checkpoint(parent_path, map_location=dev)
        model_cfg = VAEConfig.from_dict(parent["config"])
        tc = replace(tc, extra={**tc.extra, "init_from": {
            "path": str(parent_path), "sha256": sha256_file(parent_path), "step": parent.get("step"),
            "train_config": parent.get("train_config")}})
    return model_cfg, tc, state, parent


def _new_run(model_cfg: VAEConfig, tc: TrainConfig, dev: torch.device, data_dir) -> _Run:
    torch.manual_seed(tc.seed)
    model = VAE(model_cfg).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    if tc.binarize == "dynamic" and model_cfg.likelihood != "bernoulli":
        raise VaeEdgeError("--binarize dynamic draws binary targets: it needs --likelihood bernoulli")
    x_all, y_all = load_train_tensors(tc.dataset, data_dir, dev, tc.data, model_cfg.image_shape)
    if tc.data:
        if model_cfg.conditional:
            raise VaeEdgeError("a conditional model needs labels: train it on a dataset (--dataset), not --data")
        digest = data_digest(x_all)
        if tc.extra.get("data_sha256", digest) != digest:
            raise VaeEdgeError("--data holds other images than the run was started on (their sha256 differs): "
                               "an exact resume needs the same data")
        tc.extra["data_sha256"] = digest
    steps_per_epoch = math.ceil(len(x_all) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    sched = None
    if tc.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
        )
    gen = torch.Generator(device=dev).manual_seed(tc.seed)
    return _Run(model_cfg, tc, dev, model, opt, sched, gen, x_all, y_all, steps_per_epoch)


def _restore(run: _Run, state: dict | None, parent: dict | None) -> None:
    """Resume a checkpoint's weights, counters and random state, or start from a parent's weights."""
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.gen.set_state(state["rng"].cpu() if run.dev.type == "cpu" else state["rng"])
        run.epoch, run.step_in_epoch, run.step = state["epoch"], state["step_in_epoch"], state["step"]
        run.perm = state["perm"].to(run.dev) if run.step_in_epoch else None
        # The optimizer's state goes in after the scheduler is made: making a LambdaLR sets every
        # group's lr to lambda(0), which would silently train the first resumed step at the wrong
        # learning rate (resumed runs then drift from uninterrupted ones).
        run.opt.load_state_dict(state["optimizer"])
        if run.sched is not None and state.get("scheduler"):
            run.sched.load_state_dict(state["scheduler"])
        run.metrics = dict(state.get("metrics", {}))
    elif parent is not None:
        run.model.load_state_dict(parent["model"])  # as model_from_checkpoint: fp16 weights upcast on load


def _train_step(run: _Run, idx: torch.Tensor, b: int) -> tuple[torch.Tensor, int]:
    """One optimizer step on the images at idx; returns [loss, rec, kl] summed over them, and their count."""
    tc, model = run.tc, run.model
    x, y = run.x_all[idx], run.y_all[idx]
    if tc.binarize == "dynamic":
        x = torch.bernoulli(x, generator=run.gen)
    w = kl_weight(tc, run.epoch + b / run.steps_per_epoch)
    bs = len(idx)
    yc = y if run.cfg.conditional else None
    if run.ddp is not None:
        return _distributed_step(run, x, yc, w, bs)
    if tc.iw_k == 1:
        logits, mu, logvar = model(x, yc, generator=run.gen)
        rec, kl = elbo_terms(x, logits, mu, logvar, reduction="sum", cfg=run.cfg)
        loss = (rec + w * kl) / bs
    else:
        loss, rec, kl = iwae_loss(model, x, yc, tc.iw_k, w, run.gen)
    _optimize(run, loss)
    with torch.no_grad():
        return torch.stack([rec + w * kl, rec, kl]), bs


def _optimize(run: _Run, loss: torch.Tensor) -> None:
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if run.sched is not None:
        run.sched.step()


def _distributed_step(run: _Run, x: torch.Tensor, y: torch.Tensor | None, w: float, bs: int) -> tuple[torch.Tensor, int]:
    """The same step with the global batch split across ranks: every rank draws the whole batch's
    targets and noise (so the draws are the single process's), computes its rows, and DDP's
    all-reduce (a mean) of world x (its rows' loss / the global batch) gives every rank the
    gradient of the global batch's loss: the step of one process, up to float summation order."""
    import torch.distributed as td

    d = run.dist
    eps = torch.randn((bs, run.cfg.latent_dim), generator=run.gen, device=run.dev)
    rows = torch.tensor_split(torch.arange(bs, device=run.dev), d.world)[d.rank]
    xs, es = x[rows], eps[rows]
    logits, mu, logvar = run.ddp(xs, None if y is None else y[rows], eps=es)
    rec, kl = elbo_terms(xs, logits, mu, logvar, reduction="sum", cfg=run.cfg)
    _optimize(run, d.world * (rec + w * kl) / bs)
    with torch.no_grad():
        terms = torch.stack([rec + w * kl, rec, kl])
        td.all_reduce(terms)  # the global batch's sums, for the log
        return terms, bs


def _train_epoch(run: _Run, progress: bool) -> tuple[dict, bool]:
    """The rest of the current epoch (or up to max_steps); returns its metrics row and whether
    max_steps stopped it."""
    tc = run.tc
    if run.perm is None:
        run.perm = torch.randperm(len(run.x_all), generator=run.gen, device=run.dev)
    t0 = time.perf_counter()
    sums = torch.zeros(3, device=run.dev)  # loss, rec, kl summed over images; read once per epoch
    seen, stopped = 0, False
    with _progress(range(run.step_in_epoch, run.steps_per_epoch), progress,
                   f"epoch {run.epoch + 1}/{tc.epochs}") as it:
        for b in it:
            terms, bs = _train_step(run, run.perm[b * tc.batch_size : (b + 1) * tc.batch_size], b)
            run.step += 1
            run.step_in_epoch = b + 1
            seen += bs
            sums += terms
            if progress and run.step % 10 == 0:  # the bar's running loss: one sync every 10 steps
                it.running_loss = float(sums[0]) / seen
            if tc.max_steps is not None and run.step >= tc.max_steps:
                stopped = True
                break
    sum_loss, sum_rec, sum_kl = (float(v) for v in sums)
    seconds = time.perf_counter() - t0
    spe = run.steps_per_epoch
    finished_epoch = run.step_in_epoch == spe
    row = {
        "epoch": run.epoch + (1 if finished_epoch else run.step_in_epoch / spe),
        "step": run.step,
        "train_loss": sum_loss / max(seen, 1),
        "train_rec": sum_rec / max(seen, 1),
        "train_kl": sum_kl / max(seen, 1),
        "kl_weight": kl_weight(tc, run.epoch + run.step_in_epoch / spe),
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else None,
        "device": run.dev.type,
    }
    if finished_epoch:
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
    run.metrics = row
    return row, stopped


def _save(run: _Run, row: dict, out: Path) -> None:
    """The checkpoint (atomically: everything a resume needs) and the metrics row."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": run.cfg.to_dict(),
        "train_config": asdict(run.tc),
        "dataset": run.tc.dataset,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict() if run.sched is not None else None,
        "rng": run.gen.get_state(),
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch,
        "step": run.step,
        "perm": run.perm.cpu(),
        "metrics": run.metrics,
    }
    atomic_torch_save(ckpt, out / CHECKPOINT_NAME)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


class _Bar:
    """click's progress bar with the running loss shown beside it (to stderr)."""

    def __init__(self, iterable, label: str):
        import click

        self.running_loss = float("nan")
        self._bar = click.progressbar(
            iterable, label=label, file=sys.stderr, show_pos=True,
            item_show_func=lambda _: f"loss {self.running_loss:.2f}",
        )

    def __enter__(self):
        self._it = self._bar.__enter__()
        return self

    def __iter__(self):
        return iter(self._it)

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)


class _NoBar:
    def __init__(self, iterable):
        self._iterable = iterable

    def __enter__(self):
        return self

    def __iter__(self):
        return iter(self._iterable)

    def __exit__(self, *exc):
        return False


def _progress(iterable, enabled: bool, label: str):
    return _Bar(iterable, label) if enabled else _NoBar(iterable)
