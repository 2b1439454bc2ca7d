"""Lossless bits-back compression (runtime/ans.py, runtime/compress.py, `vae-edge compress`):
the ANS coder's exact inverse, round trips through the API and the CLI, the rate against the
model's -ELBO, and every refusal (empty input, grey images, another bundle, another variant,
another device's numerics, a damaged byte) in one line with nothing written."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vae_edge import VaeEdgeError
from vae_edge.cli import cli
from vae_edge.runtime import VAERuntime
from vae_edge.runtime import compress as C
from vae_edge.runtime.ans import Message


@pytest.fixture(scope="module")
def mlp():
    return VAERuntime.load("mlp-mnist")


@pytest.fixture(scope="module")
def digits(mnist_dir):
    from vae_edge.data import binarize, load_slice

    x, _ = load_slice("mnist:test[0:400]", mnist_dir)
    return binarize(x, 0)


def test_ans_pop_is_the_exact_inverse_of_push():
    """Random pushes and pops (many more pops than a fresh message holds: virtual words) on random
    lane counts and precisions, then all undone in reverse: every symbol comes back, and the
    message ends where it started."""
    rng = np.random.default_rng(1)
    lanes, ops, m = 16, [], Message(16)
    m.open(lanes)
    for _ in range(4000):
        n, prec = int(rng.integers(1, lanes + 1)), int(rng.integers(1, 25))
        if rng.random() < 0.45:
            cf = m.peek(n, prec)
            m.pop(cf, cf, np.ones(n, np.uint64), prec)
            ops.append(("pop", n, prec, cf.copy()))
        else:
            freq = rng.integers(1, 1 << prec, size=n).astype(np.uint64)
            start = rng.integers(0, 1 << prec, size=n).astype(np.uint64) % (np.uint64(1 << prec) - freq + np.uint64(1))
            m.push(start, freq, prec)
            ops.append(("push", n, prec, start, freq))
    assert m.virtual_drawn() > 0
    d = Message(lanes, words=m.stored_words(), heads=m.head)
    for op in reversed(ops):
        if op[0] == "pop":
            d.push(op[3], np.ones(op[1], np.uint64), op[2])
        else:
            _, n, prec, start, freq = op
            cf = d.peek(n, prec)
            assert np.all((cf >= start) & (cf < start + freq))
            d.pop(cf, start, freq, prec)
    d.close(0)
    d.check_start(m.virtual_drawn())
    with pytest.raises(ValueError):  # another count of virtual words: not the start
        d.check_start(m.virtual_drawn() + 1)


def test_deterministic_numerics_are_accurate():
    x = np.linspace(-700, 700, 20001)
    assert np.max(np.abs(C.det_exp(x) / np.exp(x) - 1)) < 1e-14
    t = np.linspace(-9, 9, 4001)
    want = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in t])
    assert np.max(np.abs(C.det_ndtr(t) - want)) < 6e-8  # what C.GAP is sized for
    edges, centres = C.buckets(C.LATENT_BITS)
    k = 1 << C.LATENT_BITS
    assert np.allclose(np.diff(C.det_ndtr(edges)), 1 / k, atol=1e-7)  # equal prior mass
    assert np.all((edges[:-1] < centres) & (centres < edges[1:]))


def test_every_bucket_keeps_a_frequency(rng=np.random.default_rng(0)):
    """Narrow, wide and far-off posteriors: the quantised CDF rises by >= 1 at every bucket."""
    k = 1 << C.LATENT_BITS
    mu = np.array([0.0, 3.0, -5.0, 0.3, 10.0])
    logvar = np.array([0.0, -20.0, -8.0, 4.0, -1.0])
    post = C.Posterior(np.repeat(mu, k), np.repeat(logvar, k), C.LATENT_BITS, C.POST_PREC)
    i = np.tile(np.arange(k), len(mu))
    start, freq = post.interval(i)
    assert freq.min() >= 1
    assert np.array_equal(start.reshape(len(mu), k)[:, 0], np.zeros(len(mu), np.uint64))
    assert np.all((start + freq).reshape(len(mu), k)[:, -1] == 1 << C.POST_PREC)


@pytest.mark.parametrize("n", [1, 37])
def test_round_trip_of_random_batches(mlp, n):
    """Noise images (nothing like digits: the worst case for the model) come back exactly."""
    x = (np.random.default_rng(n).random((n, 1, 28, 28)) < 0.3).astype(np.float32)
    data = mlp.compress(x)
    assert np.array_equal(mlp.decompress(data), x)


def test_rate_is_the_models_elbo(mlp, digits):
    """On 400 real digits the coded bits cost about the -ELBO (within 3%, start-up included; the
    file within 6%, its 136-byte header too), far below the best classical codec's on the same bits."""
    import lzma

    data = mlp.compress(digits)
    assert np.array_equal(mlp.decompress(data), digits)
    bits = 8 * len(data)
    _, heads, words = C.read_header(data)
    elbo_bits = float(mlp.score(digits, elbo_samples=10).sum()) / math.log(2)
    assert 64 * len(heads) + 32 * len(words) < 1.03 * elbo_bits
    assert bits < 1.06 * elbo_bits, (bits, elbo_bits)
    lz = 8 * len(lzma.compress(np.packbits(digits.astype(np.uint8)).tobytes(), preset=9 | lzma.PRESET_EXTREME))
    assert bits < 0.75 * lz
    assert bits / digits.size < 0.19


