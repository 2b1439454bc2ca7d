"""The holes of the security review (issue 22), each tried the way an attacker or a careless user
would, and each refused in one line (or handled correctly) with nothing written outside -o."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.runtime.bundle import SIGNATURE, BundleError, open_bundle
from vae_edge.runtime.files import locked, write_json_atomic
from vae_edge.runtime.trust import keygen, project_key, sign_bundle, sign_digests


def _rehash(bundle: Path, *names: str) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    for name in names:
        data = (bundle / name).read_bytes()
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    write_json_atomic(bundle / "manifest.json", m)


def _sign_anything(bundle: Path, priv: Path) -> None:
    """What a careless maker's other tool does: sign whatever is in the folder, no checks."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle.iterdir() if p.name != SIGNATURE}
    (bundle / SIGNATURE).write_bytes(sign_digests(digests, bundle.name, priv))


def _one_line(res, path_hint: str | None = None) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    # 200 characters, not counting the long temporary folders pytest gives (a user's paths are short)
    assert len(re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ]+", "DIR", lines[0])) <= 200, lines[0]
    if path_hint:
        assert path_hint in lines[0]
    return lines[0]


# --- 1. external data ------------------------------------------------------------------------------

def _externalize(bundle: Path, name: str = "decoder.onnx") -> None:
    m = onnx.load(str(bundle / name))
    onnx.save_model(m, str(bundle / name), save_as_external_data=True, location="w.bin",
                    size_threshold=0, all_tensors_to_one_file=True)


def test_external_data_is_refused_at_load_sign_and_record(signed, keys, tmp_path, monkeypatch):
    (signed / SIGNATURE).unlink()
    _externalize(signed)
    _rehash(signed, "decoder.onnx")
    # the attack: a signed bundle, and zeroed weights in the directory onnxruntime reads them from
    w = signed / "w.bin"
    shutil.move(w, tmp_path / "w.bin")
    (tmp_path / "w.bin").write_bytes(bytes((tmp_path / "w.bin").stat().st_size))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VaeEdgeError, match="external data"):
        sign_bundle(signed, keys["priv"])  # the signer refuses such graphs
    _sign_anything(signed, keys["priv"])  # signed by something else that does not check
    with pytest.raises(VaeEdgeError, match=r"decoder\.onnx keeps .* external data") as e:
        VAERuntime.load(signed, trusted_key=keys["pub"], self_check=False)
    assert "\n" not in str(e.value)
    with pytest.raises(VaeEdgeError, match="external data"):
        VAERuntime.load(signed, self_check=False)  # no key: refused all the same
    from vae_edge.runtime.bundle import load_manifest
    from vae_edge.runtime.bundle_writer import add_variant

    m = load_manifest(signed)
    with pytest.raises(VaeEdgeError, match="external data"):  # the writer (export, quantize) refuses it too
        add_variant(signed, m, "fp32", m["variants"]["fp32"])


def test_external_data_scan_finds_every_kind_of_tensor():
    from onnx import helper, numpy_helper

    from vae_edge.runtime.graphcheck import external_data

    t = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])], [t])
    plain = helper.make_model(g)
    assert external_data(plain.SerializeToString()) == []
    ext = onnx.ModelProto()
    ext.CopyFrom(plain)
    onnx.external_data_helper.set_external_data(ext.graph.initializer[0], "elsewhere.bin")
    ext.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    assert external_data(ext.SerializeToString()) == ["w -> elsewhere.bin"]
    # a Constant node's tensor attribute inside a subgraph of an If node
    c = helper.make_node("Constant", [], ["k"], value=ext.graph.initializer[0])
    sub = helper.make_graph([c], "then", [], [helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [4, 4])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=sub, else_branch=sub)
    g2 = helper.make_graph([node], "g2", [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                           [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 4])])
    assert len(external_data(helper.make_model(g2).SerializeToString())) == 2


# --- 2. -o onto what is not a regular file -----------------------------------------------------------

def test_output_onto_a_character_device_is_written_through(runner, tmp_path, mnist_dir):
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own (needs root, as CI runs)
    for args in (["sample", "-n", "2"], ["encode", "mnist:test[0:2]", "--data-dir", str(mnist_dir)]):
        res = runner.invoke(cli, [*args, "-o", str(dev)])
        assert res.exit_code == 0, res.output
        assert stat.S_ISCHR(os.stat(dev).st_mode)  # still the device, never replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary file left beside it


