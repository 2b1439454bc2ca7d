"""Bits-back files across devices (tests/test_arm64.py runs this under x86 and emulated ARM64):

    python compress_probe.py DIR TAG [OTHER_TAG]

compresses DIR/x.npy with each (bundle, variant) of DIR/pairs.json into DIR/<bundle>.<variant>.<TAG>.vaez,
decompresses its own files (they must come back exactly) and, given OTHER_TAG, the files another
device wrote; prints one JSON line: {pair: {"own": ..., "other": "exact" | "refused: ..." | "WRONG"}}."""

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
    d, tag = Path(sys.argv[1]), sys.argv[2]
    other = sys.argv[3] if len(sys.argv) > 3 else None
    x = np.load(d / "x.npy")
    out = {}
    for bundle, variant in json.loads((d / "pairs.json").read_text()):
        rt = VAERuntime.load(bundle, variant=variant, self_check=False)
        own = d / f"{bundle}.{variant}.{tag}.vaez"
        own.write_bytes(rt.compress(x))
        out[f"{bundle}/{variant}"] = {"own": attempt(rt, own, x)}
        if other:
            out[f"{bundle}/{variant}"]["other"] = attempt(rt, d / f"{bundle}.{variant}.{other}.vaez", x)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