def test_conv_and_int8_variants_round_trip(digits):
    """Every variant of the conv model, at another thread count at each end."""
    for variant in ("fp32", "int8-static"):
        a = VAERuntime.load("conv-mnist", variant=variant, threads=2)
        b = VAERuntime.load("conv-mnist", variant=variant, threads=1)
        assert np.array_equal(b.decompress(a.compress(digits[:60])), digits[:60]), variant


def test_refusals(mlp, digits):
    with pytest.raises(VaeEdgeError, match="no images given"):
        C.compress(mlp, np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(VaeEdgeError, match="binary images"):
        mlp.compress(np.full((2, 1, 28, 28), 0.5, np.float32))
    data = mlp.compress(digits[:20])
    conv = VAERuntime.load("conv-mnist")
    with pytest.raises(C.CompressError, match="was made with mlp-mnist .*whose graphs differ"):
        conv.decompress(data)
    int8 = VAERuntime.load("mlp-mnist", variant="int8-dynamic")
    assert np.array_equal(int8.decompress(data), digits[:20])  # the portable network coded it: any variant reads it
    floats = mlp.compress(digits[:20], portable=False)  # coded by the fp32 graphs: that variant only
    assert C.read_header(floats)[0]["variant"] == "fp32" and np.array_equal(mlp.decompress(floats), digits[:20])
    with pytest.raises(C.CompressError, match="made with variant fp32 of mlp-mnist; this is int8-dynamic: pass --variant fp32"):
        int8.decompress(floats)
    for pos in (0, 5, 40, len(data) // 2, len(data) - 1):  # a flipped byte anywhere
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(C.CompressError, match="not a vae-edge compressed file|damaged|format version"):
            mlp.decompress(bytes(bad))
    with pytest.raises(C.CompressError, match="damaged"):
        mlp.decompress(data[:-9])


def _rewrite(data: bytes, field: str, value: bytes) -> bytes:
    """Change one header field and recompute the checksum: what another device or model would write."""
    pos = 5
    for _ in range(3):
        pos += 1 + data[pos]
    offsets = {"fingerprint": struct.calcsize("<32s16s"), "data": struct.calcsize("<32s16s8sI3HHBBBBI")}
    off = pos + offsets[field]
    body = data[:off] + value + data[off + len(value):-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_another_devices_numerics_are_named(mlp, digits):
    data = mlp.compress(digits[:10], portable=False)  # the float graphs: their numerics are the device's
    h, _, _ = C.read_header(data)
    assert h["fingerprint"] == C.fingerprint(mlp)
    other = _rewrite(data, "fingerprint", bytes(8))
    with pytest.raises(C.CompressError, match="made on a device that computes mlp-mnist's graphs differently"):
        mlp.decompress(other)
    wrong = _rewrite(data, "data", bytes(16))  # the coder decodes, but not to what was compressed
    with pytest.raises(C.CompressError, match="decoded to other images"):
        mlp.decompress(wrong)


def test_cli_round_trips_arrays_images_and_folders(runner, tmp_path, digits, mnist_dir):
    u8 = (digits[:12, 0] * 255).astype(np.uint8)  # [N, 28, 28] uint8 0/255
    np.save(tmp_path / "x.npy", u8)
    res = runner.invoke(cli, ["compress", str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.vaez")])
    assert res.exit_code == 0, res.output
    assert "12 images" in res.output and "bits per value" in res.output and "coded with mlp-mnist" in res.output
    res = runner.invoke(cli, ["decompress", str(tmp_path / "x.vaez"), "-o", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    back = np.load(tmp_path / "y.npy")
    assert back.dtype == np.uint8 and np.array_equal(back, u8)  # as given: dtype, values and axes
    (tmp_path / "pngs").mkdir()
    for i in range(3):
        Image.fromarray(u8[i]).convert("1").save(tmp_path / "pngs" / f"{i}.png")
    res = runner.invoke(cli, ["compress", str(tmp_path / "pngs"), "-o", str(tmp_path / "p.vaez"),
                              "--bundle", "conv-mnist"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["decompress", str(tmp_path / "p.vaez"), "-o", str(tmp_path / "out") + "/"])
    assert res.exit_code == 0, res.output  # the bundle is found from the file's name
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{i:05d}.png").convert("L")), u8[i])
    res = runner.invoke(cli, ["compress", "mnist:test[0:5]", "--binarize", "stochastic", "--data-dir",
                              str(mnist_dir), "-o", str(tmp_path / "s.vaez")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["decompress", str(tmp_path / "s.vaez"), "-o", str(tmp_path / "one.png")])
    assert res.exit_code == 1 and "holds 5 images" in res.output and not (tmp_path / "one.png").exists()


def test_cli_codes_grey_digits_with_the_shipped_8bit_model(runner, tmp_path, mnist_dir):
    """Without --bundle, 8-bit images go to the shipped conv-mnist8 (its portable network: files for
    any device) at about its -ELBO (1.30 bits per value on the whole test set), and come back exactly."""
    from vae_edge.data import load_slice

    res = runner.invoke(cli, ["compress", "mnist:test[0:40]", "--data-dir", str(mnist_dir), "--codec", "vae",
                              "-o", str(tmp_path / "g.vaez")])
    assert res.exit_code == 0, res.output
    assert "coded with conv-mnist8 portable network" in res.output, res.output
    rate = 8 * (tmp_path / "g.vaez").stat().st_size / (40 * 784)
    assert rate < 1.45, rate  # BB-ANS: 1.48; PNG of the same digits: about 2.8
    res = runner.invoke(cli, ["decompress", str(tmp_path / "g.vaez"), "-o", str(tmp_path / "g.npy")])
    assert res.exit_code == 0, res.output
    x, _ = load_slice("mnist:test[0:40]", mnist_dir)
    assert np.array_equal(np.load(tmp_path / "g.npy"), np.rint(x * 255).astype(np.uint8))


def test_cli_codes_fashion_mnist_with_the_shipped_fashion_model(runner, tmp_path):
    """fashion-mnist slices go to the shipped conv-fashion8 (Debian's dataset-fashion-mnist, which
    .ci/run installs): about its -ELBO (3.01 bits per value on the whole test set; lzma -9e: 3.86)."""
    from vae_edge.data import load_slice

    res = runner.invoke(cli, ["compress", "fashion-mnist:test[0:30]", "--codec", "vae", "-o", str(tmp_path / "f.vaez")])
    assert res.exit_code == 0 and "coded with conv-fashion8 portable network" in res.output, res.output
    assert 8 * (tmp_path / "f.vaez").stat().st_size / (30 * 784) < 3.5
    res = runner.invoke(cli, ["decompress", str(tmp_path / "f.vaez"), "-o", str(tmp_path / "f.npy")])
    x, _ = load_slice("fashion-mnist:test[0:30]")
    assert res.exit_code == 0 and np.array_equal(np.load(tmp_path / "f.npy"), np.rint(x * 255).astype(np.uint8))


def test_cli_refusals_write_nothing(runner, tmp_path, mnist_dir, digits):
    out = tmp_path / "g.vaez"
    res = runner.invoke(cli, ["compress", "mnist:test[0:4]", "--data-dir", str(mnist_dir), "-o", str(out),
                              "--bundle", "mlp-mnist"])  # a binary model given grey digits
    assert res.exit_code == 1 and "grey levels" in res.output and not out.exists()
    assert len(res.output.strip().splitlines()) == 1
    np.save(tmp_path / "x.npy", digits[:4])
    runner.invoke(cli, ["compress", str(tmp_path / "x.npy"), "-o", str(out)])
    bad = bytearray(out.read_bytes())
    bad[len(bad) // 2] ^= 1
    (tmp_path / "bad.vaez").write_bytes(bytes(bad))
    res = runner.invoke(cli, ["decompress", str(tmp_path / "bad.vaez"), "-o", str(tmp_path / "y.npy")])
    assert res.exit_code == 1 and "damaged" in res.output and not (tmp_path / "y.npy").exists()
    np.save(tmp_path / "x4.npy", digits[:4])
    res = runner.invoke(cli, ["compress", str(tmp_path / "x4.npy"), "--float-graphs", "--codec", "vae", "-o",
                              str(tmp_path / "floats.vaez")])  # the fp32 graphs code it: this kind of device only
    assert res.exit_code == 0 and "coded with mlp-mnist fp32" in res.output, res.output
    assert C.read_header((tmp_path / "floats.vaez").read_bytes())[0]["variant"] == "fp32"
    res = runner.invoke(cli, ["decompress", str(tmp_path / "floats.vaez"), "--variant", "int8-dynamic", "-o",
                              str(tmp_path / "y.npy")])
    assert res.exit_code == 1 and "pass --variant fp32" in res.output and not (tmp_path / "y.npy").exists()