def test_output_to_a_fifo_and_to_stdout(runner, tmp_path, mnist_dir):
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    got = {}

    def reader():
        with open(fifo, "rb") as f:
            got["data"] = f.read()
    t = threading.Thread(target=reader)
    t.start()
    res = runner.invoke(cli, ["encode", "mnist:test[0:3]", "--data-dir", str(mnist_dir), "-o", str(fifo)])
    t.join(30)
    assert res.exit_code == 0, res.output
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and got["data"].startswith(b"\x93NUMPY")
    res = subprocess.run([sys.executable, "-m", "vae_edge", "sample", "-n", "2", "-o", "-"], capture_output=True)
    assert res.returncode == 0 and res.stdout.startswith(b"\x89PNG"), res.stderr
    assert b"2 samples -> -" in res.stderr  # the closing line goes to stderr, not into the image


def test_output_onto_a_socket_or_folder_is_refused(runner, tmp_path):
    sock_path = tmp_path / "s.png"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        line = _one_line(runner.invoke(cli, ["sample", "-n", "2", "-o", str(sock_path)]), str(sock_path))
        assert "socket" in line and stat.S_ISSOCK(os.stat(sock_path).st_mode)
    finally:
        s.close()
    (tmp_path / "d.png").mkdir()
    assert "folder" in _one_line(runner.invoke(cli, ["sample", "-n", "2", "-o", str(tmp_path / "d.png")]))


# --- 3. git files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".gitignore", ".gitattributes"])
def test_git_files_added_after_signing_are_refused(signed, keys, runner, name):
    (signed / name).write_text("*\n")
    with pytest.raises(VaeEdgeError, match=rf"{name} was added after signing"):
        VAERuntime.load(signed, trusted_key=keys["pub"])
    res = runner.invoke(cli, ["verify", str(signed), "--trusted-key", str(keys["pub"])])
    assert name in _one_line(res)


# --- 4. the key-only verifier against model_signing, both ways -----------------------------------------

def test_own_signatures_verify_with_model_signing_and_back(signed, keys, tmp_path, quantized):
    from model_signing import hashing, signing, verifying

    def ms_verify(path: Path) -> None:
        (verifying.Config().use_elliptic_key_verifier(public_key=keys["pub"])
         .set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))
         .verify(path, path / SIGNATURE))

    ms_verify(signed)  # vae-edge's signature, model_signing's verifier
    theirs = tmp_path / "theirs"
    shutil.copytree(quantized, theirs)
    (signing.Config().use_elliptic_key_signer(private_key=keys["priv"])
     .set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False))
     .sign(theirs, theirs / SIGNATURE))
    assert VAERuntime.load(theirs, trusted_key=keys["pub"]).signature == "verified"  # and the other way
    # the official CLI too, on the shipped bundles and on ours
    for path, key in ((signed, keys["pub"]), (Path(str(VAERuntime.load("conv-mnist").bundle)), project_key())):
        res = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(path), "--signature",
                              str(path / SIGNATURE), "--public_key", str(key)], capture_output=True, text=True)
        assert res.returncode == 0 and "Verification succeeded" in res.stdout, res.stderr
    # a change both refuse
    m = json.loads((signed / "manifest.json").read_text())
    m["name"] = "other"
    write_json_atomic(signed / "manifest.json", m)
    with pytest.raises(Exception):  # noqa: B017 (model_signing raises ValueError)
        ms_verify(signed)
    with pytest.raises(VaeEdgeError, match="manifest.json changed after signing"):
        VAERuntime.load(signed, trusted_key=keys["pub"])


def test_base_install_checks_the_shipped_bundles_without_model_signing(tmp_path):
    """model_signing blocked: the shipped bundles are still verified, and a tampered one is refused."""
    src = Path(str(VAERuntime.load("mlp-mnist").bundle))
    tampered = tmp_path / "mlp-mnist" / "bundle"
    shutil.copytree(src, tampered)
    m = json.loads((tampered / "manifest.json").read_text())
    m["variants"]["fp32"].pop("golden")
    write_json_atomic(tampered / "manifest.json", m)
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("model_signing", "sigstore", "torch"):
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        from pathlib import Path
        import vae_edge.runtime.vae_runtime as vr
        from vae_edge import VaeEdgeError
        assert vr.VAERuntime.load("mlp-mnist").signature == "verified"
        vr.shipped_bundles = lambda: {{"mlp-mnist": Path({str(tampered)!r})}}
        try:
            vr.VAERuntime.load("mlp-mnist")
        except VaeEdgeError as e:
            print("refused:", e)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "manifest.json changed after signing" in res.stdout


