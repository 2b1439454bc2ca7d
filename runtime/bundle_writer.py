"""The model bundle, write side: add a variant (files first, the manifest last), sign, remove
what an interrupted update left, replace a bundle folder. Every writer holds the bundle's lock
(`vae_edge.runtime.files.locked`); reading and checking is `vae_edge.runtime.bundle`'s job."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from vae_edge.runtime.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    check_name,
    hash_file,
    list_folder,
    load_manifest,
    read_file,
    verify_files,
)
from vae_edge.runtime.files import (
    fsync_dir,
    locked,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
)


def file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def drop_signature(bundle: Path, log: Callable[[str], None] | None = None) -> None:
    """A change to a signed bundle voids its signature: remove it and say so."""
    sig = Path(bundle) / SIGNATURE
    if sig.exists() or sig.is_symlink():
        sig.unlink()
        if log:
            log(f"note: {bundle} changed, so its signature was removed; re-sign it with `vae-edge sign`")


def add_variant(bundle: Path, manifest: dict, variant: str, entry: dict, log=None) -> dict:
    """Record a variant and its files' checksums; the new files must already be in place, each a
    self-contained graph. The manifest is written last (atomically), then files no variant uses
    any more are removed. Callers that read the manifest earlier hold the bundle's lock."""
    from vae_edge.runtime.graphcheck import refuse_external_data

    with locked(bundle, "update"):
        before = set(manifest.get("files", {}))
        manifest.setdefault("variants", {})[variant] = entry
        for name in list(entry["files"].values()) + list(entry.get("ort_files", {}).values()):
            path = bundle / check_name(name, bundle)
            if name.endswith(".onnx"):
                refuse_external_data(path.read_bytes(), path)
            manifest.setdefault("files", {})[name] = file_entry(path)
        used = {n for v in manifest["variants"].values()
                for n in list(v["files"].values()) + list(v.get("ort_files", {}).values())}
        if manifest.get("portable"):  # the compressor's integer network (runtime/portable.py)
            used.add(manifest["portable"]["file"])
        stale = sorted(n for n in before - used if n != MANIFEST)
        for name in stale:
            manifest["files"].pop(name, None)
        drop_signature(bundle, log)
        write_json_atomic(bundle / MANIFEST, manifest)
        for name in stale:
            with contextlib.suppress(OSError):
                (bundle / name).unlink()
    return manifest


def sign_files(bundle: Path, sign: Callable[[dict[str, str], str], bytes]) -> Path:
    """Write BUNDLE/model.sig = sign({file name: sha256}, folder name) over every file of the
    folder but the signature. Refused: a bundle whose files disagree with its manifest, or that
    holds anything but regular files, or a graph with external data."""
    from vae_edge.runtime.graphcheck import refuse_external_data

    bundle = Path(bundle).resolve()
    with locked(bundle, "sign"):
        manifest = load_manifest(bundle)
        verify_files(bundle, manifest)  # never sign a bundle whose files already disagree with it
        listing = list_folder(bundle)
        digests = {}
        for name in sorted(set(listing) - {SIGNATURE}):
            if name.endswith(".onnx"):
                data = read_file(bundle, name, size=listing[name])
                refuse_external_data(data, bundle / name)
                digests[name] = sha256_bytes(data)
            else:
                digests[name] = hash_file(bundle, name, listing[name])
        write_bytes_atomic(bundle / SIGNATURE, sign(digests, bundle.name))
    return bundle / SIGNATURE


_OWN_FILE = re.compile(r"^(encoder|decoder)(\.[a-z0-9-]+)?(\.[0-9a-f]{8,64})?\.(onnx|ort)$"
                       r"|^\.(manifest\.json|model\.sig)\.[A-Za-z0-9_]+\.tmp$")  # + write_bytes_atomic's temp files


def remove_orphans(bundle: Path, manifest: dict, log: Callable[[str], None] | None = None) -> list[str]:
    """Graph files that no manifest entry names are leftovers of an interrupted update (written,
    but never recorded): remove them. Only names of the form vae-edge writes are touched, and only
    under the bundle's lock, with the manifest read again under it: a file another writer placed
    and recorded is never taken for an orphan."""
    gone = []
    with locked(bundle, "update"):
        listed = load_manifest(bundle).get("files", {})
        for entry in os.scandir(bundle):
            if (entry.is_file(follow_symlinks=False) and _OWN_FILE.match(entry.name)
                    and entry.name not in listed and entry.name not in manifest.get("files", {})):
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
    """Move a finished temporary folder into place (the old one goes only once the new is done,
    and not while another vae-edge command holds it)."""
    if dest.exists():
        with locked(dest, "replace"):
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
            os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    fsync_dir(dest.parent)
