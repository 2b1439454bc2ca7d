"""The model bundle, read side: encoder/decoder ONNX files plus manifest.json (numpy-free,
torch-free). Writing a bundle (variants, signatures, orphans, replacement) is
`vae_edge.runtime.bundle_writer`'s job.

This module is the one place that maps a manifest's file names to bytes. A name must be a plain
file name inside the bundle folder (no separators, no `..`, no links), listed in the manifest
with its sha256 and size; the bytes that were hashed are the bytes handed to onnxruntime, so a
file cannot change between the check and the load. Before any byte is read, the folder's entries
are checked by type and size alone (a FIFO, a device, a link or a file larger than the manifest
says is refused without opening it for long), and their count and total size are capped.
Signatures (`model.sig`) are checked here too, through `vae_edge.runtime.trust`: the files present
must be exactly the files signed, each streamed through sha256 once; the graphs that load are
read again and checked against the signed digests, so nothing is ever copied to a temporary place.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vae_edge import VaeEdgeError
from vae_edge.runtime.files import (
    READ_FLAGS,
    cache_base,
    check_cache_path,
    kind_of,
    loads_json,
    sha256_bytes,
)
from vae_edge.runtime.manifest import Manifest

MANIFEST = "manifest.json"
SIGNATURE = "model.sig"  # OpenSSF model-signing's conventional name
SCHEMA = "vae-edge-bundle"
SCHEMA_VERSION = 1
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "fp16")
GRAPHS = ("encoder", "decoder")
MAX_FILE_BYTES = 1 << 30  # a bundle file larger than this is refused
MAX_BUNDLE_BYTES = 4 << 30  # all files of a bundle together
MAX_FILES = 256  # entries of a bundle folder
MAX_MANIFEST_BYTES = 64 << 20  # golden vectors of a 512x512 VAE's variants: ~6 MB each
MAX_SIGNATURE_BYTES = 1 << 20
_CHUNK = 1 << 20


class BundleError(VaeEdgeError):
    """A bundle is missing, malformed, damaged, tampered with, or not trusted."""


def variant_filename(graph: str, variant: str, ext: str = ".onnx") -> str:
    """encoder.onnx for fp32, encoder.int8-static.onnx for the others."""
    return f"{graph}{ext}" if variant == "fp32" else f"{graph}.{variant}{ext}"


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------
# Names and bytes
# ---------------------------------------------------------------------------------------------

def check_name(name: object, where: object = "bundle") -> str:
    """A manifest file name must be a plain file name: it cannot leave the bundle folder."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or os.path.isabs(name) or name.startswith("~") or len(name) > 255):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise BundleError(f"{where}: the manifest names the file {shown}, which is not a plain file name "
                          "inside the bundle folder (refused)")
    return name


def _open(bundle: Path, name: str, max_bytes: int, size: int | None) -> tuple[int, int]:
    """An fd of a regular file of the bundle, and its size. O_NONBLOCK: a FIFO put in place of a
    file is refused at once instead of waiting for a writer; O_NOFOLLOW: links are refused."""
    check_name(name, bundle)
    path = Path(bundle) / name
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        raise BundleError(f"{bundle}: {name} is missing") from None
    except OSError as e:
        if os.path.islink(path):
            raise BundleError(f"{bundle}: {name} is a symbolic link; bundle files must be regular files") from None
        raise BundleError(f"{bundle}: cannot read {name}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{bundle}: {name} is not a regular file ({kind_of(st.st_mode)}): refused")
        if st.st_size > max_bytes:
            raise BundleError(f"{bundle}: {name} is {st.st_size:,} bytes, over the {max_bytes:,} limit: refused")
        if size is not None and st.st_size != size:
            raise BundleError(f"{bundle}: {name} does not match the size and sha256 in the manifest "
                              f"({st.st_size:,} bytes, not {size:,}): tampered or corrupt, refused")
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_file(bundle: Path, name: str, max_bytes: int = MAX_FILE_BYTES, size: int | None = None) -> bytes:
    """The bytes of one file of the bundle folder; links and anything but regular files are
    refused, and so is a file larger than max_bytes (or of another size than `size`)."""
    fd, n = _open(bundle, name, max_bytes, size)
    with os.fdopen(fd, "rb") as f:
        data = f.read(n + 1)
    if len(data) != n:
        raise BundleError(f"{bundle}: {name} changed size while it was read: refused")
    return data


