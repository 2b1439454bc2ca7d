"""Training recipes as data: one TOML file per model (`vae_edge/recipes/<name>.toml`), read by
`vae-edge train --recipe NAME[:STAGE]` and by `vae_edge/pretrained/make_pretrained.py`, which
makes the shipped models from them.

A recipe holds its training stages (`[[stage]]` tables of `vae-edge train` options, dashes as
underscores; a later stage resumes the run with `resume = true` or fine-tunes it with
`init_from = "@previous-stage"`), what make_pretrained quantizes and evaluates, and why it is
what it is (`why`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from vae_edge import VaeEdgeError

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

PREVIOUS = "@previous-stage"  # in init_from: the run folder of the stage before


@dataclass(frozen=True)
class Recipe:
    name: str
    why: str
    stages: tuple[dict, ...]  # each: `vae-edge train` options (underscored names) -> values
    quantize: tuple[tuple[str, str], ...]  # (mode, target) pairs for the shipped bundle
    iw_samples: int = 0  # K of the torch IW-NLL evaluation (0: none)
    iw_images: int | None = None  # test images it covers (None: all)
    weights_dtype: str = "float32"  # of the shipped checkpoint and graphs
    shipped: bool = False

    def argv(self, stage: int = 0) -> list[str]:
        """Stage `stage` (0-based) as `vae-edge train` arguments."""
        return stage_argv(self.stages[stage])


def stage_argv(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return args


def names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load(name: str) -> Recipe:
    path = resources.files(__name__) / f"{name}.toml"
    if not path.is_file():
        raise VaeEdgeError(f"no recipe {name!r}: choose from {', '.join(names())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise VaeEdgeError(f"recipe {name}: {e}") from None
    stages = tuple(data.get("stage") or ())
    if not stages:
        raise VaeEdgeError(f"recipe {name} has no [[stage]]")
    return Recipe(name=name, why=data.get("why", "").strip(), stages=stages,
                  quantize=tuple(tuple(q) for q in data.get("quantize", [])),
                  iw_samples=int(data.get("iw_samples", 0)), iw_images=data.get("iw_images"),
                  weights_dtype=data.get("weights_dtype", "float32"), shipped=bool(data.get("shipped", False)))
