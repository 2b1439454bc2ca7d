"""`vae-edge keygen`, `sign` and `verify`: signed bundles (OpenSSF model signing's format, on cryptography)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vae_edge.cli.base import expect_option, json_option, progress_log, trusted_key_option


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for private.pem (mode 600) and public.pem.")
@click.option("--name", default="vae-edge", show_default=True, help="File name prefix: NAME.priv.pem, NAME.pub.pem.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
def keygen(out_dir, name, force) -> None:
    """Make an ECDSA P-256 key pair for signing bundles.

    Keep the private key off the devices; ship the public key to them.

    \b
    Example: vae-edge keygen --out keys
             (same as: openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt)
    """
    from vae_edge import VaeEdgeError
    from vae_edge.runtime.trust import keygen as make_keys

    out = Path(out_dir)
    if not out.is_dir():
        if not out.parent.is_dir():
            raise VaeEdgeError(f"the folder of --out {out} does not exist (only the last level is created)")
        out.mkdir(mode=0o700)
    priv, pub = make_keys(out / f"{name}.priv.pem", out / f"{name}.pub.pem", force=force)
    click.echo(f"private key: {priv} (keep it secret)\npublic key:  {pub} (give it to devices: --trusted-key)")


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--key", "private_key", required=True, type=click.Path(dir_okay=False),
              help="PEM private key (from `vae-edge keygen`).")
def sign(bundle, private_key) -> None:
    """Sign every file of a bundle: writes BUNDLE/model.sig.

    \b
    Example: vae-edge sign bundles/mlp --key keys/vae-edge.priv.pem
             vae-edge sample --bundle bundles/mlp --trusted-key keys/vae-edge.pub.pem -o s.png
    """
    from vae_edge.runtime.trust import sign_bundle

    sig = sign_bundle(bundle, private_key)
    click.echo(f"signed: {sig}")


@click.command()
@click.argument("bundle", required=False)
@trusted_key_option
@expect_option
@click.option("--record", is_flag=True, help="Maker side: record golden vectors on this machine for variants without any.")
@json_option
def verify(bundle, trusted_key, expect, record, as_json) -> None:
    """Check a bundle: manifest, every file's sha256, its signature (with a trusted key), and that
    this device computes what the maker did for every variant (golden vectors).

    BUNDLE is a folder or a shipped model's name (default: the shipped mlp-mnist). The exit code is
    1 if any variant fails its self-check here, or, without a key, if the files differ from the
    digests the signature lists (changed after signing; nothing is authenticated without a key).

    \b
    Example: vae-edge verify bundles/mlp --trusted-key keys/vae-edge.pub.pem
             vae-edge verify conv-mnist --json
    """
    from vae_edge import VaeEdgeError
    from vae_edge.runtime import VAERuntime, selfcheck, trust
    from vae_edge.runtime.bundle import BundleError, open_bundle, verify_files
    from vae_edge.runtime.sysinfo import cpu
    from vae_edge.runtime.vae_runtime import is_shipped, resolve_bundle

    path = resolve_bundle(bundle)
    key, label = trust.resolve_key(trusted_key, shipped=is_shipped(path))
    b = open_bundle(path, key, key_label=label, expect=expect)  # the signature is checked before anything changes
    if record:  # a signed bundle is never unsigned here: the maker records before signing
        done = selfcheck.record_bundle(path, log=progress_log(), drop_signature_ok=False)
        click.echo(f"recorded golden vectors for: {', '.join(done) or 'none needed'}", err=True)
        if done:
            b = open_bundle(path, key, key_label=label, expect=expect)
    changed = b.changed_since_signing() if b.signature == "unchecked" else []
    variants = {}
    for v in b.info.variants:
        try:
            rt = VAERuntime.load(path, variant=v, trusted_key=key, self_check=False, warn=lambda s: None)
            diffs = rt.self_check()
            variants[v] = {"self_check": "pass" if diffs is not None else "no golden vectors", "max_abs_diff": diffs}
        except selfcheck.SelfCheckFailed as e:
            variants[v] = {"self_check": "FAIL", "error": str(e)}
        except BundleError as e:
            variants[v] = {"self_check": "damaged", "error": str(e)}
    files_ok = True
    try:
        verify_files(b.path, b.manifest)  # each file streamed through sha256 against the manifest
    except BundleError:
        files_ok = False
    res = {"bundle": str(b.path), "files_match": files_ok, "signature": b.signature, "key": b.key,
           "changed_since_signing": changed, "cpu": cpu(), "variants": variants}
    failed = [v for v, r in variants.items() if r["self_check"] in ("FAIL", "damaged")]
    if as_json:
        click.echo(json.dumps(res))
    else:
        click.echo(f"{b.path}: {len(b.info.files)} files {'match' if files_ok else 'DO NOT all match'} "
                   "the manifest")
        click.echo({"verified": f"signature: valid, signed by {b.key}",
                    "unchecked": "signature: present, NOT checked (pass --trusted-key PUBLIC.pem)"
                                 + ("; files CHANGED since signing: " + ", ".join(changed[:3]) if changed else
                                    "; the files match the digests it lists"),
                    "unsigned": "signature: none (unsigned bundle)"}[b.signature])
        for v, r in variants.items():
            detail = (", ".join(f"{g} max|diff| {d:.2g}" for g, d in r["max_abs_diff"].items())
                      if r.get("max_abs_diff") else r.get("error", ""))
            click.echo(f"  {v:<22} self-check {r['self_check']:<18} {detail}")
    if changed:
        raise VaeEdgeError(f"{b.path} changed after it was signed ({', '.join(changed[:3])}): re-sign it, "
                           "or check it with --trusted-key PUBLIC.pem")
    if not files_ok:
        raise VaeEdgeError(f"{b.path}: some files do not match the manifest (tampered or corrupt): re-export it")
    if failed:
        raise VaeEdgeError(f"variant(s) {', '.join(failed)} cannot be trusted on this device")
