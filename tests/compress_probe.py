"""Bits-back files across devices (tests/test_arm64.py runs this under x86 and emulated ARM64):

    python compress_probe.py DIR TAG [OTHER_TAG ...]

compresses DIR/x.npy (or a pair's own array: a third entry, a file name in DIR; a fourth, "float":
with the variant's float graphs, not the bundle's portable network) with each (bundle, variant) of
DIR/pairs.json into DIR/<bundle>.<variant>.<TAG>.vaez, decompresses its own files (they
must come back exactly) and, given OTHER_TAGs, the files other devices wrote; prints one JSON line:
{pair: {"own": ..., "other": "exact" | "refused: ..." | "WRONG", "others": {tag: ...}}} ("other":
the first OTHER_TAG's)."""

import json
import sys
from pathlib import Path

import numpy as np

from vae_edge.runtime import VAERuntime


def attempt(rt, path: Path, x: np.ndarray) -> str:
    try:
        return "exact" if np.array_equal(rt.decompress(path.read_bytes()), x) else "WRONG"
    except Exception as e:  # what a user would see: the line, not a traceback
        return f"refused: {e}"


def main() -> None:
    d, tag, others = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    out = {}
    for bundle, variant, *arr in json.loads((d / "pairs.json").read_text()):
        x = np.load(d / (arr[0] if arr else "x.npy"))
        portable = len(arr) < 2 or arr[1] != "float"  # "float": code with the float graphs even if it has one
        rt = VAERuntime.load(bundle, variant=variant, self_check=False)
        stem = "-".join(Path(bundle).parts[-2:])  # e.g. mlp-mnist-bundle
        own = d / f"{stem}.{variant}.{tag}.vaez"
        own.write_bytes(rt.compress(x, portable=portable))
        row = out[f"{bundle}/{variant}"] = {"own": attempt(rt, own, x)}
        if others:
            row["others"] = {o: attempt(rt, d / f"{stem}.{variant}.{o}.vaez", x) for o in others}
            row["other"] = row["others"][others[0]]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
