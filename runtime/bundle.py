"""The model bundle: encoder/decoder ONNX files plus manifest.json (numpy-free, torch-free).

This module is the one place that maps a manifest's file names to bytes. A name must be a plain
file name inside the bundle folder (no separators, no `..`, no links), listed in the manifest
with its sha256; the bytes that were hashed are the bytes handed to onnxruntime, so a file
cannot change between the check and the load. Signatures (`model.sig`) are checked here too,
through `vae_edge.runtime.trust`, over one in-memory snapshot of the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vae_edge import VaeEdgeError

MANIFEST = "manifest.json"
SIGNATURE = "model.sig"  # OpenSSF model-signing's conventional name
SCHEMA = "vae-edge-bundle"
SCHEMA_VERSION = 1
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "fp16")
GRAPHS = ("encoder", "decoder")
MAX_FILE_BYTES = 1 << 30  # a bundle file larger than this is refused


class BundleError(VaeEdgeError):
    """A bundle is missing, malformed, damaged, tampered with, or not trusted."""


def variant_filename(graph: str, variant: str, ext: str = ".onnx") -> str:
    """encoder.onnx for fp32, encoder.int8-static.onnx for the others."""
    return f"{graph}{ext}" if variant == "fp32" else f"{graph}.{variant}{ext}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see the old or the new file,
    never a part; the temporary file is removed if anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _finite(obj):
    """JSON has no Infinity or NaN (browsers refuse them): such floats are written as null (a
    decoder PSNR of a variant whose outputs equal fp32's is infinite)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: dict) -> None:
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------
# Names and bytes
# ---------------------------------------------------------------------------------------------

def check_name(name: object, where: object = "bundle") -> str:
    """A manifest file name must be a plain file name: it cannot leave the bundle folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name) or name.startswith("~")):
        raise BundleError(f"{where}: the manifest names the file {name!r}, which is not a plain file name "
                          "inside the bundle folder (refused)")
    return name


def read_file(bundle: Path, name: str) -> bytes:
    """The bytes of one file of the bundle folder; links and anything but regular files are refused."""
    check_name(name, bundle)
    path = Path(bundle) / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: {name} is missing") from None
    except OSError as e:
        if os.path.islink(path):
            raise BundleError(f"{bundle}: {name} is a symbolic link; bundle files must be regular files") from None
        raise BundleError(f"{bundle}: cannot read {name}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{bundle}: {name} is not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BundleError(f"{bundle}: {name} is {st.st_size} bytes, over the {MAX_FILE_BYTES} limit")
        return f.read()


def parse_manifest(raw: bytes, where: object) -> dict:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not a vae-edge manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{where} has schema version {manifest.get('schema_version')!r}; this vae-edge reads {SCHEMA_VERSION}"
        )
    for key in ("files", "variants", "model"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{where}: the manifest has no {key!r} table")
    for name, entry in manifest["files"].items():
        check_name(name, where)
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int)):
            raise BundleError(f"{where}: the manifest entry of {name!r} needs a sha256 and a size")
    for variant, entry in manifest["variants"].items():
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or set(files) != set(GRAPHS):
            raise BundleError(f"{where}: variant {variant!r} must name an encoder and a decoder file")
        for graph, name in files.items():
            check_name(name, where)
            if name not in manifest["files"]:
                raise BundleError(f"{where}: {graph} file {name!r} of variant {variant!r} is not listed "
                                  "with a checksum in the manifest (refused)")
    return manifest


def _check_dir(bundle: Path) -> None:
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a folder")
    if not (bundle / MANIFEST).exists() and not (bundle / MANIFEST).is_symlink():
        raise BundleError(f"{bundle} is not a vae-edge bundle (no {MANIFEST}): make one with `vae-edge export`")


def load_manifest(bundle: str | os.PathLike) -> dict:
    bundle = Path(bundle)
    _check_dir(bundle)
    return parse_manifest(read_file(bundle, MANIFEST), bundle / MANIFEST)


def checked(bundle: Path, manifest: dict, name: str, data: bytes) -> bytes:
    entry = manifest["files"].get(name)
    if entry is None:
        raise BundleError(f"{bundle}: {name} is not listed in the manifest")
    if len(data) != entry["size"] or sha256_bytes(data) != entry["sha256"]:
        raise BundleError(f"{bundle}: {name} does not match its sha256 in the manifest (tampered or corrupt)")
    return data


def verify_files(bundle: str | os.PathLike, manifest: dict, names: list[str] | None = None) -> None:
    """Check that each listed file exists with the sha256 and size the manifest records."""
    bundle = Path(bundle)
    for name in names if names is not None else list(manifest.get("files", {})):
        checked(bundle, manifest, check_name(name, bundle), read_file(bundle, name))


def variant_files(manifest: dict, variant: str, bundle: object = "BUNDLE") -> dict[str, str]:
    variants = manifest.get("variants", {})
    if variant not in variants:
        have = ", ".join(variants) or "none"
        mode = {"int8-dynamic": "dynamic", "int8-static": "static", "fp16": "fp16"}.get(variant, "auto")
        raise BundleError(
            f"this bundle has no {variant!r} variant (it has: {have}); "
            f"make it with `vae-edge quantize {bundle} --mode {mode}` (needs pip install 'vae-edge[export]')"
        )
    return variants[variant]["files"]


# ---------------------------------------------------------------------------------------------
# An opened bundle
# ---------------------------------------------------------------------------------------------

def user_tuning_file(manifest: dict) -> Path:
    """Where `vae-edge tune` records its choice for a bundle it must not modify (a shipped or a
    signed one): the user cache, keyed by the manifest's content."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = sha256_bytes(json.dumps({k: v for k, v in manifest.items() if k != "tuning"}, sort_keys=True).encode())
    return Path(base) / "vae-edge" / "tuning" / f"{key[:32]}.json"


def tuning(manifest: dict) -> dict:
    """The recorded tuning of a bundle: in its manifest, else in the user cache; {} if never tuned."""
    if manifest.get("tuning"):
        return manifest["tuning"]
    path = user_tuning_file(manifest)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Bundle:
    """A bundle opened for reading. `signature` says what was established about its origin:
    'verified' (signed by the trusted key), 'unchecked' (signed, no key to check with) or 'unsigned'."""

    path: Path
    manifest: dict
    signature: str = "unsigned"
    key: str | None = None
    _snapshot: dict[str, bytes] = field(default_factory=dict, repr=False)

    def read(self, name: str) -> bytes:
        """The checked bytes of a listed file (from the verified snapshot when there is one)."""
        check_name(name, self.path)
        data = self._snapshot.get(name)
        if data is None:
            if self.signature == "verified":  # everything was snapshotted when the signature was checked
                raise BundleError(f"{self.path}: {name} is not part of the signed bundle")
            data = read_file(self.path, name)
        return checked(self.path, self.manifest, name, data)

    def variant_bytes(self, variant: str) -> dict[str, bytes]:
        """Both graphs of one variant; a damaged variant is named, the others stay usable."""
        files = variant_files(self.manifest, variant, self.path)
        try:
            return {graph: self.read(name) for graph, name in files.items()}
        except BundleError as e:
            mode = {"int8-dynamic": "dynamic", "int8-static": "static", "fp16": "fp16"}.get(variant)
            fix = (f"re-make it with `vae-edge quantize {self.path} --mode {mode}`" if mode
                   else "re-export the bundle")
            raise BundleError(f"variant {variant} is damaged: {e}; other variants still load; {fix}") from None


def open_bundle(
    bundle: str | os.PathLike,
    trusted_key: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
    key_label: str | None = None,
) -> Bundle:
    """Open a bundle: parse its manifest and, with a trusted public key, verify its signature
    over a snapshot of every file in the folder (anything changed, added or removed after signing
    is refused). Without a key, a signed bundle loads as before, with a note."""
    bundle = Path(bundle)
    _check_dir(bundle)
    if trusted_key is None:
        manifest = load_manifest(bundle)
        signed = (bundle / SIGNATURE).exists() or (bundle / SIGNATURE).is_symlink()
        if signed and warn is not None:
            warn(f"note: {bundle} is signed, but its signature was not checked (no trusted key): "
                 "pass --trusted-key PUBLIC.pem or set VAE_EDGE_TRUSTED_KEY")
        return Bundle(bundle, manifest, "unchecked" if signed else "unsigned")

    from vae_edge.runtime import trust

    snapshot = snapshot_folder(bundle)
    if SIGNATURE not in snapshot:
        raise BundleError(f"{bundle} is not signed (no {SIGNATURE}), and a trusted key is set: refused "
                          "(sign it with `vae-edge sign`)")
    trust.verify_snapshot(snapshot, trusted_key, where=bundle)
    manifest = parse_manifest(snapshot[MANIFEST], bundle / MANIFEST)
    for name in manifest["files"]:  # the signature covers the folder; the manifest must agree with it
        if name not in snapshot:
            raise BundleError(f"{bundle}: {name} is listed in the manifest but is not in the signed bundle")
    return Bundle(bundle, manifest, "verified", key_label or str(trusted_key), snapshot)


def snapshot_folder(bundle: Path) -> dict[str, bytes]:
    """Every file of a (flat) bundle folder, read once. Sub-folders and links are refused."""
    out = {}
    for entry in sorted(os.scandir(bundle), key=lambda e: e.name):
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            raise BundleError(f"{bundle}: {entry.name} is not a regular file; a signed bundle holds files only")
        out[entry.name] = read_file(bundle, entry.name)
    if MANIFEST not in out:
        raise BundleError(f"{bundle} is not a vae-edge bundle (no {MANIFEST})")
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def drop_signature(bundle: Path, log: Callable[[str], None] | None = None) -> None:
    """A change to a signed bundle voids its signature: remove it and say so."""
    sig = Path(bundle) / SIGNATURE
    if sig.exists() or sig.is_symlink():
        sig.unlink()
        if log:
            log(f"note: {bundle} changed, so its signature was removed; re-sign it with `vae-edge sign`")


def add_variant(bundle: Path, manifest: dict, variant: str, entry: dict, log=None) -> dict:
    """Record a variant and its files' checksums; the new files must already be in place.
    The manifest is written last (atomically), then files no variant uses any more are removed."""
    before = set(manifest.get("files", {}))
    manifest.setdefault("variants", {})[variant] = entry
    for name in list(entry["files"].values()) + list(entry.get("ort_files", {}).values()):
        manifest.setdefault("files", {})[name] = file_entry(bundle / check_name(name, bundle))
    used = {n for v in manifest["variants"].values()
            for n in list(v["files"].values()) + list(v.get("ort_files", {}).values())}
    stale = sorted(n for n in before - used if n != MANIFEST)
    for name in stale:
        manifest["files"].pop(name, None)
    drop_signature(bundle, log)
    write_json_atomic(bundle / MANIFEST, manifest)
    for name in stale:
        with contextlib.suppress(OSError):
            (bundle / name).unlink()
    return manifest


_OWN_FILE = re.compile(r"^(encoder|decoder)(\.[a-z0-9-]+)?(\.[0-9a-f]{8,64})?\.(onnx|ort)$"
                       r"|^\.(manifest\.json|model\.sig)\.[A-Za-z0-9_]+\.tmp$")  # + write_bytes_atomic's temp files


def remove_orphans(bundle: Path, manifest: dict, log: Callable[[str], None] | None = None) -> list[str]:
    """Graph files that no manifest entry names are leftovers of an interrupted update (written,
    but never recorded): remove them. Only names of the form vae-edge writes are touched."""
    gone = []
    for entry in os.scandir(bundle):
        if (entry.is_file(follow_symlinks=False) and _OWN_FILE.match(entry.name)
                and entry.name not in manifest.get("files", {})):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                gone.append(entry.name)
    if gone and log:
        log(f"removed {len(gone)} file(s) left by an interrupted update: {', '.join(sorted(gone))}")
    return gone


def fresh_name(bundle: Path, name: str, data_sha: str) -> str:
    """`name` if it is free; else a name no file of the bundle has, so that a variant being
    replaced keeps its old files until the new manifest is written."""
    if not (bundle / name).exists():
        return name
    base = name[: -len(".onnx")] if name.endswith(".onnx") else name
    suffix = ".onnx" if name.endswith(".onnx") else ""
    for n in range(8, 65, 8):
        candidate = f"{base}.{data_sha[:n]}{suffix}"
        if not (bundle / candidate).exists():
            return candidate
    raise BundleError(f"{bundle}: no free file name for {name}")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder into place (the old one goes only once the new is done)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)
