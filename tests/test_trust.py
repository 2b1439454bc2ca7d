"""Trusted bundles: signatures (OpenSSF model signing), names confined to the bundle folder, and
the bytes that were hashed being the bytes onnxruntime loads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import model_signing  # noqa: E402,F401  (the [sign] extra is part of the dev install: fail, never skip)
import numpy as np
import pytest

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.runtime import providers as prov
from vae_edge.runtime.bundle import SIGNATURE, open_bundle
from vae_edge.runtime.files import write_json_atomic
from vae_edge.runtime.trust import project_key, sign_bundle


def _rehash(bundle: Path, name: str) -> None:
    """What an attacker who can write the folder does: make the manifest agree with a changed file."""
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    write_json_atomic(bundle / "manifest.json", m)


def test_signed_bundle_loads_with_its_key(signed, keys):
    rt = VAERuntime.load(signed, variant="int8-dynamic", trusted_key=keys["pub"])
    assert rt.signature == "verified"
    assert rt.sample(2, seed=0).shape == (2, 1, 28, 28)


def test_tampered_graph_with_recomputed_manifest_is_refused(signed, keys, quantized):
    shutil.copy(quantized / "decoder.int8-static.onnx", signed / "decoder.onnx")  # a valid graph, other weights
    _rehash(signed, "decoder.onnx")
    VAERuntime.load(signed, self_check=False)  # sha256 alone cannot tell: the manifest agrees with the files
    # (the golden vectors notice other weights, but an attacker who rewrites the manifest rewrites them too)
    with pytest.raises(VaeEdgeError, match="signature check failed.*decoder.onnx"):
        VAERuntime.load(signed, trusted_key=keys["pub"])


@pytest.mark.parametrize("change", ["extra file", "removed file", "changed manifest"])
def test_folder_changes_after_signing_are_refused(signed, keys, change):
    if change == "extra file":
        (signed / "notes.txt").write_text("added after signing")
    elif change == "removed file":
        m = json.loads((signed / "manifest.json").read_text())
        del m["variants"]["fp16"]
        for g in ("encoder", "decoder"):
            del m["files"][f"{g}.fp16.onnx"]
            (signed / f"{g}.fp16.onnx").unlink()
        write_json_atomic(signed / "manifest.json", m)
    else:
        m = json.loads((signed / "manifest.json").read_text())
        m["variants"]["int8-static"]["accuracy"]["neg_elbo_delta"] = 0.0
        write_json_atomic(signed / "manifest.json", m)
    with pytest.raises(VaeEdgeError, match="signature check failed") as e:
        VAERuntime.load(signed, trusted_key=keys["pub"])
    assert "\n" not in str(e.value)
    print(f"\nRELIABILITY: signed bundle, {change} after signing: refused ({str(e.value).split(': ', 2)[-1][:90]})")


def test_wrong_key_swapped_signature_and_unsigned_are_refused(signed, keys, tmp_path, bundles):
    with pytest.raises(VaeEdgeError, match="signed by another key"):
        VAERuntime.load(signed, trusted_key=keys["other_pub"])
    # a valid signature by the trusted key, but of another bundle
    other = tmp_path / "other"
    shutil.copytree(bundles["conv"], other)
    sign_bundle(other, keys["priv"])
    shutil.copy(other / SIGNATURE, signed / SIGNATURE)
    with pytest.raises(VaeEdgeError, match="signature check failed"):
        VAERuntime.load(signed, trusted_key=keys["pub"])
    # a signature re-signed by another key
    sign_bundle(signed, keys["other_priv"])
    with pytest.raises(VaeEdgeError, match="signed by another key"):
        VAERuntime.load(signed, trusted_key=keys["pub"])
    (signed / SIGNATURE).unlink()
    with pytest.raises(VaeEdgeError, match="is not signed"):
        VAERuntime.load(signed, trusted_key=keys["pub"])
    (signed / SIGNATURE).write_text("{not a signature")
    with pytest.raises(VaeEdgeError, match="signature check failed"):
        VAERuntime.load(signed, trusted_key=keys["pub"])


def test_environment_variable_and_note_without_key(signed, keys, monkeypatch):
    notes = []
    rt = VAERuntime.load(signed, warn=notes.append)
    assert rt.signature == "unchecked" and any("signed, but its signature was not checked" in n for n in notes)
    monkeypatch.setenv("VAE_EDGE_TRUSTED_KEY", str(keys["other_pub"]))
    with pytest.raises(VaeEdgeError, match="another key"):
        VAERuntime.load(signed)
    monkeypatch.setenv("VAE_EDGE_TRUSTED_KEY", str(keys["pub"]))
    assert VAERuntime.load(signed).signature == "verified"


def test_shipped_bundles_are_signed_and_checked_by_default(monkeypatch):
    monkeypatch.delenv("VAE_EDGE_TRUSTED_KEY", raising=False)
    assert project_key().is_file()
    from vae_edge.runtime import shipped_bundles

    assert set(shipped_bundles()) == {"mlp-mnist", "conv-mnist", "conv-cond-mnist", "conv-mnist8", "conv-fashion8"}
    for name in shipped_bundles():
        rt = VAERuntime.load(name)
        assert rt.signature == "verified" and rt.signed_by == "the vae-edge project key"


def test_cli_keygen_sign_verify(runner, tmp_path, quantized, monkeypatch):
    monkeypatch.delenv("VAE_EDGE_TRUSTED_KEY", raising=False)
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    res = runner.invoke(cli, ["keygen", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(cli, ["keygen", "--out", str(tmp_path)]).exit_code == 1  # never overwrites keys
    priv, pub = tmp_path / "vae-edge.priv.pem", tmp_path / "vae-edge.pub.pem"
    assert runner.invoke(cli, ["sign", str(b), "--key", str(priv)]).exit_code == 0
    res = runner.invoke(cli, ["verify", str(b), "--trusted-key", str(pub), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["signature"] == "verified"
    out = tmp_path / "s.png"
    res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(b), "--trusted-key", str(pub), "-o", str(out)])
    assert res.exit_code == 0 and out.is_file()
    (b / "extra.bin").write_bytes(b"\0")
    out2 = tmp_path / "s2.png"
    res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(b), "-o", str(out2)],
                        env={"VAE_EDGE_TRUSTED_KEY": str(pub)})
    assert res.exit_code == 1 and "extra.bin" in res.output and not out2.exists()
    assert len(res.output.strip().splitlines()) == 1
    assert runner.invoke(cli, ["sign", str(b), "--key", str(pub)]).exit_code == 1  # a public key cannot sign


def test_changing_a_signed_bundle_drops_its_signature(signed, mnist_dir):
    from vae_edge.export.quantize import QuantizeConfig, quantize_bundle

    notes = []
    quantize_bundle(signed, QuantizeConfig(mode="dynamic", eval_size=50), data_dir=mnist_dir, log=notes.append)
    assert not (signed / SIGNATURE).exists() and any("re-sign" in n for n in notes)


def test_verification_needs_no_torch(signed, keys):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "onnx":
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        from vae_edge.runtime import VAERuntime
        rt = VAERuntime.load({str(signed)!r}, variant="int8-static", trusted_key={str(keys["pub"])!r})
        rt.sample(2, seed=0)
        assert rt.signature == "verified" and "torch" not in sys.modules
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ---------------------------------------------------------------------------------------------
# Names confined to the bundle; every file listed and hashed; hashed bytes are loaded bytes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../outside/decoder.onnx", "/etc/passwd", "sub/decoder.onnx", "..", ""])
def test_names_outside_the_bundle_are_refused(bundle_copy, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(bundle_copy / "decoder.onnx", outside / "decoder.onnx")
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["variants"]["fp32"]["files"]["decoder"] = name
    m["files"][name] = m["files"]["decoder.onnx"]
    write_json_atomic(bundle_copy / "manifest.json", m)
    with pytest.raises(VaeEdgeError, match="not a plain file name inside the bundle folder"):
        VAERuntime.load(bundle_copy)


def test_unlisted_graph_and_symlink_are_refused(bundle_copy, tmp_path):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    shutil.copy(bundle_copy / "decoder.onnx", bundle_copy / "decoder.unlisted.onnx")
    m["variants"]["fp32"]["files"]["decoder"] = "decoder.unlisted.onnx"
    write_json_atomic(bundle_copy / "manifest.json", m)
    with pytest.raises(VaeEdgeError, match="not listed with a checksum"):
        VAERuntime.load(bundle_copy)
    m["variants"]["fp32"]["files"]["decoder"] = "decoder.onnx"
    write_json_atomic(bundle_copy / "manifest.json", m)
    target = tmp_path / "elsewhere.onnx"
    shutil.move(bundle_copy / "decoder.onnx", target)
    os.symlink(target, bundle_copy / "decoder.onnx")  # same bytes, but outside the folder
    with pytest.raises(VaeEdgeError, match="symbolic link"):
        VAERuntime.load(bundle_copy)


def test_the_hashed_bytes_are_the_loaded_bytes(bundle_copy, monkeypatch):
    """Sessions are made from the bytes that were checked, never re-read from disk."""
    m = json.loads((bundle_copy / "manifest.json").read_text())
    seen = []
    real = prov.make_session

    def spy(model, *a, **kw):
        seen.append(model)
        return real(model, *a, **kw)

    monkeypatch.setattr(prov, "make_session", spy)
    VAERuntime.load(bundle_copy, variant="int8-dynamic")
    assert len(seen) == 2 and all(isinstance(s, bytes) for s in seen)
    want = {m["files"][n]["sha256"] for n in m["variants"]["int8-dynamic"]["files"].values()}
    assert {hashlib.sha256(s).hexdigest() for s in seen} == want


def test_signed_snapshot_is_what_loads(signed, keys, quantized):
    """A file swapped after the signature check cannot reach onnxruntime: the bytes that load are
    read once and checked against the signed digest."""
    b = open_bundle(signed, keys["pub"])
    before = b.variant_bytes("fp32")["decoder"]
    assert hashlib.sha256(before).hexdigest() == b.signed["decoder.onnx"]
    shutil.copy(quantized / "decoder.int8-static.onnx", signed / "decoder.onnx")
    with pytest.raises(VaeEdgeError, match="decoder.onnx"):
        b.variant_bytes("fp32")


def test_signed_bundle_with_swapped_file_refused_on_next_open(signed, keys, quantized):
    # even when the variant asked for is untouched: the signature covers the whole folder
    shutil.copy(quantized / "decoder.int8-static.onnx", signed / "decoder.onnx")
    with pytest.raises(VaeEdgeError, match="signature check"):
        VAERuntime.load(signed, trusted_key=keys["pub"], variant="int8-static")


def test_reloaded_samples_match(signed, keys):
    a = VAERuntime.load(signed, trusted_key=keys["pub"]).sample(3, seed=1)
    b = VAERuntime.load(signed).sample(3, seed=1)
    assert np.array_equal(a, b)
