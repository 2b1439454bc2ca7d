"""The browser as an edge target: `vae-edge web` builds a static site that samples, morphs,
reconstructs and scores uploaded images, and for digit-style models hand-drawn digits, with
onnxruntime-web (WebAssembly), with no server-side code. Any bundle: grey or colour images of any
size, vector or spatial latents, Bernoulli or Gaussian decoders.

The site holds the page (static/: index.html, app.js wiring the page, vae.js with the numerics
that mirror the Python runtime), the chosen graphs exactly as the bundle reader checked them,
the manifest, a config.json (model, variants, the score's fixed noise draws, the test set's score
range) and onnxruntime-web's own files, fetched from the npm registry at build time (pinned
version and sha512, cached), so the page loads nothing from anywhere but its own site.

Only numpy and the runtime are needed here (no torch); npm is needed once, to fetch onnxruntime-web.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError
from vae_edge.runtime.manifest import Manifest

logger = logging.getLogger(__name__)

ORT_WEB_VERSION = "1.30.0"
# The npm registry's integrity for onnxruntime-web-1.30.0.tgz (`npm view onnxruntime-web@1.30.0 dist.integrity`).
ORT_WEB_INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# The wasm build without WebGPU/WebGL: the ES module, its loader, and the SIMD (+threads) binary.
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# Each file's sha256 as the pinned tarball holds it: checked whenever the files are used (the
# cache and $VAE_EDGE_ORT_WEB are not trusted because npm's check passed once).
ORT_WEB_SHA256 = {
    "ort.wasm.min.mjs": "219e6a1fc8a9938268d18efca3c91d310bd2f4a59bbd13744df5b2b7fc6cee3b",
    "ort-wasm-simd-threaded.mjs": "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b",
    "ort-wasm-simd-threaded.wasm": "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2",
}
MAX_ORT_FILE_BYTES = 64 << 20
STATIC = Path(__file__).parent / "static"
PAGE_FILES = ("index.html", "app.js", "vae.js", "style.css")
SITE_MARKER = ".vae-edge-site"
PREVIEW_PIXELS = 128  # graphs of any size: the side of the page's samples and uploads (pixels)
SCORE_SAMPLES = 16  # -ELBO on the page: the mean over these fixed draws = rt.score(x, seed=0, elbo_samples=16)
SCORE_RANGE_IMAGES = 1000  # test images behind the "typical range" shown beside a drawing's score
PAD_SIZE = 256  # the drawing pad's pixels (<= the runtime's WORK_SIDE: no extra resize in Python)
PAD_STROKE = 18.0  # pen width in pad pixels (~2 px once the digit is scaled to 20 px, like MNIST's)
# Headers a host must send for multi-threaded wasm and a fine-grained timer (cross-origin isolation).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
        ".onnx": "application/octet-stream", ".json": "application/json", ".css": "text/css",
        ".html": "text/html; charset=utf-8", ".png": "image/png"}


def cache_root() -> Path:
    from vae_edge.runtime.files import cache_base

    return cache_base() / "vae-edge" / "npm"


def ort_file_bytes(folder: Path, name: str) -> bytes:
    """One of onnxruntime-web's files, read once and checked against its pinned sha256: the bytes
    returned are the bytes checked (a site is built from them)."""
    from vae_edge.runtime.files import read_regular

    data = read_regular(Path(folder) / name, "onnxruntime-web file", MAX_ORT_FILE_BYTES)
    if hashlib.sha256(data).hexdigest() != ORT_WEB_SHA256[name]:
        raise VaeEdgeError(f"{Path(folder) / name} is not onnxruntime-web {ORT_WEB_VERSION}'s {name} (its sha256 "
                           f"differs from the pinned one: changed since it was fetched): refused; delete {folder} "
                           "and build again")
    return data


def _ort_files_ok(folder: Path) -> bool:
    try:
        for name in ORT_WEB_FILES:
            ort_file_bytes(folder, name)
    except VaeEdgeError:
        return False
    return True


def ort_web_dir(log: Callable[[str], None] = lambda s: None) -> Path:
    """A folder with onnxruntime-web's files: $VAE_EDGE_ORT_WEB, else the user cache, filled once
    with `npm pack` (the tarball's sha512 must equal the pinned integrity)."""
    given = os.environ.get("VAE_EDGE_ORT_WEB")
    if given:
        missing = [f for f in ORT_WEB_FILES if not (Path(given) / f).is_file()]
        if missing:
            raise VaeEdgeError(f"$VAE_EDGE_ORT_WEB={given} lacks {', '.join(missing)} (onnxruntime-web's dist/ files)")
        for name in ORT_WEB_FILES:
            ort_file_bytes(Path(given), name)
        return Path(given)
    from vae_edge.runtime.files import check_cache_path

    dest = check_cache_path(cache_root() / f"onnxruntime-web-{ORT_WEB_VERSION}")
    if all((dest / f).is_file() for f in ORT_WEB_FILES):
        if _ort_files_ok(dest):
            return dest
        log(f"note: the cached onnxruntime-web in {dest} does not match its pinned checksums: fetched again")
    npm = shutil.which("npm")
    if npm is None:
        raise VaeEdgeError(f"npm is not installed: it fetches onnxruntime-web {ORT_WEB_VERSION} once "
                           "(apt-get install npm, or Node.js from nodejs.org; or set $VAE_EDGE_ORT_WEB "
                           "to a folder with its dist/ files)")
    log(f"fetching onnxruntime-web {ORT_WEB_VERSION} from the npm registry (once; cached in {dest})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--json", "--pack-destination", tmp],
                              cwd=tmp, capture_output=True, text=True, timeout=600)
        tgz = Path(tmp) / f"onnxruntime-web-{ORT_WEB_VERSION}.tgz"
        if proc.returncode != 0 or not tgz.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise VaeEdgeError(f"npm could not fetch onnxruntime-web {ORT_WEB_VERSION}: {last}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != ORT_WEB_INTEGRITY:
            raise VaeEdgeError(f"onnxruntime-web {ORT_WEB_VERSION} from npm has sha512 {digest[:30]}..., "
                               f"not the pinned {ORT_WEB_INTEGRITY[:30]}...: refused")
        staging = Path(tmp) / "files"
        staging.mkdir()
        with tarfile.open(tgz) as tf:
            for name in ORT_WEB_FILES:  # members by exact name only: nothing else leaves the tarball
                member = tf.getmember(f"package/dist/{name}")
                src = tf.extractfile(member)
                if src is None:
                    raise VaeEdgeError(f"onnxruntime-web's tarball has no regular file dist/{name}")
                (staging / name).write_bytes(src.read())
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Building the site
# ---------------------------------------------------------------------------------------------

def web_choice(info: Manifest) -> str | None:
    """The variant `vae-edge tune --target web` chose for the page, if it ran."""
    from vae_edge.runtime.choice import tuned_choice

    return (tuned_choice(info, section="web") or {}).get("variant")


def choose_variants(info: Manifest, requested: tuple[str, ...]) -> tuple[list[str], str, str]:
    """(variants shipped to the page, the page's default, why): 'auto' is the tuned web choice
    (else fp32); 'all' is every variant not made for another device (e.g. int8-dynamic-arm64)."""
    have = list(info.variants)
    other_targets = {t.variant for name, t in info.targets.items() if name not in ("x86", "wasm")}
    chosen: list[str] = []
    why = "chosen with --variant"
    for r in requested or ("auto",):
        if r == "all":
            chosen += [v for v in have if v not in other_targets]
            why = "every variant shipped; fp32 shown first"
        elif r == "auto":
            tuned = web_choice(info)
            if tuned in have:
                chosen.append(tuned)
                why = "chosen in the browser by `vae-edge tune --target web`"
            else:
                chosen.append("fp32")
                why = "the bundle was never tuned for the browser (`vae-edge tune --target web`)"
        elif r in have:
            chosen.append(r)
        else:
            raise VaeEdgeError(f"this bundle has no {r!r} variant (it has: {', '.join(have)}), or use auto / all")
    chosen = list(dict.fromkeys(chosen))
    default = chosen[0] if "all" not in requested else ("fp32" if "fp32" in chosen else chosen[0])
    return chosen, default, why


def digit_model(info: Manifest) -> bool:
    """A model of MNIST digits, binary (Bernoulli) or 8-bit (logistic; trained on MNIST, not
    Fashion-MNIST): the page gives it the drawing pad and the MNIST test set's score range."""
    from vae_edge.runtime.mathops import EIGHT_BIT

    return info.model.mnist_like or (tuple(info.model.image_shape) == (1, 28, 28) and info.model.likelihood in EIGHT_BIT
                                     and info.dataset == "mnist" and not info.model.spatial_factor)


def score_draws(latent_dim: int) -> np.ndarray:
    """The page's fixed noise for its -ELBO: the draws rt.score(x, seed=0, elbo_samples=16) uses for one image."""
    return np.random.default_rng(0).standard_normal((SCORE_SAMPLES, latent_dim), dtype=np.float32)


def score_range(bundle: Path, variant: str, data_dir=None, warn=lambda s: None) -> dict:
    """The test set's -ELBO (the page's estimator) for the first 1,000 test digits: percentiles."""
    from vae_edge.data import load_slice
    from vae_edge.runtime.vae_runtime import VAERuntime

    try:
        x, _ = load_slice(f"mnist:test[0:{SCORE_RANGE_IMAGES}]", data_dir)
    except VaeEdgeError as e:
        warn(f"note: no MNIST test set ({e}); the page shows scores without the test set's range")
        return {}
    with VAERuntime.load(bundle, variant=variant, warn=warn) as rt:
        s = rt.score(x, seed=0, elbo_samples=SCORE_SAMPLES)
    q = np.percentile(s, [1, 5, 25, 50, 75, 95, 99])
    return {"images": len(x), "estimator": f"-ELBO, mean over {SCORE_SAMPLES} draws",
            "percentiles": {str(p): round(float(v), 3) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q, strict=True)}}


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VaeEdgeError(f"--out {out} is a file")
    if not out.parent.is_dir():
        raise VaeEdgeError(f"the folder of --out {out} does not exist (only the last level is created)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SITE_MARKER).is_file():
            raise VaeEdgeError(f"--out {out} holds other files: choose an empty or new folder")
        if not force:
            raise VaeEdgeError(f"--out {out} holds a site built before: pass --force to replace it")


def page_shapes(info: Manifest) -> tuple[list[int], list[int]]:
    """(image shape, latent shape) of the page's samples, morphs, uploads and scores: the model's
    own, or for graphs of any size (a diffusers VAE) a PREVIEW_PIXELS preview (16 samples of SD's
    own 512x512 do not fit the browser's WebAssembly memory; large images decode in tiles)."""
    image, latent = list(info.model.image_shape), list(info.model.latent_shape)
    f = info.model.spatial_factor
    if f and image[1] * image[2] > PREVIEW_PIXELS ** 2:
        side = max(f, PREVIEW_PIXELS // f * f)
        image, latent = [image[0], side, side], [latent[0], side // f, side // f]
    return image, latent


def _site_config(info: Manifest, path: Path, chosen, default: str, why: str, rng: dict, signature: str) -> dict:
    """config.json: what the page reads (its variants, the score draws and range, the pad)."""
    image, latent = page_shapes(info)
    dim = int(np.prod(latent))
    return {
        "schema": "vae-edge-site", "schema_version": 1,
        "name": info.name or path.name,
        "model": {"arch": info.model.arch, "latent_dim": dim,
                  "latent_shape": latent, "image_shape": image,
                  "likelihood": info.model.likelihood, "sigma": info.model.sigma,
                  "learned_sigma": info.model.learned_sigma, "mnist_like": info.model.mnist_like,
                  # > 0: graphs of any size (a diffusers VAE): the page decodes large images in tiles
                  "spatial_factor": info.model.spatial_factor},
        "variants": {v: {"encoder": f"models/{info.variants[v].files['encoder']}",
                         "decoder": f"models/{info.variants[v].files['decoder']}",
                         "dtype": info.variants[v].dtype,
                         "accuracy": dict(info.variants[v].accuracy)} for v in chosen},
        "default_variant": default, "why": why,
        "score": {"draws": score_draws(dim).tolist(), "range": rng},
        # the drawing pad draws digits: for one-channel 28x28 digit models (binary or 8-bit) only
        "pad": {"size": PAD_SIZE, "stroke": PAD_STROKE} if digit_model(info) else None,
        "onnxruntime_web": ORT_WEB_VERSION,
        "signature": signature,
        "evaluation": info.evaluation,
    }


def _write_site(out: Path, info: Manifest, chosen, graphs: dict, ort_dir: Path, config: dict, path: Path) -> None:
    """Everything into a fresh folder beside `out`, which then replaces it."""
    from vae_edge.runtime.bundle_writer import replace_dir

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # a web root: readable by the server's user (mkdtemp makes it private)
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, tmp / name)
        (tmp / "models").mkdir()
        for v in chosen:
            for g, data in graphs[v].items():
                (tmp / "models" / info.variants[v].files[g]).write_bytes(data)
        (tmp / "models" / "manifest.json").write_text(json.dumps(info.to_dict(), indent=1))
        (tmp / "ort").mkdir()
        for name in ORT_WEB_FILES:  # the pinned bytes only, checked as they are copied
            (tmp / "ort" / name).write_bytes(ort_file_bytes(ort_dir, name))
        (tmp / "config.json").write_text(json.dumps(config))
        (tmp / "_headers").write_text("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION_HEADERS.items()))
        (tmp / SITE_MARKER).write_text(f"built by vae-edge web from bundle {info.name or path.name}\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_site(
    bundle=None,
    variants: tuple[str, ...] = ("auto",),
    out: str | os.PathLike = "site",
    data_dir=None,
    force: bool = False,
    trusted_key=None,
    log: Callable[[str], None] | None = None,
    with_score_range: bool = True,
) -> dict:
    """Write the static site to `out` (atomically: a finished folder replaces the old one)."""
    from vae_edge.runtime import trust
    from vae_edge.runtime.bundle import open_bundle
    from vae_edge.runtime.vae_runtime import is_shipped, resolve_bundle

    log = log or logger.info
    out = Path(out)
    _check_out(out, force)
    path = resolve_bundle(bundle)
    key, label = trust.resolve_key(trusted_key, shipped=is_shipped(path))
    opened = open_bundle(path, key, warn=log, key_label=label)
    info = opened.info
    if info.model.conditional:
        raise VaeEdgeError("the page supports unconditional models only (this bundle is conditional)")
    if info.model.deterministic:
        raise VaeEdgeError("the page scores images by their -ELBO, which needs an encoder with a variance; this "
                           "bundle's encoder is deterministic (TAESD)")
    chosen, default, why = choose_variants(info, tuple(variants))
    graphs = {v: opened.variant_bytes(v) for v in chosen}  # checked (and signature-verified) bytes
    ort_dir = ort_web_dir(log)
    rng = score_range(path, default, data_dir, warn=log) if with_score_range and digit_model(info) else {}
    config = _site_config(info, path, chosen, default, why, rng, opened.signature)
    _write_site(out, info, chosen, graphs, ort_dir, config, path)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"out": str(out), "variants": chosen, "default_variant": default, "why": why,
            "bytes": size, "score_range": rng}


# ---------------------------------------------------------------------------------------------
# Serving it (a quick look, and the tests): cross-origin isolated, right MIME types
# ---------------------------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}
    timeout = 30  # seconds an idle or slow connection may hold its thread

    def list_directory(self, path):  # a site is files, not folders to browse
        self.send_error(404, "Not found")
        return None

    def end_headers(self) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args) -> None:  # quiet: the CLI prints the URL once
        pass


def serve(site: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the site (port 0: any free port); call serve_forever() or use serving()."""
    site = Path(site)
    if not (site / "index.html").is_file() or not (site / "config.json").is_file():
        raise VaeEdgeError(f"{site} is not a site built by `vae-edge web` (no index.html/config.json)")
    try:
        return http.server.ThreadingHTTPServer((host, port), partial(_Handler, directory=str(site)))
    except OSError as e:
        raise VaeEdgeError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e


class serving:
    """`with serving(site) as url:` a server on a free port in a background thread."""

    def __init__(self, site: str | os.PathLike):
        self.server = serve(site, port=0)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
