"""Recipe for the shipped pretrained models: train, evaluate, slim, export, quantize.

    python vae_edge/pretrained/make_pretrained.py --data-dir ../shared/data/mnist

`--reuse-runs` takes runs/<name>/model.pt made earlier by exactly the commands printed here.
The results land in vae_edge/pretrained/<name>/{model.pt, evaluation.json, bundle/}, and each run's
training log (loss, seconds and device per epoch) in benchmarks/results/training_logs/<name>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from vae_edge import recipes  # the recipes are data: vae_edge/recipes/<name>.toml

HERE = Path(__file__).resolve().parent
PREVIOUS = recipes.PREVIOUS  # in `--init-from @previous-stage`: the run folder of the stage before


def _table(shipped: bool) -> dict:
    """name: (train stages as `vae-edge train` arguments, quantize (mode, target) pairs, IW samples,
    IW test images (None: all 10,000), weights dtype of the shipped files), from the recipes; why
    each is what it is: the recipe's `why`."""
    out = {}
    for name in recipes.names():
        r = recipes.load(name)
        if r.shipped == shipped:
            out[name] = ([recipes.stage_argv(st) for st in r.stages], list(r.quantize), r.iw_samples, r.iw_images,
                         r.weights_dtype)
    return out


MODELS = _table(shipped=True)  # the shipped models
EXPERIMENTS = _table(shipped=False)  # what they were chosen against


def _last_per_stage(rows: list[dict]) -> list[dict]:
    last: dict = {}
    for r in rows:
        last[r.get("stage", 1)] = r
    return list(last.values())


def sh(*args: str) -> str:
    print("+ " + " ".join(args), flush=True)
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout


def stage_folders(run: Path, stages: list[list[str]]) -> list[Path]:
    """The run folder of each training stage. A stage with `--resume` continues the folder before
    it; one with `--init-from PREVIOUS` starts a new run from the previous stage's weights (a
    fine-tune), so the stages before it train in <name>-stage<N> beside the final run folder."""
    groups = [0]
    for args in stages[1:]:
        groups.append(groups[-1] + (PREVIOUS in args))
    last = groups[-1]
    return [run if g == last else run.with_name(f"{run.name}-stage{g + 1}") for g in groups]


