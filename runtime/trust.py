"""Signed bundles with OpenSSF model signing (`model-signing`, the `[sign]` extra).

A signature (`model.sig`, a Sigstore bundle with a DSSE envelope) covers every file of the bundle
folder: changing, adding or removing any file after signing breaks it. Keys are ECDSA P-256 PEM
files. `model_signing` is imported only when a signature is made or checked, so the runtime's
other paths neither need nor load it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from vae_edge import VaeEdgeError
from vae_edge.runtime.bundle import SIGNATURE, BundleError, fsync_dir, snapshot_folder

ENV_KEY = "VAE_EDGE_TRUSTED_KEY"
PROJECT_KEY_NAME = "vae-edge-project.pub.pem"
INSTALL_HINT = "pip install 'vae-edge[sign]'"


def project_key() -> Path:
    """The public half of the key that signs the shipped bundles (it ships with the package)."""
    return Path(str(resources.files("vae_edge") / "pretrained" / PROJECT_KEY_NAME))


def available() -> bool:
    try:
        import model_signing  # noqa: F401
    except ImportError:
        return False
    return True


def _model_signing():
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as e:
        raise VaeEdgeError(f"signed bundles need model-signing ({e.name or e} is missing): {INSTALL_HINT}") from None
    return hashing, signing, verifying


def _hashing_config(hashing):
    # The signature file itself is the one file the signature does not cover.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def keygen(private_out: str | os.PathLike, public_out: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """A new ECDSA P-256 key pair as PEM files; the private one readable by its owner only."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise VaeEdgeError(f"keygen needs the cryptography package: {INSTALL_HINT}") from None
    private_out, public_out = Path(private_out), Path(public_out)
    for p in (private_out, public_out):
        if p.exists() and not force:
            raise VaeEdgeError(f"{p} exists: pass --force to replace it")
        if not p.parent.is_dir():
            raise VaeEdgeError(f"the folder of {p} does not exist")
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    from vae_edge.runtime.bundle import write_bytes_atomic

    write_bytes_atomic(private_out, priv, mode=0o600)
    write_bytes_atomic(public_out, pub, mode=0o644)
    return private_out, public_out


def _check_key_file(key: str | os.PathLike, what: str) -> Path:
    path = Path(key)
    if not path.is_file():
        raise VaeEdgeError(f"{what} {path} does not exist")
    head = path.read_bytes()[:64]
    if b"-----BEGIN" not in head:
        raise VaeEdgeError(f"{what} {path} is not a PEM key file")
    return path


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike, password: str | None = None) -> Path:
    """Write BUNDLE/model.sig over every file of the bundle (the old signature is replaced)."""
    from vae_edge.runtime.bundle import load_manifest, verify_files

    bundle = Path(bundle).resolve()
    key = _check_key_file(private_key, "private key")
    manifest = load_manifest(bundle)
    verify_files(bundle, manifest)  # never sign a bundle whose files already disagree with it
    snapshot_folder(bundle)  # refuses links and sub-folders before anything is signed
    hashing, signing, _ = _model_signing()
    tmp = Path(tempfile.mkdtemp(prefix=".sign-", dir=bundle.parent))
    try:
        try:
            (signing.Config().use_elliptic_key_signer(private_key=key, password=password)
             .set_hashing_config(_hashing_config(hashing)).sign(bundle, tmp / SIGNATURE))
        except (ValueError, TypeError) as e:
            raise VaeEdgeError(f"cannot sign with {key}: {_first_line(e)}") from None
        os.replace(tmp / SIGNATURE, bundle / SIGNATURE)
        fsync_dir(bundle)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle / SIGNATURE


def verify_snapshot(snapshot: dict[str, bytes], public_key: str | os.PathLike, where: object) -> None:
    """Check a signature over in-memory bytes: they are written to a private folder and verified
    there, so what was verified is exactly what will be loaded."""
    key = _check_key_file(public_key, "trusted key")
    _, _, verifying = _model_signing()
    tmp = Path(tempfile.mkdtemp(prefix="vae-edge-verify-"))
    try:
        root = tmp / "bundle"
        root.mkdir()
        for name, data in snapshot.items():
            (root / name).write_bytes(data)
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(root, root / SIGNATURE)
        except Exception as e:  # model_signing raises ValueError, cryptography InvalidSignature, parse errors
            raise BundleError(f"{where}: signature check against {key} failed: {_explain(e)} (refused)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _explain(e: BaseException) -> str:
    text = _first_line(e)
    if type(e).__name__ == "InvalidSignature":
        return "the signature does not match (signed by another key, or the signature was altered)"
    if text.startswith("Key mismatch"):
        return "the bundle was signed by another key"
    return text


def resolve_key(explicit: str | os.PathLike | None, shipped: bool) -> tuple[Path | None, str | None]:
    """Which public key to check a bundle with: the one given, else $VAE_EDGE_TRUSTED_KEY, else,
    for a shipped bundle where model-signing is installed, the project key. (None, None): none."""
    if explicit:
        return Path(explicit), str(explicit)
    env = os.environ.get(ENV_KEY, "").strip()
    if env:
        return Path(env), f"${ENV_KEY} ({env})"
    if shipped and available() and project_key().is_file():
        return project_key(), "the vae-edge project key"
    return None, None
