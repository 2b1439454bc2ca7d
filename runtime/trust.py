"""Signed bundles: OpenSSF model signing's format, signed and checked with `cryptography` alone.

A signature (`model.sig`) is a Sigstore bundle (v0.3 JSON) holding a DSSE envelope whose payload
is an in-toto statement: the sha256 of every file of the bundle folder but `model.sig` itself,
and a root digest over them. It is the format `model_signing` (the official library and CLI)
writes and reads with an elliptic-curve key, so bundles signed by either verify with the other
(tests/test_trust.py checks both ways). Keys are ECDSA P-256 PEM files.

vae-edge signs and verifies this format itself, with the `cryptography` package only (one
dependency of the base install, 16 MB) instead of `model_signing` (66 MB with sigstore, pydantic,
rich and the rest), so every install checks the shipped bundles. It also verifies more strictly
than `model_signing`'s defaults: the files present must be exactly the files signed (nothing is
ignored but `model.sig`, whatever the signature's own settings say, so a `.gitignore` added after
signing is refused), and what is hashed is the bytes in memory that go on to load, never a copy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from vae_edge import VaeEdgeError
from vae_edge.runtime.files import loads_json

SIGNATURE = "model.sig"  # OpenSSF model-signing's conventional name
ENV_KEY = "VAE_EDGE_TRUSTED_KEY"
PROJECT_KEY_NAME = "vae-edge-project.pub.pem"
INSTALL_HINT = "pip install cryptography"  # part of the base install; only a broken one lacks it
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SERIALIZATION = {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": [SIGNATURE]}
MAX_KEY_BYTES = 64 << 10


class SignatureError(VaeEdgeError):
    """A signature is malformed, made by another key, or does not match the bundle."""


def project_key() -> Path:
    """The public half of the key that signs the shipped bundles (it ships with the package)."""
    return Path(str(resources.files("vae_edge") / "pretrained" / PROJECT_KEY_NAME))


def available() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _crypto():
    try:
        from cryptography import exceptions
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise VaeEdgeError(f"signed bundles need the cryptography package: {INSTALL_HINT}") from None
    return exceptions, hashes, serialization, ec


# ---------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------

def keygen(private_out: str | os.PathLike, public_out: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """A new ECDSA P-256 key pair as PEM files; the private one readable by its owner only."""
    from vae_edge.runtime.files import write_bytes_atomic

    _, _, serialization, ec = _crypto()
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
    write_bytes_atomic(private_out, priv, mode=0o600)
    write_bytes_atomic(public_out, pub, mode=0o644)
    return private_out, public_out


def _key_bytes(key: str | os.PathLike, what: str) -> bytes:
    path = Path(key)
    if not path.is_file():
        raise VaeEdgeError(f"{what} {path} does not exist")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise VaeEdgeError(f"{what} {path} is too large to be a PEM key file")
    data = path.read_bytes()
    if b"-----BEGIN" not in data[:64]:
        raise VaeEdgeError(f"{what} {path} is not a PEM key file")
    return data


def _hash_for(ec, hashes, curve) -> object:
    if curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise VaeEdgeError(f"unsupported key curve {curve.name}: use ECDSA P-256 (`vae-edge keygen`)")
    return {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}[curve.key_size]()


def load_public_key(key: str | os.PathLike):
    _, _, serialization, ec = _crypto()
    data = _key_bytes(key, "trusted key")
    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise VaeEdgeError(f"trusted key {key} is not a PEM public key (a private key cannot be a trusted key)") from None
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise VaeEdgeError(f"trusted key {key} is not an elliptic-curve key: use one from `vae-edge keygen`")
    return pub


def key_hint(public_key) -> str:
    """What model_signing records to name the key: sha256 of its PEM SubjectPublicKeyInfo, hex."""
    _, _, serialization, _ = _crypto()
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    return b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload)) + payload


# ---------------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------------

def statement(digests: dict[str, str], model_name: str) -> dict:
    """The in-toto statement over {file name: sha256 hex}, as model_signing writes it."""
    names = sorted(digests)
    root = hashlib.sha256(b"".join(bytes.fromhex(digests[n]) for n in names)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": dict(SERIALIZATION),
                      "resources": [{"name": n, "algorithm": "sha256", "digest": digests[n]} for n in names]},
    }


def sign_digests(digests: dict[str, str], model_name: str, private_key: str | os.PathLike,
                 password: str | None = None) -> bytes:
    """The bytes of a model.sig over these digests."""
    _, hashes, serialization, ec = _crypto()
    data = _key_bytes(private_key, "private key")
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except (ValueError, TypeError):
        raise VaeEdgeError(f"cannot sign with {private_key}: it is not an unencrypted PEM private key "
                           "(a public key cannot sign)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise VaeEdgeError(f"cannot sign with {private_key}: not an elliptic-curve key (use `vae-edge keygen`)")
    payload = json.dumps(statement(digests, model_name), indent=2).encode()
    sig = key.sign(pae(payload), ec.ECDSA(_hash_for(ec, hashes, key.curve)))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]},
    }
    return (json.dumps(bundle) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# Verifying
# ---------------------------------------------------------------------------------------------

def _field(obj, key: str, kind: type, where: str):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise SignatureError(f"{where}: the signature is malformed (no {key!r}); re-sign with `vae-edge sign`")
    return value


def _b64(text: str, what: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{where}: the signature's {what} is not base64 (malformed signature)") from None


def read_envelope(sig: bytes, where: str) -> tuple[dict, bytes, bytes]:
    """Parse model.sig without checking it: (bundle JSON, payload bytes, signature bytes)."""
    try:
        bundle = loads_json(sig)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError(f"{where}: {SIGNATURE} is not a signature (not JSON); re-sign with `vae-edge sign`") from None
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{where}: {SIGNATURE} is not a Sigstore v0.3 bundle; re-sign with `vae-edge sign`")
    env = _field(bundle, "dsseEnvelope", dict, where)
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"{where}: the signature does not carry an in-toto statement (malformed signature)")
    sigs = _field(env, "signatures", list, where)
    if len(sigs) != 1:
        raise SignatureError(f"{where}: the signature holds {len(sigs)} signatures, not one (malformed signature)")
    payload = _b64(_field(env, "payload", str, where), "payload", where)
    raw = _b64(_field(sigs[0], "sig", str, where), "signature value", where)
    return bundle, payload, raw


def signed_digests(payload: bytes, where: str) -> dict[str, str]:
    """{file name: sha256 hex} from a statement, checked against its own root digest."""
    try:
        st = loads_json(payload)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError(f"{where}: the signed statement is not JSON (malformed signature)") from None
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"{where}: the signature is not a model-signing v1.0 statement; re-sign with `vae-edge sign`")
    subjects = _field(st, "subject", list, where)
    predicate = _field(st, "predicate", dict, where)
    ser = _field(predicate, "serialization", dict, where)
    if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
        raise SignatureError(f"{where}: the signature hashes files as {ser.get('method')!r}/{ser.get('hash_type')!r}; "
                             "vae-edge checks per-file sha256 signatures only: re-sign with `vae-edge sign`")
    out: dict[str, str] = {}
    for r in _field(predicate, "resources", list, where):
        name, digest = (r.get("name"), r.get("digest")) if isinstance(r, dict) else (None, None)
        if (not isinstance(name, str) or not isinstance(digest, str) or r.get("algorithm") != "sha256"
                or len(digest) != 64 or name in out):
            raise SignatureError(f"{where}: the signature lists a malformed or repeated file entry")
        try:
            bytes.fromhex(digest)
        except ValueError:
            raise SignatureError(f"{where}: the signature lists a malformed file digest") from None
        out[name] = digest.lower()
    if len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise SignatureError(f"{where}: the signature must name one subject (malformed signature)")
    root = ((subjects[0].get("digest") or {}).get("sha256") if isinstance(subjects[0].get("digest"), dict) else None)
    names = [r["name"] for r in predicate["resources"]]
    mine = hashlib.sha256(b"".join(bytes.fromhex(out[n]) for n in names)).hexdigest()
    if root != mine:
        raise SignatureError(f"{where}: the signature's root digest does not match its file list (tampered signature)")
    return out


def verify_signature(sig: bytes, public_key: str | os.PathLike, where: str) -> dict[str, str]:
    """Check model.sig with a trusted public key; returns the signed {file name: sha256 hex}.
    The caller compares them with the bytes it holds (Bundle does)."""
    exceptions, hashes, _, ec = _crypto()
    pub = load_public_key(public_key)
    bundle, payload, raw = read_envelope(sig, where)
    hint = ((bundle.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") \
        if isinstance(bundle.get("verificationMaterial"), dict) else None
    if hint and hint != key_hint(pub):
        raise SignatureError(f"{where}: signed by another key than {public_key} (refused)")
    try:
        pub.verify(raw, pae(payload), ec.ECDSA(_hash_for(ec, hashes, pub.curve)))
    except exceptions.InvalidSignature:
        raise SignatureError(f"{where}: the signature does not match {public_key} (signed by another key, or "
                             "the signature or manifest was altered): refused") from None
    return signed_digests(payload, where)


def resolve_key(explicit: str | os.PathLike | None, shipped: bool) -> tuple[Path | None, str | None]:
    """Which public key to check a bundle with: the one given, else $VAE_EDGE_TRUSTED_KEY, else,
    for a shipped bundle, the project key (every install checks those). (None, None): none."""
    if explicit:
        return Path(explicit), str(explicit)
    env = os.environ.get(ENV_KEY, "").strip()
    if env:
        return Path(env), f"${ENV_KEY} ({env})"
    if shipped and project_key().is_file():
        return project_key(), "the vae-edge project key"
    return None, None


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike, password: str | None = None) -> Path:
    """Write BUNDLE/model.sig over every file of the bundle (the old signature is replaced)."""
    from vae_edge.runtime.bundle_writer import sign_files

    return sign_files(Path(bundle), lambda digests, name: sign_digests(digests, name, private_key, password))
