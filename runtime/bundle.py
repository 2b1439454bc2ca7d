"""The model bundle: encoder/decoder ONNX files plus manifest.json (numpy-free, torch-free)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vae_edge import VaeEdgeError

MANIFEST = "manifest.json"
SCHEMA = "vae-edge-bundle"
SCHEMA_VERSION = 1
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "fp16")
GRAPHS = ("encoder", "decoder")


def variant_filename(graph: str, variant: str, ext: str = ".onnx") -> str:
    """encoder.onnx for fp32, encoder.int8-static.onnx for the others."""
    return f"{graph}{ext}" if variant == "fp32" else f"{graph}.{variant}{ext}"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_manifest(bundle: str | os.PathLike) -> dict:
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise VaeEdgeError(f"bundle {bundle} does not exist or is not a folder")
    path = bundle / MANIFEST
    if not path.is_file():
        raise VaeEdgeError(f"{bundle} is not a vae-edge bundle (no {MANIFEST}): make one with `vae-edge export`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise VaeEdgeError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise VaeEdgeError(f"{path} is not a vae-edge manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise VaeEdgeError(
            f"{path} has schema version {manifest.get('schema_version')}; this vae-edge reads {SCHEMA_VERSION}"
        )
    return manifest


def verify_files(bundle: str | os.PathLike, manifest: dict, names: list[str] | None = None) -> None:
    """Check that each listed file exists with the sha256 and size the manifest records."""
    bundle = Path(bundle)
    files = manifest.get("files", {})
    for name in names if names is not None else list(files):
        entry = files.get(name)
        if entry is None:
            raise VaeEdgeError(f"{bundle}: {name} is not listed in the manifest")
        path = bundle / name
        if not path.is_file():
            raise VaeEdgeError(f"{bundle}: {name} is missing; re-export the bundle")
        if path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            raise VaeEdgeError(f"{bundle}: {name} does not match its sha256 in the manifest (tampered or corrupt)")


def variant_files(manifest: dict, variant: str) -> dict[str, str]:
    variants = manifest.get("variants", {})
    if variant not in variants:
        have = ", ".join(variants) or "none"
        raise VaeEdgeError(
            f"this bundle has no {variant!r} variant (it has: {have}); "
            f"make it with `vae-edge quantize BUNDLE --mode ...`"
        )
    return variants[variant]["files"]


def add_variant(bundle: Path, manifest: dict, variant: str, entry: dict) -> dict:
    """Record a variant and its files' checksums; write the manifest atomically."""
    manifest.setdefault("variants", {})[variant] = entry
    for name in list(entry["files"].values()) + list(entry.get("ort_files", {}).values()):
        manifest.setdefault("files", {})[name] = file_entry(bundle / name)
    write_json_atomic(bundle / MANIFEST, manifest)
    return manifest


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder into place (the old one goes only once the new is done)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
