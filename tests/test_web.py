"""`vae-edge web`: the site builds from a bundle, and in a real headless Chromium (Debian's, driven
by Playwright) onnxruntime-web computes what the Python runtime computes, the page's JavaScript
preprocessing and scoring equal the Python ones, and drawing on the pad works end to end.

The browser tests are marked `browser`; they run in CI and fail (never skip) when Chromium,
Playwright or npm is missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vae_edge import VaeEdgeError
from vae_edge.runtime.images import draw_strokes, load_image, preprocess
from vae_edge.runtime.vae_runtime import VAERuntime
from vae_edge.web import PAD_SIZE, PAD_STROKE, SCORE_SAMPLES, build_site, choose_variants, serving
from vae_edge.web.browser import chromium, open_page

MODELS = ("mlp-mnist", "conv-mnist")


@pytest.fixture(scope="module")
def sites(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for name in MODELS:
        build_site(name, ("all",), root / name, data_dir=mnist_dir, log=lambda s: None)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:  # fails (not skips) when Chromium or playwright is missing
        yield b


@pytest.fixture(scope="module")
def pages(sites, browser):
    """One served page per shipped model, open in headless Chromium."""
    import contextlib

    with contextlib.ExitStack() as stack:
        opened = {}
        for name, site in sites.items():
            url = stack.enter_context(serving(site))
            opened[name] = stack.enter_context(open_page(url, browser))
        yield opened


# ---------------------------------------------------------------------------------------------
# The build (no browser)
# ---------------------------------------------------------------------------------------------

def test_site_holds_the_checked_graphs_and_what_the_page_needs(sites):
    site = sites["mlp-mnist"]
    config = json.loads((site / "config.json").read_text())
    manifest = json.loads((site / "models" / "manifest.json").read_text())
    arm64_only = manifest["targets"]["arm64"]["variant"]
    assert set(config["variants"]) == set(manifest["variants"]) - {arm64_only}  # not the arm64-only variant
    import hashlib

    for entry in config["variants"].values():
        for graph in ("encoder", "decoder"):
            f = site / entry[graph]
            assert hashlib.sha256(f.read_bytes()).hexdigest() == manifest["files"][f.name]["sha256"]
    for f in ("index.html", "app.js", "vae.js", "style.css", "ort/ort.wasm.min.mjs", "ort/ort-wasm-simd-threaded.wasm"):
        assert (site / f).is_file(), f
    draws = np.array(config["score"]["draws"], np.float32)
    assert draws.shape == (SCORE_SAMPLES, manifest["model"]["latent_dim"])
    p = config["score"]["range"]["percentiles"]
    assert p["5"] < p["50"] < p["95"] and config["score"]["range"]["images"] == 1000
    # nothing on the page comes from another site
    for f in ("index.html", "app.js", "vae.js"):
        text = (site / f).read_text()
        assert "http://" not in text and "https://" not in text, f


def test_the_page_previews_a_large_diffusers_vae_at_a_small_size():
    """SD's bundle (own size 512x512): 16 samples at that size do not fit WebAssembly's memory
    (onnxruntime-web: bad_alloc), so the page's samples and uploads use a 128x128 preview."""
    from types import SimpleNamespace

    from vae_edge.web import PREVIEW_PIXELS, page_shapes

    sd = SimpleNamespace(model=SimpleNamespace(image_shape=(3, 512, 512), latent_shape=(4, 64, 64), spatial_factor=8))
    assert page_shapes(sd) == ([3, PREVIEW_PIXELS, PREVIEW_PIXELS], [4, PREVIEW_PIXELS // 8, PREVIEW_PIXELS // 8])
    small = SimpleNamespace(model=SimpleNamespace(image_shape=(3, 32, 32), latent_shape=(4, 8, 8), spatial_factor=4))
    digits = SimpleNamespace(model=SimpleNamespace(image_shape=(1, 28, 28), latent_shape=(32,), spatial_factor=0))
    assert page_shapes(small) == ([3, 32, 32], [4, 8, 8]) and page_shapes(digits) == ([1, 28, 28], [32])


def test_variant_choice_reads_the_web_tuning(tmp_path):
    from vae_edge.runtime.manifest import Manifest

    files = {"encoder": "e.onnx", "decoder": "d.onnx"}
    manifest = {"schema_version": 1, "model": {"arch": "mlp", "latent_dim": 2}, "files": {},
                "variants": {"fp32": {"files": files}, "int8-static": {"files": files},
                             "int8-dynamic-arm64": {"files": files}},
                "targets": {"arm64": {"variant": "int8-dynamic-arm64"}}}
    assert choose_variants(Manifest.from_dict(manifest), ("auto",))[:2] == (["fp32"], "fp32")
    assert choose_variants(Manifest.from_dict(manifest), ("all",))[0] == ["fp32", "int8-static"]
    manifest["tuning"] = {"web": {"choice": {"variant": "int8-static"}}}
    assert choose_variants(Manifest.from_dict(manifest), ("auto",))[:2] == (["int8-static"], "int8-static")
    with pytest.raises(VaeEdgeError, match="no 'fp16' variant"):
        choose_variants(Manifest.from_dict(manifest), ("fp16",))


def test_build_refuses_to_overwrite_other_files_and_replaces_its_own(tmp_path, sites, mnist_dir):
    other = tmp_path / "docs"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(VaeEdgeError, match="holds other files"):
        build_site("mlp-mnist", ("fp32",), other, data_dir=mnist_dir, log=lambda s: None)
    assert (other / "keep.txt").read_text() == "mine"
    site = tmp_path / "site"
    shutil.copytree(sites["mlp-mnist"], site)
    with pytest.raises(VaeEdgeError, match="--force"):
        build_site("mlp-mnist", ("fp32",), site, data_dir=mnist_dir, log=lambda s: None)
    build_site("mlp-mnist", ("fp32",), site, data_dir=mnist_dir, force=True, log=lambda s: None)
    assert not (site / "models" / "decoder.int8-static.onnx").exists()  # the old site is gone, not merged
    assert not list(tmp_path.glob(".site.tmp-*"))


def test_cli_web_without_npm_is_one_line(runner, tmp_path, monkeypatch):
    from vae_edge.cli import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    monkeypatch.delenv("VAE_EDGE_ORT_WEB", raising=False)
    r = runner.invoke(cli, ["web", "--variant", "fp32", "--out", str(tmp_path / "site")])
    assert r.exit_code != 0
    assert "npm is not installed" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "site").exists()


def test_missing_chromium_is_one_line(monkeypatch, tmp_path):
    from vae_edge.web.browser import chromium_path

    monkeypatch.setenv("VAE_EDGE_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(VaeEdgeError, match="does not exist"):
        chromium_path()


# ---------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.parametrize("model", MODELS)
def test_browser_decodes_like_python_for_every_variant(pages, model):
    page, errors = pages[model]
    d = page.evaluate("window.vaeEdge.config().model.latent_dim")
    z = np.random.default_rng(3).standard_normal((5, d)).astype(np.float32)
    variants = page.evaluate("window.vaeEdge.variants()")
    assert "fp32" in variants and len(variants) >= 2
    import onnx
    import onnx.version_converter
    from onnx.reference import ReferenceEvaluator

    from vae_edge.runtime.bundle import load_manifest
    from vae_edge.runtime.selfcheck import FP32_TOL, INT8_FLOOR

    bundle = VAERuntime.load(model, variant="fp32").bundle
    manifest = load_manifest(bundle)
    for v in variants:
        got = np.array(page.evaluate("([z, v]) => window.vaeEdge.decode(z, v)", [z.tolist(), v])["probs"], np.float32)
        with VAERuntime.load(model, variant=v) as rt:
            ref = rt.decode(z)
        # Neither engine is the reference: x86 kernels differ by CPU family (VNNI or not computes
        # int8 products differently), wasm differs from both. The ONNX specification is the
        # reference, and each engine must be within what the variant's self-check allows of it.
        entry = manifest["variants"][v]
        graph = onnx.load(str(bundle / entry["files"]["decoder"]))
        # onnx's reference evaluator implements DequantizeLinear from opset 19 on: same semantics
        graph = onnx.version_converter.convert_version(graph, 21)
        spec = ReferenceEvaluator(graph).run(["probs"], {"z": z})[0]
        # fp32: float rounding; int8 and fp16: one quantization step rounding the other way
        tol = FP32_TOL if v == "fp32" else INT8_FLOOR
        for engine, out in (("browser", got.reshape(ref.shape)), ("python", ref)):
            diff = float(np.abs(out - spec).max())
            assert diff <= tol, (model, v, engine, diff, tol)
    assert page.evaluate("window.vaeEdge.isolated()")  # served with COOP/COEP
    assert errors == []


def _pillow_digits(rng, n):
    """Digits drawn with pillow's own ImageDraw (polylines and ellipses of random widths), some
    dark on light paper, as a person's drawing app would save them."""
    out = []
    for i in range(n):
        img = Image.new("L", (PAD_SIZE, PAD_SIZE), 0)
        d = ImageDraw.Draw(img)
        pts = [tuple(rng.uniform(40, 216, 2)) for _ in range(rng.integers(2, 6))]
        d.line(pts, fill=255, width=int(rng.integers(6, 24)), joint="curve")
        if i % 2:
            c = rng.uniform(80, 176, 2)
            d.ellipse([c[0] - 30, c[1] - 40, c[0] + 30, c[1] + 40], outline=int(rng.integers(120, 256)), width=10)
        if i % 3 == 2:
            img = Image.eval(img, lambda v: 255 - v)
        out.append(img)
    return out


@pytest.mark.browser
def test_browser_preprocessing_and_score_equal_pythons_on_pillow_drawings(pages):
    page, errors = pages["mlp-mnist"]
    rng = np.random.default_rng(0)
    with VAERuntime.load("mlp-mnist", variant="fp32") as rt:
        for img in _pillow_digits(rng, 12):
            grey = np.asarray(img, np.uint8)
            js = np.array(page.evaluate("([g, w, h]) => window.vaeEdge.preprocess(g, w, h)",
                                        [grey.ravel().tolist(), img.width, img.height]), np.float32)
            py = preprocess(img)[0]
            assert np.abs(js.reshape(28, 28) - py).max() <= 1 / 255 + 1e-6
            s_js = page.evaluate("([x]) => window.vaeEdge.score(x, 'fp32')", [js.tolist()])
            s_py = float(rt.score(py[None, None], seed=0, elbo_samples=SCORE_SAMPLES)[0])
            assert abs(s_js - s_py) < 0.1, (s_js, s_py)
    assert errors == []


@pytest.mark.browser
def test_the_8bit_compression_model_scores_on_the_page_as_in_python(tmp_path, browser, mnist_dir):
    """The shipped conv-mnist8 (a logistic-ar decoder: discretized logistic per 8-bit value, its mean
    following the value's neighbours) on the page: a test digit's -ELBO equals the Python runtime's."""
    from vae_edge.data import load_slice

    build_site("conv-mnist8", ("auto",), tmp_path / "site", data_dir=mnist_dir, log=lambda s: None)
    config = json.loads((tmp_path / "site" / "config.json").read_text())
    assert config["model"]["likelihood"] == "logistic-ar" and config["score"]["range"]["images"] == 1000
    x, _ = load_slice("mnist:test[0:3]", mnist_dir)
    with serving(tmp_path / "site") as url, open_page(url, browser) as (page, errors), \
            VAERuntime.load("conv-mnist8", warn=lambda s: None) as rt:
        for xi in x:
            s_js = page.evaluate("([x]) => window.vaeEdge.score(x, 'fp32')", [xi.ravel().tolist()])
            s_py = float(rt.score(xi[None], seed=0, elbo_samples=SCORE_SAMPLES)[0])
            assert abs(s_js - s_py) < 0.05, (s_js, s_py)  # about 700 nats: the same to 1e-4
        plain = page.evaluate("([x]) => window.vaeEdge.score(x.map(v => Math.min(1, v + 0.1)), 'fp32')",
                              [x[0].ravel().tolist()])
        assert plain > s_js + 50  # a brightened digit is less likely: the score follows the values
        t = np.linspace(0, 1, 25)  # a "1" on the drawing pad: scored under the same likelihood
        _draw_with_pointer(page, [np.stack([128 + 0 * t, 50 + 150 * t], 1).tolist()])
        state = page.evaluate("window.vaeEdge.pad()")
        x_pad = np.array(state["input"], np.float32).reshape(1, 1, 28, 28)
        s_pad = float(rt.score(x_pad, seed=0, elbo_samples=SCORE_SAMPLES)[0])
        assert abs(state["score"] - s_pad) < 0.05 and page.inner_text("#score") == f"{state['score']:.1f}"
        assert errors == []


def _draw_with_pointer(page, strokes):
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / PAD_SIZE, box["height"] / PAD_SIZE
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.up()
    page.evaluate("window.vaeEdge.settled()")


@pytest.mark.browser
def test_a_digit_drawn_on_the_pad_scores_as_in_python(pages, tmp_path):
    page, errors = pages["conv-mnist"]
    page.click("#clear")
    # a "7" and a "4"-like second stroke, as a person would draw them
    t = np.linspace(0, 1, 25)
    top = np.stack([70 + 120 * t, 60 + 3 * np.sin(6 * t)], 1)
    stem = np.stack([190 - 70 * t, 62 + 140 * t], 1)
    bar = np.stack([95 + 70 * t, 130 + 0 * t], 1)
    _draw_with_pointer(page, [np.concatenate([top, stem]).tolist(), bar.tolist()])
    state = page.evaluate("window.vaeEdge.pad()")
    assert len(state["strokes"]) == 2 and len(state["strokes"][0]) >= 40
    # Python: the same strokes (as the page recorded them), rendered and saved as a PNG file
    png = tmp_path / "pad.png"
    draw_strokes(state["strokes"], PAD_SIZE, PAD_STROKE).save(png)
    x_py = load_image(png)
    x_js = np.array(state["input"], np.float32).reshape(1, 28, 28)
    assert x_py.max() > 0.9 and np.abs(x_js - x_py).max() <= 1 / 255 + 1e-6
    with VAERuntime.load("conv-mnist", variant="fp32") as rt:
        s_py = float(rt.score(x_py[None], seed=0, elbo_samples=SCORE_SAMPLES)[0])
    assert abs(state["score"] - s_py) < 0.1, (state["score"], s_py)
    shown = page.inner_text("#score")
    assert shown == f"{state['score']:.1f}"
    assert errors == []


@pytest.mark.browser
def test_page_looks_right_on_desktop_and_phone(pages, tmp_path):
    page, errors = pages["mlp-mnist"]
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    a = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert a.std() > 10  # not blank
    samples = np.asarray(Image.open(__import__("io").BytesIO(page.locator("#samples").screenshot())).convert("L"))
    assert samples.mean() > 10 and samples.std() > 20  # the sampled digits are drawn
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390, overflow  # nothing wider than a phone screen
        pad = page.locator("#pad").bounding_box()
        assert pad["width"] <= 390 and pad["width"] >= 200
    finally:
        page.set_viewport_size({"width": 1100, "height": 900})
    assert errors == []


@pytest.mark.browser
def test_a_damaged_graph_is_named_on_the_page(sites, browser, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(sites["mlp-mnist"], site)
    (site / "models" / "decoder.onnx").write_bytes(b"not an onnx graph")
    with serving(site) as url, pytest.raises(VaeEdgeError, match=r"could not load the fp32 decoder"), \
            open_page(url, browser):
        pass
    (site / "models" / "decoder.onnx").unlink()
    with serving(site) as url, pytest.raises(VaeEdgeError, match=r"decoder.onnx: HTTP 404"), \
            open_page(url, browser):
        pass


def test_pad_rasterizer_draws_what_pillow_draws():
    """draw_strokes (the pad's rule) inks the same pixels as pillow's ImageDraw for the same polyline
    (pillow puts pixel centres at integers, the pad, like a canvas, at integers + 0.5)."""
    pts = [(40.0, 50.0), (200.0, 60.0), (120.0, 210.0)]
    mine = np.asarray(draw_strokes([pts], PAD_SIZE, 18.0)) > 127
    ref = Image.new("L", (PAD_SIZE, PAD_SIZE), 0)
    d = ImageDraw.Draw(ref)
    q = [(x - 0.5, y - 0.5) for x, y in pts]
    d.line(q, fill=255, width=18, joint="curve")
    for x, y in (q[0], q[-1]):
        d.ellipse([x - 9, y - 9, x + 9, y + 9], fill=255)
    ref = np.asarray(ref) > 127
    iou = (mine & ref).sum() / (mine | ref).sum()
    assert iou > 0.95, iou


def test_preprocessing_of_a_clean_drawing_takes_no_photo_cleanup():
    """A drawing on a flat background is used as drawn: the old photo path cut faint anti-aliased
    edges (a noise floor that a clean drawing does not have)."""
    img = draw_strokes([[(60, 60), (190, 200)]], PAD_SIZE, 18.0)
    x = preprocess(img)[0]
    assert x[(x > 0) & (x < 0.3)].size > 0  # the soft edge survives
    assert np.allclose(preprocess(Image.eval(img, lambda v: 255 - v)), x, atol=1 / 255)  # dark on light: same


@pytest.mark.browser
def test_bench_and_tune_in_the_browser(tmp_path, quantized, browser):
    """`bench --target web` times every variant in Chromium and natively; `tune --target web`
    records its choice beside the CPU's, and `vae-edge web --variant auto` ships that choice."""
    from vae_edge.bench import tune
    from vae_edge.runtime.bundle import load_manifest, tuning
    from vae_edge.web.browser import bench_web, tune_web

    bundle = tmp_path / "b"
    shutil.copytree(quantized, bundle)
    report = bench_web(bundle, ("all",), batch_sizes=(1, 4), min_time=0.05, rounds=2, browser=browser)
    variants = report["variants"]
    assert len(variants) >= 2 and report["cross_origin_isolated"]
    for where in ("web", "python"):
        got = {(r["variant"], r["graph"], r["batch"]) for r in report["rows"] if r["where"] == where}
        assert got == {(v, g, b) for v in variants for g in ("encoder", "decoder") for b in (1, 4)}
    assert all(r["ms_per_call"] > 0 for r in report["rows"])

    tune(bundle, max_elbo_delta=1e9, measure=lambda v, p, t: {"fp32": 2.0}.get(v, 1.0))  # the CPU's record first
    rec = tune_web(bundle, max_elbo_delta=1e9, min_time=0.05, browser=browser)
    t = tuning(load_manifest(bundle))
    assert t["web"]["choice"] == rec["choice"] and t["choice"]["variant"] != "fp32"  # both records kept
    timed = {r["variant"]: r["ms_encode_plus_decode"] for r in rec["table"]}
    assert rec["choice"]["variant"] == min(timed, key=timed.get)
    config = build_site(bundle, ("auto",), tmp_path / "site", log=lambda s: None, with_score_range=False)
    assert config["variants"] == [rec["choice"]["variant"]] and "tune --target web" in config["why"]
    tune(bundle, max_elbo_delta=1e9, measure=lambda v, p, t: 1.0)  # re-tuning the CPU keeps the web record
    assert tuning(load_manifest(bundle))["web"]["choice"] == rec["choice"]


@pytest.mark.browser
def test_a_users_colour_vae_on_the_page(tmp_path, browser):
    """A bundle of a user's own VAE (3x16x16 colour images, a [4, 4, 4] latent, a Gaussian decoder):
    the page samples and morphs in colour, shows no drawing pad, and an uploaded image is
    reconstructed and scored as the Python runtime does (the Gaussian -ELBO over the same draws)."""
    import importlib.util
    from pathlib import Path

    from vae_edge.export import export_vae

    spec = importlib.util.spec_from_file_location("test_byo_module", Path(__file__).parent / "test_byo.py")
    byo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(byo)
    namespace: dict = {}
    exec(compile(byo.MODULE, "my_vae.py", "exec"), namespace)
    bundle = export_vae(namespace["make"]().eval(), byo.SHAPE, tmp_path / "bundle", likelihood="gaussian",
                        sigma=byo.SIGMA, name="tiny-colour")
    build_site(bundle, ("auto",), tmp_path / "site", log=lambda s: None)
    config = json.loads((tmp_path / "site" / "config.json").read_text())
    assert config["pad"] is None and config["model"]["image_shape"] == [3, 16, 16] and config["score"]["range"] == {}
    rt = VAERuntime.load(bundle, warn=lambda s: None)
    x = np.random.default_rng(4).random((1, *byo.SHAPE), dtype=np.float32)
    with serving(tmp_path / "site") as url, open_page(url, browser) as (page, errors):
        assert page.locator("#draw").is_hidden() and page.locator("#upload-card").is_visible()
        width = page.evaluate("document.getElementById('samples').width")
        assert width == 4 * (16 + 2) - 2  # a 4x4 grid of 16x16 samples
        z = np.random.default_rng(3).standard_normal((2, *byo.LATENT)).astype(np.float32)
        got = np.array(page.evaluate("(z) => window.vaeEdge.decode(z)", z.reshape(2, -1).tolist())["probs"])
        assert np.max(np.abs(got - rt.decode(z).reshape(-1))) < 1e-4
        up = page.evaluate("(x) => window.vaeEdge.upload(x)", x.reshape(-1).tolist())
        assert abs(up["score"] - float(rt.score(x, seed=0, elbo_samples=SCORE_SAMPLES)[0])) < 1e-2
        assert np.max(np.abs(np.array(up["reconstruction"]) - rt.reconstruct(x).reshape(-1))) < 1e-4
        png = tmp_path / "mine.png"  # the UI path: a picture at another size, resized by the page
        Image.fromarray((x[0].transpose(1, 2, 0) * 255).astype(np.uint8)).resize((32, 32)).save(png)
        page.set_input_files("#upload", str(png))
        page.wait_for_function("window.vaeEdge.uploaded() && window.vaeEdge.uploaded().input.length === 768 && "
                               "document.getElementById('upload-score').textContent.includes('nats')")
        shown = page.evaluate("window.vaeEdge.uploaded()")
        assert np.isfinite(shown["score"]) and len(shown["reconstruction"]) == 768
        assert errors == []


@pytest.mark.browser
def test_an_uploaded_digit_is_framed_and_scored_as_in_python(pages, tmp_path, mnist_dir):
    """On a digit model's page an uploaded picture is framed as `vae-edge score FILE` frames it."""
    from vae_edge.data import load_slice

    page, errors = pages["mlp-mnist"]
    x, _ = load_slice("mnist:test[3:4]", mnist_dir)
    png = tmp_path / "digit.png"  # a larger, dark-on-light picture of a test digit
    Image.fromarray(255 - (x[0, 0] * 255).astype(np.uint8)).resize((84, 84), Image.Resampling.BILINEAR).save(png)
    page.set_input_files("#upload", str(png))
    page.wait_for_function("window.vaeEdge.uploaded() && document.getElementById('upload-score').textContent")
    shown = page.evaluate("window.vaeEdge.uploaded()")
    x_py = load_image(png)
    assert np.abs(np.array(shown["input"], np.float32).reshape(1, 28, 28) - x_py).max() <= 1 / 255 + 1e-6
    with VAERuntime.load("mlp-mnist") as rt:
        assert abs(shown["score"] - float(rt.score(x_py[None], seed=0, elbo_samples=SCORE_SAMPLES)[0])) < 0.1
    assert errors == []


@pytest.mark.browser
def test_a_diffusers_vae_decodes_a_large_image_on_the_page_in_tiles(tmp_path, browser):
    """A small AutoencoderKL exported from its diffusers folder: the page decodes a 256x256 image
    (128x128 latent cells) in tiles of the bundle's own size, blended as the Python runtime's
    `--tile` blends them, with a progress bar that reaches its end, and inference in
    onnxruntime-web's worker: the page's own thread never pauses long."""
    import importlib.util
    from pathlib import Path

    from click.testing import CliRunner

    from vae_edge.cli import cli

    spec = importlib.util.spec_from_file_location("test_diffusers_module", Path(__file__).parent / "test_diffusers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._save_kl(tmp_path / "vae", "sd")
    r = CliRunner().invoke(cli, ["export", "--diffusers", str(tmp_path / "vae"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    build_site(tmp_path / "b", ("fp32",), tmp_path / "site", log=lambda s: None)
    config = json.loads((tmp_path / "site" / "config.json").read_text())
    assert config["model"]["spatial_factor"] == 2 and config["model"]["latent_shape"] == [4, 8, 8]
    rt = VAERuntime.load(tmp_path / "b", warn=lambda s: None)
    rt.tile = 16  # the page's tiles: the bundle's own size
    z = np.random.default_rng(0).standard_normal((1, 4, 128, 128)).astype(np.float32)
    want = rt.decode(z)
    with serving(tmp_path / "site") as url, open_page(url, browser) as (page, errors):
        assert page.locator("#large").is_visible()
        got = page.evaluate("(z) => window.vaeEdge.large(256, 0, z)", z.reshape(-1).tolist())
        assert got["tiles"] == 21 * 21 and got["progress"][-1] == 1
        assert page.evaluate("document.getElementById('large-progress').value") == 21 * 21
        assert page.evaluate("document.getElementById('large-canvas').width") == 256
        assert np.max(np.abs(np.array(got["image"]) - want.reshape(-1))) < 1e-4
        assert got["proxy"] and got["maxGapMs"] < 250, got["maxGapMs"]  # inference in the worker: the page's thread stayed free
        assert errors == []