def _rows(folders: list[Path]) -> list[dict]:
    """Every epoch of every stage (a stage's folder read once), tagged with its stage when several."""
    distinct = list(dict.fromkeys(folders))
    rows = []
    for stage, f in enumerate(distinct, 1):
        tag = {"stage": stage} if len(distinct) > 1 else {}
        rows += [{**json.loads(line), **tag} for line in (f / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows


def training_log(folders: list[Path]) -> str:
    return "".join(json.dumps(r) + "\n" for r in _rows(folders))


def training_record(folders: list[Path]) -> dict:
    """Wall time of the training epochs of all stages (metrics.jsonl) and the hardware they ran on."""
    import platform

    from vae_edge.runtime.sysinfo import environment

    rows = _rows(folders)
    return {"train_seconds": round(sum(r.get("seconds", 0) for r in rows), 1),
            "train_epochs": sum(r["epoch"] for r in _last_per_stage(rows)) if rows else None,
            "train_hardware": f"{environment()['cpu']['model']} ({rows[-1].get('device', 'cpu') if rows else 'cpu'}, "
                              f"{platform.machine()})"}


def add_portable(name: str, sign_key: str | None) -> None:
    """Give a shipped bundle made before portable networks existed its portable network (its graphs,
    golden vectors and evaluation unchanged) as the next release: `compress` then codes with it,
    and its files open on every device. The manifest changes, so the bundle is re-signed."""
    from vae_edge.export.onnx_export import add_portable as build_portable
    from vae_edge.export.portable import eligible
    from vae_edge.runtime.files import write_json_atomic
    from vae_edge.train import load_checkpoint, model_from_checkpoint

    bundle = HERE / name / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    if "portable" in manifest:
        print(f"{name}: has a portable network already")
        return
    model = model_from_checkpoint(load_checkpoint(HERE / name / "model.pt")).eval()  # the weights the graphs hold
    if (why := eligible(model)) is not None:
        print(f"{name}: no portable network ({why})")
        return
    build_portable(bundle, model, manifest, log=print)
    release = manifest.pop("release", 0) + 1
    items = list(manifest.items())
    at = [k for k, _ in items].index("name") + 1  # the release beside the name, as export writes it
    manifest = dict(items[:at] + [("release", release)] + items[at:])
    write_json_atomic(bundle / "manifest.json", manifest)
    (bundle / "model.sig").unlink(missing_ok=True)  # stale: the manifest changed
    if sign_key:
        sh(sys.executable, "-m", "vae_edge", "sign", str(bundle), "--key", sign_key)
    print(f"{name}: portable network added, release {manifest['release']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--reuse-runs", action="store_true", help="Skip training where runs/<name>/model.pt exists.")
    ap.add_argument("--only", choices=list(MODELS) + list(EXPERIMENTS), default=None)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--sign-key", default=None, help="Private key to sign the bundles with (the project key).")
    ap.add_argument("--add-portable", action="store_true",
                    help="Only add portable networks to the shipped bundles that lack one (--only NAME: that one).")
    args = ap.parse_args()
    if args.add_portable:
        for name in [args.only] if args.only else list(MODELS):
            add_portable(name, args.sign_key)
        return
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    exe = [sys.executable, "-m", "vae_edge"]
    Path(args.runs).mkdir(exist_ok=True)
    for name, (stages, modes, k, limit, weights) in {**MODELS, **EXPERIMENTS}.items():
        if (args.only and name != args.only) or (not args.only and name in EXPERIMENTS):
            continue
        run = Path(args.runs) / name
        folders = stage_folders(run, stages)
        if not (args.reuse_runs and (run / "model.pt").is_file()):
            for i, train_args in enumerate(stages):
                if args.reuse_runs and i < len(stages) - 1 and folders[i] != folders[i + 1] \
                        and (folders[i] / "model.pt").is_file():
                    continue  # a finished earlier stage that a fine-tune starts from
                seed = [] if "--resume" in train_args or "--seed" in train_args else ["--seed", "0"]
                stage_args = [str(folders[i - 1]) if a == PREVIOUS else a for a in train_args]
                sh(*exe, "train", *stage_args, "--out", str(folders[i]), "--threads", args.threads, "--quiet", *seed, *data)
        dest = HERE / name
        dest.mkdir(exist_ok=True)
        from vae_edge.train import atomic_torch_save, load_checkpoint, slim_checkpoint

        # What ships is evaluated: the slimmed checkpoint (its weights rounded to fp16 where
        # `weights` says so), not the training run's.
        ckpt = slim_checkpoint(load_checkpoint(run / "model.pt"), weights)
        atomic_torch_save(ckpt, dest / "model.pt")
        lim = ["--limit", str(limit)] if limit else []
        ev_full = json.loads(sh(*exe, "evaluate", str(dest / "model.pt"), "--iw-samples", "0", "--json", *data))
        ev = ev_full if k == 0 else json.loads(sh(*exe, "evaluate", str(dest / "model.pt"), "--iw-samples", str(k),
                                                   *lim, "--threads", args.threads, "--json", *data))
        evaluation = {**ev_full, "iw_nll": ev["iw_nll"], "iw_samples": k or None,
                      "iw_images": ev["images"] if k else None, "weights": weights, **training_record(folders)}
        ckpt["evaluation"] = evaluation
        atomic_torch_save(ckpt, dest / "model.pt")
        (dest / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        logs = HERE.parents[1] / "benchmarks" / "results" / "training_logs"  # per-epoch loss, time, device
        if logs.parent.is_dir():  # a clone (not an installed package)
            logs.mkdir(exist_ok=True)
            (logs / f"{name}.jsonl").write_text(training_log(folders))
        if (dest / "bundle").exists():
            shutil.rmtree(dest / "bundle")
        sh(*exe, "export", str(dest / "model.pt"), "--out", str(dest / "bundle"), *data)
        for mode, target in modes:
            sh(*exe, "quantize", str(dest / "bundle"), "--mode", mode, "--target", target, *data)
        if args.sign_key:  # the project key's private half is kept off the repository
            sh(*exe, "sign", str(dest / "bundle"), "--key", args.sign_key)
    print("done: " + ", ".join(str(HERE / n) for n in MODELS if not args.only or n == args.only))


if __name__ == "__main__":
    main()