def hash_file(bundle: Path, name: str, size: int | None = None) -> str:
    """sha256 of one file of the bundle, streamed (constant memory)."""
    import hashlib

    fd, n = _open(bundle, name, MAX_FILE_BYTES, size)
    h, seen = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
            seen += len(chunk)
    if seen != n:
        raise BundleError(f"{bundle}: {name} changed size while it was read: refused")
    return h.hexdigest()


def list_folder(bundle: Path) -> dict[str, int]:
    """{name: size} of every entry of a (flat) bundle folder, from lstat alone: anything but a
    regular file is refused, and so are too many or too large files, before a byte is read."""
    out: dict[str, int] = {}
    with os.scandir(bundle) as entries:
        for entry in entries:
            if len(out) >= MAX_FILES:
                raise BundleError(f"{bundle} holds more than {MAX_FILES} entries: not a bundle (refused)")
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{bundle}: {entry.name} is {kind_of(st.st_mode)}; a signed bundle holds regular "
                                  "files only (refused)")
            if st.st_size > MAX_FILE_BYTES:
                raise BundleError(f"{bundle}: {entry.name} is {st.st_size:,} bytes, over the {MAX_FILE_BYTES:,} "
                                  "limit: refused")
            out[entry.name] = st.st_size
    total = sum(out.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"{bundle} holds {total:,} bytes, over the {MAX_BUNDLE_BYTES:,} limit of a bundle: refused")
    return out


def parse_manifest(raw: bytes, where: object) -> dict:
    try:
        manifest = loads_json(raw)
    except UnicodeDecodeError:
        raise BundleError(f"{where} is not a vae-edge manifest (not UTF-8 text)") from None
    except ValueError as e:
        raise BundleError(f"{where} is not valid JSON (line {getattr(e, 'lineno', '?')}, column "
                          f"{getattr(e, 'colno', '?')}): re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where} is not a vae-edge manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version")
        shown = repr(version) if len(repr(version)) <= 20 else "?"
        raise BundleError(f"{where} has schema version {shown}; this vae-edge reads {SCHEMA_VERSION}")
    for key in ("files", "variants", "model"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"{where}: the manifest has no {key!r} table")
    if len(manifest["files"]) > MAX_FILES:
        raise BundleError(f"{where} lists more than {MAX_FILES} files (refused)")
    for name, entry in manifest["files"].items():
        check_name(name, where)
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool)
                or not 0 <= entry["size"] <= MAX_FILE_BYTES):
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
    _check_identity(manifest, where)
    return manifest


def _check_identity(manifest: dict, where: object) -> None:
    name, release = manifest.get("name"), manifest.get("release", 0)
    if name is not None and not isinstance(name, str):
        raise BundleError(f"{where}: the manifest's name must be a string")
    if name is not None and (len(name) > 200 or not name.isprintable()):
        raise BundleError(f"{where}: the manifest's name must be printable text of at most 200 characters")
    if not isinstance(release, int) or isinstance(release, bool) or release < 0:
        raise BundleError(f"{where}: the manifest's release must be a whole number >= 0")


def _check_dir(bundle: Path) -> None:
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a folder")
    if not (bundle / MANIFEST).exists() and not (bundle / MANIFEST).is_symlink():
        raise BundleError(f"{bundle} is not a vae-edge bundle (no {MANIFEST}): make one with `vae-edge export`")


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """The manifest of a bundle folder, checked and typed (no signature check: open_bundle)."""
    return Manifest.from_dict(load_manifest(bundle), Path(bundle) / MANIFEST)


def load_manifest(bundle: str | os.PathLike) -> dict:
    bundle = Path(bundle)
    _check_dir(bundle)
    return parse_manifest(read_file(bundle, MANIFEST, MAX_MANIFEST_BYTES), bundle / MANIFEST)


def checked(bundle: Path, manifest: dict, name: str, data: bytes) -> bytes:
    entry = manifest["files"].get(name)
    if entry is None:
        raise BundleError(f"{bundle}: {name} is not listed in the manifest")
    if len(data) != entry["size"] or sha256_bytes(data) != entry["sha256"]:
        raise BundleError(f"{bundle}: {name} does not match its sha256 in the manifest (tampered or corrupt)")
    return data


