from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_idx_dir
from vae_edge import VaeEdgeError
from vae_edge import data as d


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 5), h=st.integers(1, 6), w=st.integers(1, 6), gz=st.booleans(), seed=st.integers(0, 99))
def test_idx_roundtrip(tmp_path_factory, n, h, w, gz, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (n, h, w)).astype(np.uint8)
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    d.write_idx(path, arr)
    out = d.read_idx(path)
    assert out.dtype == np.uint8 and out.shape == arr.shape and np.array_equal(out, arr)


def test_real_mnist_validates_by_format(mnist_dir):
    assert d.verify_dir(mnist_dir) == {"train": 60000, "test": 10000}
    x, y = d.load_split(mnist_dir, "test")
    assert x.shape == (10000, 28, 28) and y[:3].tolist() == [7, 2, 1]


def test_wrong_magic(tiny_idx):
    (tiny_idx / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04" + b"\0" * 50))
    with pytest.raises(VaeEdgeError, match="magic"):
        d.load_split(tiny_idx, "test")


def test_truncated_file(tiny_idx):
    p = tiny_idx / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(VaeEdgeError, match="truncated"):
        d.load_split(tiny_idx, "test")


def test_corrupt_gzip(tiny_idx):
    p = tiny_idx / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(VaeEdgeError, match="corrupt|truncated"):
        d.load_split(tiny_idx, "test")


def test_counts_must_match(tiny_idx):
    d.write_idx(tiny_idx / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(VaeEdgeError, match="32 images but 5 labels"):
        d.load_split(tiny_idx, "test")


def test_raw_files_and_verify_counts(tmp_path):
    directory = make_idx_dir(tmp_path / "raw", gz=False)
    assert d.verify_dir(directory, full_size=False) == {"train": 64, "test": 32}
    with pytest.raises(VaeEdgeError, match="expected 60000"):
        d.verify_dir(directory)


def test_missing_dir_says_how_to_get_data(tmp_path):
    with pytest.raises(VaeEdgeError, match="data fetch"):
        d.load_split(tmp_path, "train")
    with pytest.raises(VaeEdgeError, match="does not exist"):
        d.resolve_data_dir("mnist", tmp_path / "nope")


def test_unknown_dataset():
    with pytest.raises(VaeEdgeError, match="unknown dataset"):
        d.get_spec("cifar")


def test_resolution_order(tmp_path, monkeypatch, tiny_idx):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAE_EDGE_DATA", str(tiny_idx))
    assert d.resolve_data_dir("mnist", download=False) == tiny_idx
    assert d.resolve_data_dir("mnist", tmp_path, download=False) == tmp_path  # --data-dir wins
    monkeypatch.delenv("VAE_EDGE_DATA")
    with pytest.raises(VaeEdgeError, match="not found"):
        d.resolve_data_dir("mnist", download=False)


def test_env_folder_of_another_dataset_is_passed_over(tmp_path, monkeypatch, mnist_dir):
    """$VAE_EDGE_DATA pointing at MNIST must not stand in for Fashion-MNIST (an anomaly benchmark
    would then score MNIST against itself: AUROC 0.5)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VAE_EDGE_DATA", str(mnist_dir))
    assert d.identify(mnist_dir) == "mnist"
    monkeypatch.setitem(d.DATASETS, "fashion-mnist", replace(d.DATASETS["fashion-mnist"], system_dirs=()))  # env + empty cache
    with pytest.raises(VaeEdgeError, match="not found"):
        d.resolve_data_dir("fashion-mnist", download=False, split="test")
    assert d.resolve_data_dir("mnist", download=False, split="test") == mnist_dir


def test_dataset_slice(mnist_dir):
    x, y = d.load_slice("mnist:test[2:5]", mnist_dir)
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert y.tolist() == [1, 0, 4]
    with pytest.raises(VaeEdgeError, match="no images"):
        d.load_slice("mnist:test[5:5]", mnist_dir)


class _Server:
    """A local HTTP server on 127.0.0.1 serving a folder; /broken/ answers 404."""

    def __init__(self, root: Path):
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _spec_for(directory: Path, mirrors) -> d.DatasetSpec:
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in directory.glob("*.gz")}
    return d.DatasetSpec("mnist", tuple(mirrors), md5)


def test_download_with_mirror_fallback_and_md5(tmp_path, monkeypatch):
    served = make_idx_dir(tmp_path / "www" / "mnist")
    server = _Server(tmp_path / "www")
    try:
        spec = _spec_for(served, [server.url + "/broken/", server.url + "/mnist/"])
        monkeypatch.setitem(d.DATASETS, "mnist", spec)
        out = d.fetch("mnist", tmp_path / "dl")
        assert d.verify_dir(out, full_size=False) == {"train": 64, "test": 32}
        assert not list(out.glob("*.part"))
        # a mirror serving a file with the wrong checksum is refused, and nothing is left behind
        bad = d.DatasetSpec("mnist", (server.url + "/mnist/",), dict.fromkeys(spec.md5, "0" * 32))
        monkeypatch.setitem(d.DATASETS, "mnist", bad)
        with pytest.raises(VaeEdgeError, match="wrong checksum"):
            d.fetch("mnist", tmp_path / "dl2")
        assert not (tmp_path / "dl2").exists()  # no bad bytes, and no empty folder left behind
    finally:
        server.close()


def test_offline_error_is_clear(tmp_path, monkeypatch):
    server = _Server(tmp_path)
    url = server.url
    server.close()  # nothing listens there any more
    monkeypatch.setitem(d.DATASETS, "mnist", d.DatasetSpec("mnist", (url + "/",), {"a.gz": "0" * 32}))
    with pytest.raises(VaeEdgeError, match="offline"):
        d.fetch("mnist", tmp_path / "dl")


def test_binarize_is_seeded():
    x = np.full((2, 1, 28, 28), 0.5, np.float32)
    a, b = d.binarize(x, 0), d.binarize(x, 0)
    assert np.array_equal(a, b) and set(np.unique(a)) == {0.0, 1.0}


def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    """`apt-get install dataset-fashion-mnist` (done by .ci/run) is found after the cache, and
    validated by format: Debian recompressed the files, so their md5 differs from the download's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("VAE_EDGE_DATA", raising=False)
    directory = d.resolve_data_dir("fashion-mnist", download=False)
    assert str(directory) == "/usr/share/datasets/fashion-mnist"
    assert d.verify_dir(directory) == {"train": 60000, "test": 10000}
    x, y = d.load_split(directory, "test")
    assert y[:3].tolist() == [9, 2, 1]  # ankle boot, pullover, trouser


def test_offline_fashion_mnist_names_its_package(tmp_path, monkeypatch):
    """Offline and without the Debian package: the error says which package holds the files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every download is refused at once
    spec = replace(d.DATASETS["fashion-mnist"], system_dirs=(str(tmp_path / "none"),),
                   mirrors=(f"http://127.0.0.1:{port}/",))
    monkeypatch.setitem(d.DATASETS, "fashion-mnist", spec)
    with pytest.raises(VaeEdgeError, match="apt-get install dataset-fashion-mnist") as e:
        d.resolve_data_dir("fashion-mnist", split="test")
    assert "\n" not in str(e.value)


def test_data_fetch_cli_against_local_server(tmp_path, monkeypatch, runner):
    from vae_edge.cli import cli

    served = make_idx_dir(tmp_path / "www" / "mnist")
    server = _Server(tmp_path / "www")
    try:
        monkeypatch.setitem(d.DATASETS, "mnist", _spec_for(served, [server.url + "/mnist/"]))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        res = runner.invoke(cli, ["data", "fetch"])
        assert res.exit_code == 0, res.output
        cached = tmp_path / "cache" / "vae-edge" / "mnist"
        assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in served.iterdir())
        # the cache is now found without --data-dir
        assert d.resolve_data_dir("mnist", download=False) == cached
    finally:
        server.close()


def test_a_slice_reads_the_dataset_it_names(mnist_dir):
    from vae_edge.data import identify, load_slice

    assert identify(mnist_dir) == "mnist"
    with pytest.raises(VaeEdgeError, match="holds mnist, not fashion-mnist"):
        load_slice("fashion-mnist:test[0:4]", mnist_dir)
    fashion = Path("/usr/share/datasets/fashion-mnist")
    if fashion.is_dir():
        assert identify(fashion) == "fashion-mnist"
        x, y = load_slice("fashion-mnist:test[0:4]")  # its own location, without --data-dir
        assert list(y) == [9, 2, 1, 1]


def test_test_images_only_fetch_the_test_split(tmp_path, monkeypatch):
    """Offline, a command that needs test images names a test file, and fetches nothing else."""
    from vae_edge.data import load_slice

    served = make_idx_dir(tmp_path / "www" / "mnist")
    server = _Server(tmp_path / "www")
    try:
        spec = _spec_for(served, [server.url + "/mnist/"])
        monkeypatch.setitem(d.DATASETS, "mnist", spec)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.delenv("VAE_EDGE_DATA", raising=False)
        x, _ = load_slice("mnist:test[0:3]")
        assert x.shape == (3, 1, 28, 28)
        assert sorted(p.name for p in d.cache_dir("mnist").iterdir()) == [
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    finally:
        server.close()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    with pytest.raises(VaeEdgeError, match="t10k-images") as e:
        load_slice("mnist:test[0:3]")  # the server is gone: offline
    assert "train-images" not in str(e.value)
