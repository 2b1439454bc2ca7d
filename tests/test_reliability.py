"""Nothing lost: killed training, interrupted export and quantization, concurrent callers, leaks,
downloads under faults. Each test prints its figures (run with -s to see them); the README's
Reliability section quotes them."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_idx_dir
from vae_edge import VaeEdgeError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Killed training
# ---------------------------------------------------------------------------------------------

# The child trains through the real CLI; only torch.save is slowed (half the bytes, a pause, the
# rest), so that a SIGKILL can land in the middle of writing a checkpoint. The marker lines tell
# the parent where the child is.
TRAIN_DRIVER = textwrap.dedent("""
    import io, sys, time
    import torch
    real_save = torch.save
    def slow_save(obj, f, *a, **kw):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **kw)
        data = buf.getvalue()
        print("SAVE-BEGIN", flush=True)
        f.write(data[: len(data) // 2]); f.flush()
        print("SAVE-MID", flush=True)
        time.sleep(0.3)
        f.write(data[len(data) // 2:])
        print("SAVE-END", flush=True)
    torch.save = slow_save
    from vae_edge.cli import cli
    cli(sys.argv[1:], prog_name="vae-edge")
""")


def _train_args(out: Path, data: Path, resume: bool) -> list[str]:
    return [sys.executable, "-c", TRAIN_DRIVER, "train", "--hidden", "32", "--latent-dim", "4", "--epochs", "8",
            "--batch-size", "16", "--lr-schedule", "cosine", "--kl-warmup", "2", "--threads", "1", "--quiet",
            "--data-dir", str(data), "--out", str(out), "--device", "cpu", *(["--resume"] if resume else [])]


def _run_until(args: list[str], kill_on: str | None, after: float | None, nth: int = 1) -> str:
    """Run the child; SIGKILL it at the nth `kill_on` marker (with `after`: that many seconds after
    it, at whatever point training has reached), or `after` seconds from the start; return how it ended."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    timer = None

    def kill_later():
        nonlocal timer
        timer = threading.Timer(after, lambda: proc.poll() is None and proc.send_signal(signal.SIGKILL))
        timer.start()
    if after is not None and not kill_on:
        kill_later()
    seen = 0
    for line in proc.stdout:
        if kill_on and line.strip() == kill_on:
            seen += 1
            if seen == nth and after is not None:
                kill_later()
            elif seen == nth:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=120)
    if timer:
        timer.cancel()
    return "killed" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"


def test_killed_training_resumes_bit_identical(tmp_path):
    import torch

    from vae_edge.train import load_checkpoint

    data = make_idx_dir(tmp_path / "data", n_train=512, n_test=32)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert _run_until(_train_args(ref, data, False), None, None) == "exit 0"

    # Kills at a save's markers, and at arbitrary points: a random delay after a checkpoint, so
    # that how far training got does not depend on how fast this machine starts a process.
    rng = random.Random(0)
    kills = [("SAVE-MID", None, 2), ("SAVE-END", rng.uniform(0.02, 0.25), 2), ("SAVE-MID", None, 1),
             ("SAVE-BEGIN", None, 2), ("SAVE-END", rng.uniform(0.02, 0.25), 1)]
    outcomes = []
    for marker, after, nth in kills:
        resume = (run / "model.pt").exists()
        outcomes.append(_run_until(_train_args(run, data, resume), marker, after, nth))
        if (run / "model.pt").exists():
            load_checkpoint(run / "model.pt")  # every kill leaves a loadable checkpoint (or none yet)
    final = _run_until(_train_args(run, data, (run / "model.pt").exists()), None, None)
    assert final == "exit 0", outcomes
    assert outcomes.count("killed") >= 4, outcomes
    a, b = load_checkpoint(ref / "model.pt"), load_checkpoint(run / "model.pt")
    assert a["epoch"] == b["epoch"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(_opt_tensors(a), _opt_tensors(b), strict=True))
    print(f"\nRELIABILITY: killed training: {outcomes.count('killed')} SIGKILLs ({', '.join(outcomes)}), "
          "resumed to bit-identical weights and optimizer state")


def _opt_tensors(ckpt):
    return [v for s in ckpt["optimizer"]["state"].values() for v in s.values() if hasattr(v, "shape")]


# ---------------------------------------------------------------------------------------------
# Interrupted export and quantization
# ---------------------------------------------------------------------------------------------

# The child kills itself at a chosen point of a bundle update (KILL_AT), through the real CLI.
BUNDLE_DRIVER = textwrap.dedent("""
    import os, signal, sys
    where = os.environ["KILL_AT"]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    import vae_edge.runtime.bundle as b
    import vae_edge.runtime.bundle_writer as w
    import vae_edge.export.quantize as q
    import vae_edge.export.onnx_export as e
    if where == "quantize:files-in-place":
        real_add = q.add_variant
        q.add_variant = lambda *a, **k: die()
    elif where == "quantize:manifest-written-not-renamed":
        real_replace = os.replace
        def replace(src, dst, *a, **k):
            if str(dst).endswith("manifest.json"):
                die()
            return real_replace(src, dst, *a, **k)
        b.os.replace = replace
    elif where == "quantize:before-cleanup":  # the manifest written, stale files not yet removed
        real_write = w.write_json_atomic
        def write(path, obj):
            real_write(path, obj)
            die()
        w.write_json_atomic = write
    elif where == "export:second-graph":
        real_validate = e.validate_graph
        calls = []
        def validate(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                die()
            return real_validate(*a, **k)
        e.validate_graph = validate
    from vae_edge.cli import cli
    cli(sys.argv[1:], prog_name="vae-edge")
""")


def _child(args: list[str], kill_at: str = "none") -> int:
    env = {**os.environ, "KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-c", BUNDLE_DRIVER, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300).returncode


def _all_variants_load(bundle: Path) -> list[str]:
    from vae_edge.runtime import VAERuntime
    from vae_edge.runtime.bundle import load_manifest, verify_files

    m = load_manifest(bundle)
    verify_files(bundle, m)  # every sha256 entry is valid
    for v in m["variants"]:
        assert VAERuntime.load(bundle, variant=v).sample(2, seed=0).shape == (2, 1, 28, 28)
    return sorted(m["variants"])


@pytest.mark.parametrize("kill_at", ["quantize:files-in-place", "quantize:manifest-written-not-renamed",
                                     "quantize:before-cleanup"])
def test_interrupted_quantize_leaves_a_loadable_bundle(tmp_path, quantized, mnist_dir, kill_at):
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    before = _all_variants_load(b)
    # re-making an existing variant: the riskiest case (its files are replaced)
    args = ["quantize", str(b), "--mode", "dynamic", "--eval-size", "50", "--data-dir", str(mnist_dir)]
    assert _child(args, kill_at) == -signal.SIGKILL
    assert _all_variants_load(b) == before
    assert _child(args) == 0  # a re-run completes it
    assert _all_variants_load(b) == before
    listed = set(json.loads((b / "manifest.json").read_text())["files"]) | {"manifest.json"}
    assert {p.name for p in b.iterdir()} == listed  # no stale files once an update completes
    print(f"\nRELIABILITY: quantize killed at {kill_at.split(':')[1]}: all {len(before)} variants still load "
          "with valid sha256 entries; a re-run completes it")


def test_interrupted_export_keeps_the_old_bundle(tmp_path, ckpts, quantized, mnist_dir):
    b = tmp_path / "b"
    shutil.copytree(quantized, b)
    before = _all_variants_load(b)
    args = ["export", str(ckpts["mlp"]), "--out", str(b), "--data-dir", str(mnist_dir)]
    assert _child(args, "export:second-graph") == -signal.SIGKILL
    assert _all_variants_load(b) == before  # the old bundle is untouched
    assert _child(args) == 0
    assert _all_variants_load(b) == ["fp32"]  # replaced by the fresh export
    print("\nRELIABILITY: export killed between its two graphs: the old bundle stays whole; a re-run replaces it")


# ---------------------------------------------------------------------------------------------
# Concurrent callers
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["fp32", "int8-dynamic", "int8-static", "fp16"])
def test_concurrent_callers_match_serial(quantized, variant):
    from vae_edge.runtime import VAERuntime

    rt = VAERuntime.load(quantized, variant=variant, threads=2)
    rng = np.random.default_rng(0)
    calls = []
    for i in range(1200):
        b = int(rng.choice([1, 3, 8, 32]))
        kind = ("encode", "decode", "score")[i % 3]
        if kind == "decode":
            calls.append((kind, rng.standard_normal((b, rt.latent_dim)).astype(np.float32)))
        else:
            calls.append((kind, rng.random((b, 1, 28, 28)).astype(np.float32)))

    def do(call):
        kind, arg = call
        if kind == "encode":
            return np.concatenate(rt.encode(arg), 1)
        if kind == "decode":
            return rt.decode(arg)
        return rt.score(arg, seed=7)

    serial = [do(c) for c in calls]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(do, calls))
    assert all(np.array_equal(s, p) for s, p in zip(serial, parallel, strict=True))
    print(f"\nRELIABILITY: {variant}: {len(calls)} mixed calls from 8 threads equal the serial results")


def test_no_leak_over_1000_loads(quantized):
    from vae_edge.runtime import VAERuntime

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    z = np.zeros((4, 8), np.float32)
    for i in range(1100):
        with VAERuntime.load(quantized, variant=("fp32", "int8-static")[i % 2], threads=1) as rt:
            rt.decode(z)
        if i == 99:
            warm = rss_mb()
    grown = rss_mb() - warm
    print(f"\nRELIABILITY: RSS after 100 warm-up loads {warm:.1f} MB; after 1,000 more load/use/close cycles {grown:+.1f} MB")
    assert grown < 10
    with pytest.raises(VaeEdgeError, match="closed"):
        rt.decode(z)


# ---------------------------------------------------------------------------------------------
# Downloads under faults, against a local server
# ---------------------------------------------------------------------------------------------

GOOD = b"the real file " * 5000
GOOD_MD5 = hashlib.md5(GOOD).hexdigest()


class FaultyMirrors(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        kind = self.path.strip("/").split("/")[0]
        if kind == "missing":
            self.send_error(404)
            return
        body = b"wrong bytes" * 100 if kind == "badsum" else GOOD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind in ("good", "badsum"):
            self.wfile.write(body)
        elif kind == "truncated":  # a clean close, half the promised body
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif kind == "stall":  # a few bytes, then nothing (the client times out); bounded
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(2.0)
        elif kind == "reset":  # the connection dies mid-transfer (RST)
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()


@pytest.fixture
def mirrors():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyMirrors)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {k: f"{base}/{k}/" for k in ("good", "badsum", "truncated", "stall", "reset", "missing")}
    server.shutdown()
    server.server_close()


def test_download_faults_then_good_mirror(tmp_path, mirrors):
    from vae_edge.data import download_file

    dest = tmp_path / "cache"
    order = ("truncated", "badsum", "stall", "reset", "missing", "good")
    t0 = time.perf_counter()
    path = download_file("f.gz", dest, tuple(mirrors[k] for k in order), GOOD_MD5, timeout=0.5)
    assert path.read_bytes() == GOOD and sorted(p.name for p in dest.iterdir()) == ["f.gz"]
    print(f"\nRELIABILITY: 5 faulty mirrors, then a good one: {time.perf_counter() - t0:.1f} s, only good bytes in the cache")


def test_download_every_mirror_fails(tmp_path, mirrors):
    from vae_edge.data import download_file

    dest = tmp_path / "cache"
    order = ("truncated", "badsum", "stall", "reset", "missing")
    with pytest.raises(VaeEdgeError) as e:
        download_file("f.gz", dest, tuple(mirrors[k] for k in order), GOOD_MD5, timeout=0.5)
    msg = str(e.value)
    assert "\n" not in msg and "any of 5 mirror(s)" in msg and "--dest" in msg
    for k, why in zip(order, ("truncated", "wrong checksum", "timed out", "", "HTTP 404"), strict=True):
        part = next(p for p in msg.split("; ") if f"/{k}/" in p)
        assert why in part, part
    assert not dest.exists()  # no bad bytes, and no empty cache folder left behind