def verify_files(bundle: str | os.PathLike, manifest: dict, names: list[str] | None = None) -> None:
    """Check that each listed file exists with the sha256 and size the manifest records (streamed)."""
    bundle = Path(bundle)
    for name in names if names is not None else list(manifest.get("files", {})):
        entry = manifest["files"].get(check_name(name, bundle))
        if entry is None:
            raise BundleError(f"{bundle}: {name} is not listed in the manifest")
        if hash_file(bundle, name, entry["size"]) != entry["sha256"]:
            raise BundleError(f"{bundle}: {name} does not match its sha256 in the manifest (tampered or corrupt)")


_MODES = {"int8-dynamic": "dynamic", "int8-static": "static", "fp16": "fp16"}


def variant_files(manifest: dict, variant: str, bundle: object = "BUNDLE") -> dict[str, str]:
    variants = manifest.get("variants", {})
    if variant not in variants:
        have = ", ".join(variants) or "none"
        mode = _MODES.get(variant, "auto")
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
    key = sha256_bytes(json.dumps({k: v for k, v in manifest.items() if k != "tuning"}, sort_keys=True).encode())
    return cache_base() / "vae-edge" / "tuning" / f"{key[:32]}.json"


MAX_TUNING_BYTES = 1 << 20


def tuning(manifest: dict) -> dict:
    """The recorded tuning of a bundle, as it is written: in its manifest, else in the user cache;
    {} if never tuned, and {} with one note if the cache's record cannot be used (unreadable, not
    JSON, too large or deep, behind a link). Its fields are checked by `vae_edge.runtime.choice`."""
    if manifest.get("tuning"):
        return manifest["tuning"] if isinstance(manifest["tuning"], dict) else {}
    path = user_tuning_file(manifest)
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        check_cache_path(path)
        fd, _ = _open(path.parent, path.name, MAX_TUNING_BYTES, None)
        with os.fdopen(fd, "rb") as f:
            data = loads_json(f.read(MAX_TUNING_BYTES + 1))
    except (OSError, ValueError, VaeEdgeError) as e:
        logging.getLogger(__name__).warning(f"note: the tuning record {path} is ignored ({str(e)[:200]}); run "
                                            "`vae-edge tune` again")
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
    signed: dict[str, str] = field(default_factory=dict, repr=False)  # file name -> signed sha256
    info: Manifest = field(init=False, repr=False)  # the manifest, typed (parsed once)

    def __post_init__(self) -> None:
        self.info = Manifest.from_dict(self.manifest, self.path / MANIFEST)

    def read(self, name: str) -> bytes:
        """The bytes of a listed file, read now and checked against the manifest (and, when
        verified, against the signed digest): the bytes returned are the bytes checked."""
        check_name(name, self.path)
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise BundleError(f"{self.path}: {name} is not listed in the manifest")
        if self.signature == "verified" and name not in self.signed:
            raise BundleError(f"{self.path}: {name} is not part of the signed bundle")
        data = checked(self.path, self.manifest, name, read_file(self.path, name, size=entry["size"]))
        if self.signature == "verified" and sha256_bytes(data) != self.signed[name]:
            raise BundleError(f"{self.path}: {name} changed after its signature was checked: refused")
        return data

    def variant_bytes(self, variant: str) -> dict[str, bytes]:
        """Both graphs of one variant; a damaged variant is named, the others stay usable."""
        from vae_edge.runtime.graphcheck import refuse_external_data

        files = variant_files(self.manifest, variant, self.path)
        try:
            out = {graph: self.read(name) for graph, name in files.items()}
            for graph, data in out.items():
                refuse_external_data(data, f"{self.path}/{files[graph]}")
            return out
        except BundleError as e:
            mode = _MODES.get(variant)
            fix = (f"re-make it with `vae-edge quantize {self.path} --mode {mode}`" if mode
                   else "re-export the bundle")
            raise BundleError(f"variant {variant} is damaged: {e}; other variants still load; {fix}") from None

    def changed_since_signing(self) -> list[str]:
        """Without a key: the files that differ from the digests the signature lists (nothing is
        authenticated, but a bundle changed after signing is told apart). [] if none or unsigned."""
        from vae_edge.runtime import trust

        if self.signature == "unsigned":
            return []
        sig = read_file(self.path, SIGNATURE, MAX_SIGNATURE_BYTES)
        where = str(self.path)
        _, payload, _ = trust.read_envelope(sig, where)
        digests = trust.signed_digests(payload, where)
        listing = list_folder(self.path)
        names = set(listing) - {SIGNATURE}
        changed = sorted(names ^ set(digests))
        changed += sorted(n for n in names & set(digests) if hash_file(self.path, n, listing[n]) != digests[n])
        return changed