# --- 5. the tuning cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("choice, problem", [
    ({"variant": "int8-dynamic", "provider": "cpu", "threads": 400}, "threads"),
    ({"variant": "nonsense", "provider": "cpu", "threads": 1}, "not in the bundle"),
    ({"variant": "int8-dynamic", "provider": "cuda9", "threads": 1}, "provider"),
    ({"variant": "int8-dynamic", "provider": "cpu", "threads": "many"}, "threads"),
    ("int8-dynamic", "not a table"),
])
def test_a_bad_tuning_record_is_ignored_with_a_note(signed, keys, choice, problem):
    from vae_edge.runtime.bundle import load_manifest, user_tuning_file

    path = user_tuning_file(load_manifest(signed))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"choice": choice}))
    notes = []
    try:
        rt = VAERuntime.load(signed, variant="auto", trusted_key=keys["pub"], warn=notes.append)
    finally:
        path.unlink()
    assert rt.threads in (None, 1) and any("is ignored" in n and problem in n for n in notes), notes


# --- 6. one writer at a time ---------------------------------------------------------------------------

def test_a_second_writer_fails_in_one_line_and_changes_nothing(bundle_copy, mnist_dir):
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    with locked(bundle_copy):
        res = subprocess.run([sys.executable, "-m", "vae_edge", "quantize", str(bundle_copy), "--mode", "fp16",
                              "--data-dir", str(mnist_dir), "--eval-size", "50"], capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "being changed by another vae-edge command" in lines[0], res.stderr
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir()} == before


def test_concurrent_quantizers_leave_a_consistent_bundle(bundle_copy, mnist_dir, runner):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    for v in ("int8-dynamic", "fp16"):  # make them again from scratch
        for name in m["variants"].pop(v)["files"].values():
            m["files"].pop(name)
            (bundle_copy / name).unlink()
    write_json_atomic(bundle_copy / "manifest.json", m)
    cmd = [sys.executable, "-m", "vae_edge", "quantize", str(bundle_copy), "--data-dir", str(mnist_dir),
           "--eval-size", "50", "--mode"]
    procs = [subprocess.Popen([*cmd, mode], stderr=subprocess.PIPE, text=True) for mode in ("dynamic", "fp16")]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    m = json.loads((bundle_copy / "manifest.json").read_text())
    for (rc, err), variant in zip(results, ("int8-dynamic", "fp16"), strict=True):
        if rc == 0:
            assert variant in m["variants"], err
        else:
            assert rc == 1 and "being changed by another vae-edge command" in err, err
            assert variant not in m["variants"]
    assert any(rc == 0 for rc, _ in results)
    on_disk = {p.name for p in bundle_copy.iterdir()}
    assert on_disk == set(m["files"]) | {"manifest.json"}  # no orphans, nothing missing
    assert runner.invoke(cli, ["verify", str(bundle_copy)]).exit_code == 0


# --- 7, 8, 9. memory, disk, FIFOs, and what is hashed ----------------------------------------------------