def open_bundle(
    bundle: str | os.PathLike,
    trusted_key: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
    key_label: str | None = None,
    expect: str | None = None,
) -> Bundle:
    """Open a bundle: parse its manifest and, with a trusted public key, verify its signature
    (anything changed, added or removed after signing is refused). Without a key, a signed bundle
    loads as before, with a note. `expect` (NAME or NAME@RELEASE) pins which signed bundle may load."""
    bundle = Path(bundle)
    _check_dir(bundle)
    if trusted_key is None:
        manifest = load_manifest(bundle)
        signed = (bundle / SIGNATURE).exists() or (bundle / SIGNATURE).is_symlink()
        if signed and warn is not None:
            warn(f"note: {bundle} is signed, but its signature was not checked (no trusted key): "
                 "pass --trusted-key PUBLIC.pem or set VAE_EDGE_TRUSTED_KEY")
        opened = Bundle(bundle, manifest, "unchecked" if signed else "unsigned")
    else:
        opened = _open_signed(bundle, trusted_key, key_label or str(trusted_key))
    if expect:
        check_expected(opened, expect)
    return opened


def _open_signed(bundle: Path, key, label: str) -> Bundle:
    from vae_edge.runtime import trust

    listing = list_folder(bundle)
    if SIGNATURE not in listing:
        raise BundleError(f"{bundle} is not signed (no {SIGNATURE}), and a trusted key is set: refused "
                          "(sign it with `vae-edge sign`)")
    sig = read_file(bundle, SIGNATURE, MAX_SIGNATURE_BYTES)
    raw = read_file(bundle, MANIFEST, MAX_MANIFEST_BYTES)
    where = f"{bundle}: signature check failed"
    digests = trust.verify_signature(sig, key, where)
    names = set(listing) - {SIGNATURE}
    for what, diff in (("added after signing", names - set(digests)), ("removed after signing", set(digests) - names)):
        if diff:
            raise BundleError(f"{where}: {', '.join(sorted(diff)[:3])} {'was' if len(diff) == 1 else 'were'} "
                              f"{what} (refused)")
    changed = [MANIFEST] if sha256_bytes(raw) != digests.get(MANIFEST) else []
    changed += [n for n in sorted(names - {MANIFEST})  # each file streamed once, sizes from lstat
                if hash_file(bundle, n, listing[n]) != digests[n]]
    if changed:
        raise BundleError(f"{where}: {', '.join(changed[:3])}{' and more' if len(changed) > 3 else ''} "
                          f"changed after signing (refused)")
    manifest = parse_manifest(raw, bundle / MANIFEST)
    for name, entry in manifest["files"].items():
        if entry["sha256"] != digests.get(name) or entry["size"] != listing.get(name):
            raise BundleError(f"{where}: {name} is listed in the manifest with another size or sha256 than signed")
    return Bundle(bundle, manifest, "verified", label, digests)


def parse_expect(expect: str) -> tuple[str, int]:
    name, _, release = str(expect).partition("@")
    if not name or (release and not release.isdigit()):
        raise VaeEdgeError(f"--expect {expect!r}: write NAME or NAME@RELEASE (e.g. mlp-mnist@2)")
    return name, int(release or 0)


def check_expected(opened: Bundle, expect: str) -> None:
    """Refuse a bundle that is not the one a device expects: another model, or an older release
    (a rollback). Only a verified signature makes the manifest's name and release mean anything."""
    name, least = parse_expect(expect)
    if opened.signature != "verified":
        raise BundleError(f"{opened.path}: --expect {expect} needs a verified signature: pass --trusted-key PUBLIC.pem")
    have, release = opened.manifest.get("name"), opened.manifest.get("release", 0)
    if have != name:
        raise BundleError(f"{opened.path} is {have!r}, not the expected {name!r}: refused")
    if release < least:
        raise BundleError(f"{opened.path} is release {release} of {name}, older than the expected {least} "
                          "(a rollback?): refused")