def _run_load(bundle: Path, key: Path | None, tmpdir: Path) -> tuple[str, int]:
    # peak RSS from /proc/self/status (VmHWM belongs to the process's own address space; getrusage's
    # ru_maxrss would carry the forking pytest process's peak over the exec)
    code = textwrap.dedent(f"""
        import sys
        from vae_edge.runtime import VAERuntime
        from vae_edge import VaeEdgeError
        try:
            VAERuntime.load({str(bundle)!r}, trusted_key={str(key) if key else None!r})
            print("loaded")
        except VaeEdgeError as e:
            print(e)
        print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TMPDIR": str(tmpdir)})
    assert res.returncode == 0, res.stderr
    message, rss = res.stdout.strip().splitlines()
    return message, int(rss) * 1024


@pytest.mark.parametrize("attack", ["two 300 MB files added", "graph replaced by 300 MB"])
def test_oversized_files_are_refused_before_they_are_read(signed, keys, tmp_path, attack):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    _, baseline = _run_load(signed, keys["pub"], tmpdir)
    left = sorted(tmpdir.iterdir())  # what onnxruntime's import leaves (its .ses session file)
    if attack.startswith("two"):
        for name in ("a.bin", "b.bin"):
            with open(signed / name, "wb") as f:
                f.truncate(300 << 20)  # sparse: costs no disk, only what a reader makes of it
    else:
        with open(signed / "decoder.onnx", "r+b") as f:
            f.truncate(300 << 20)
    t0 = time.perf_counter()
    message, rss = _run_load(signed, keys["pub"], tmpdir)
    assert "refused" in message and str(signed) in message, message
    assert rss < baseline + (64 << 20), (rss, baseline)  # nothing read into memory
    assert sorted(tmpdir.iterdir()) == left  # and nothing copied to /tmp
    print(f"\nRELIABILITY: {attack}: refused in {time.perf_counter() - t0:.2f} s (a new process: start-up included), peak RSS "
          f"{rss / 2**20:.0f} MB (a clean load: {baseline / 2**20:.0f} MB), nothing written to TMPDIR")
    if not attack.startswith("two"):  # without a key: the size disagrees with the manifest
        message, rss = _run_load(signed, None, tmpdir)
        assert "does not match the size" in message and rss < baseline + (64 << 20), message


@pytest.mark.parametrize("key", [False, True])
def test_a_fifo_in_place_of_a_graph_is_refused_at_once(signed, keys, tmp_path, key):
    (signed / "decoder.onnx").unlink()
    os.mkfifo(signed / "decoder.onnx")
    t0 = time.perf_counter()
    message, _ = _run_load(signed, keys["pub"] if key else None, tmp_path)
    took = time.perf_counter() - t0
    assert "decoder.onnx" in message and ("FIFO" in message or "regular file" in message), message
    print(f"\nRELIABILITY: FIFO in place of decoder.onnx ({'with' if key else 'without'} a key): refused in {took:.2f} s (a new process: start-up included)")


# --- 10. graph inputs and outputs against the manifest ----------------------------------------------------

def test_reordered_outputs_are_called_by_name(bundle_copy, tmp_path):
    want = VAERuntime.load(bundle_copy).sample(3, seed=0)
    m = onnx.load(str(bundle_copy / "decoder.onnx"))
    outs = list(m.graph.output)
    del m.graph.output[:]
    m.graph.output.extend(outs[::-1])  # probs first, logits second
    onnx.save_model(m, str(bundle_copy / "decoder.onnx"))
    _rehash(bundle_copy, "decoder.onnx")
    got = VAERuntime.load(bundle_copy, self_check=False).sample(3, seed=0)
    assert np.array_equal(got, want) and got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("change", ["renamed output", "other dtype"])
def test_graphs_unlike_their_description_are_refused(bundle_copy, change):
    m = onnx.load(str(bundle_copy / "decoder.onnx"))
    if change == "renamed output":
        old = m.graph.output[1].name
        m.graph.output[1].name = "p"
        for node in m.graph.node:
            node.output[:] = ["p" if o == old else o for o in node.output]
    else:
        m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        cast = onnx.helper.make_node("Cast", [m.graph.input[0].name], ["z_f"], to=onnx.TensorProto.FLOAT)
        for node in m.graph.node:
            node.input[:] = ["z_f" if i == m.graph.input[0].name else i for i in node.input]
        m.graph.node.insert(0, cast)
    onnx.save_model(m, str(bundle_copy / "decoder.onnx"))
    _rehash(bundle_copy, "decoder.onnx")
    with pytest.raises(VaeEdgeError, match="the manifest") as e:
        VAERuntime.load(bundle_copy, self_check=False)
    assert "decoder.onnx" in str(e.value) and len(str(e.value)) < 300


# --- 11. identity and rollback -----------------------------------------------------------------------

def test_expect_pins_the_name_and_refuses_older_releases(signed, keys, runner):
    m = json.loads((signed / "manifest.json").read_text())
    m["name"], m["release"] = "my-vae", 3
    write_json_atomic(signed / "manifest.json", m)
    sign_bundle(signed, keys["priv"])
    ok = VAERuntime.load(signed, trusted_key=keys["pub"], expect="my-vae@3")
    assert ok.manifest["release"] == 3
    with pytest.raises(VaeEdgeError, match="older than the expected 4"):
        VAERuntime.load(signed, trusted_key=keys["pub"], expect="my-vae@4")
    with pytest.raises(VaeEdgeError, match="not the expected 'other'"):
        VAERuntime.load(signed, trusted_key=keys["pub"], expect="other")
    with pytest.raises(VaeEdgeError, match="needs a verified signature"):
        VAERuntime.load(signed, expect="my-vae")
    res = runner.invoke(cli, ["sample", "-n", "2", "--bundle", str(signed), "-o", str(signed.parent / "s.png")],
                        env={"VAE_EDGE_TRUSTED_KEY": str(keys["pub"]), "VAE_EDGE_EXPECT": "my-vae@5"})
    assert "rollback" in _one_line(res) and not (signed.parent / "s.png").exists()


# --- 12. resource bounds -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["sample", "-n", "4", "--threads", "1000"], "at most"),
    (["score", "mnist:test[0:1]", "--iw-samples", "1000000000"], "iw samples must lie between"),
    (["denoise", "mnist:test[0:8]", "--samples", "2000000"], "GiB"),
    (["sample", "-n", "4", "--seed", "-1"], "--seed"),
])
def test_resource_bounds_refuse_in_one_line(runner, tmp_path, mnist_dir, args, says):
    out = tmp_path / "o.png"
    full = [*args, "-o", str(out)] if args[0] != "score" else list(args)
    if args[0] in ("score", "denoise"):
        full += ["--data-dir", str(mnist_dir)]
    res = runner.invoke(cli, full)  # refused from the options alone: no model call, no allocation
    assert says in _one_line(res) and not out.exists()


@pytest.mark.parametrize("kind", ["huge header", "complex", "strings", "truncated", "object"])
def test_hostile_npy_files_are_refused(runner, tmp_path, kind):
    p = tmp_path / "z.npy"
    if kind == "huge header":
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, 50)}
        with open(p, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
    elif kind == "truncated":
        np.save(p, np.zeros((10, 50), np.float32))
        p.write_bytes(p.read_bytes()[:-40])
    elif kind == "object":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(p, np.zeros((2, 50), np.complex64) if kind == "complex" else np.array(["a" * 50] * 2))
    line = _one_line(runner.invoke(cli, ["decode", str(p), "-o", str(tmp_path / "d.png")]), str(p))
    assert not (tmp_path / "d.png").exists()
    assert "Traceback" not in line and "MemoryError" not in line


# --- 13. error text ------------------------------------------------------------------------------------

def test_refusals_name_the_users_path_and_fit_one_line(signed, keys, runner, tmp_path):
    (signed / SIGNATURE).write_text('{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}')
    line = _one_line(runner.invoke(cli, ["info", "--bundle", str(signed), "--trusted-key", str(keys["pub"])]),
                     str(signed))
    assert "verificationMaterial" not in line and "malformed" in line
    (signed / "manifest.json").write_text("")
    line = _one_line(runner.invoke(cli, ["sample", "-n", "1", "--bundle", str(signed), "-o", str(tmp_path / "s.png")]))
    assert "not valid JSON (line 1, column 1)" in line and str(signed) in line


def test_verify_without_a_key_fails_on_a_bundle_changed_after_signing(signed, runner):
    assert runner.invoke(cli, ["verify", str(signed)]).exit_code == 0
    m = json.loads((signed / "manifest.json").read_text())
    m["variants"]["int8-static"]["accuracy"]["neg_elbo_delta"] = 0.0
    write_json_atomic(signed / "manifest.json", m)
    res = runner.invoke(cli, ["verify", str(signed)])
    assert res.exit_code == 1 and "changed after it was signed (manifest.json)" in res.output


@pytest.mark.parametrize("command", ["info", "tune", "bench"])
def test_every_command_that_opens_a_bundle_takes_a_trusted_key(signed, keys, tmp_path, runner, command):
    other_priv, other_pub = keygen(tmp_path / "o.priv.pem", tmp_path / "o.pub.pem")
    args = {"info": ["info", "--bundle", str(signed)], "tune": ["tune", "--bundle", str(signed), "--min-time", "0.01"],
            "bench": ["bench", "--bundle", str(signed), "--baseline", "none", "--min-time", "0.01",
                      "--batch-sizes", "1"]}[command]
    assert "another key" in _one_line(runner.invoke(cli, [*args, "--trusted-key", str(other_pub)]))
    if command == "info":
        res = runner.invoke(cli, [*args, "--trusted-key", str(keys["pub"])])
        assert res.exit_code == 0 and "valid, signed by" in res.output


def test_bundle_errors_are_bundle_errors():
    assert issubclass(BundleError, VaeEdgeError)
    with pytest.raises(BundleError):
        open_bundle("/nonexistent/bundle")
