"""Images in and out: MNIST-style preprocessing of user images, grids, GIFs, atomic writes."""

from __future__ import annotations

import contextlib
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from vae_edge import VaeEdgeError, printable
from vae_edge.runtime.files import (
    check_output_path,
    existing_kind,
    is_stdout,
    open_regular,
    write_output,
)
from vae_edge.runtime.manifest import MNIST_SHAPE

_SLICE_LIKE = re.compile(r"^[A-Za-z][\w-]+:")  # mnist:..., fashion-mnist:..., not C:\ or ./x
MAX_GRID_IMAGES = 4096  # a grid image holds at most this many digits (larger: write .npy)
MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs)
IMAGE_SUFFIXES = {".png": "PNG", ".gif": "GIF", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}


def preprocess(img: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 [1, 28, 28] in [0, 1], the way MNIST was made: grey, white digit
    on black, cropped to the digit, longer side scaled to 20 px, centred by mass in 28x28.

    Photos and scans work too: the paper's own brightness, uneven lighting and colour casts are
    estimated (a morphological opening wider than any pen stroke, then a blur) and removed, the
    noise floor left behind is cut, and only then is the ink cropped. Clean digital drawings
    (a flat background) skip that clean-up. The browser page (vae_edge/web/static/vae.js) mirrors
    the clean-drawing path step for step; tests/test_web.py holds the two to 1/255 per pixel."""
    return frame_digit(ink_map(img))


def frame_digit(a: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] on a zero background, any size -> [1, 28, 28]: crop to the ink (speckles
    ignored), scale the longer side to 20 px (pillow's Lanczos on 8-bit grey), centre by mass."""
    if a.max() <= 0:
        return np.zeros((1, 28, 28), np.float32)
    rows, cols = np.nonzero(_speckle_free(a) > 0.1)
    if len(rows) == 0:
        rows, cols = np.nonzero(a > 0.1)
    if len(rows) == 0:
        return np.zeros((1, 28, 28), np.float32)
    a = a[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = a.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = lanczos(np.round(a * 255).astype(np.uint8), nw, nh)
    total = int(small.sum(dtype=np.int64))
    if total == 0:  # the ink vanished when scaled (a single faint pixel): nothing to show
        return np.zeros((1, 28, 28), np.float32)
    # centre of mass from integer sums (exact, so the page's JavaScript gets the same bits)
    cy = int((small.sum(1, dtype=np.int64) * np.arange(nh)).sum()) / total
    cx = int((small.sum(0, dtype=np.int64) * np.arange(nw)).sum()) / total
    top = int(np.clip(round(14 - cy), 0, 28 - nh))
    left = int(np.clip(round(14 - cx), 0, 28 - nw))
    small = small.astype(np.float32) / 255.0
    out = np.zeros((28, 28), np.float32)
    out[top : top + nh, left : left + nw] = small
    return np.clip(out, 0, 1)[None]


def lanczos(u8: np.ndarray, nw: int, nh: int) -> np.ndarray:
    """uint8 [h, w] -> uint8 [nh, nw]: pillow's Lanczos, width first, then height (two one-axis
    resizes, each rounded to 8 bits: the same on every pillow version; pillow >= 13 may run the
    passes of one two-axis resize in the other order)."""
    img = Image.fromarray(u8)
    if nw != img.width:
        img = img.resize((nw, img.height), Image.Resampling.LANCZOS)
    if nh != img.height:
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    return np.asarray(img)


def draw_strokes(strokes, size: int = 256, width: float = 18.0) -> Image.Image:
    """Pen strokes (lists of (x, y) points in pixels) -> an 8-bit grey image, white ink on black,
    with a one-pixel anti-aliased edge: ink = clip(width/2 + 0.5 - distance to the stroke, 0, 1).
    The browser's drawing pad rasterizes its strokes with this same rule (vae.js: drawSegment)."""
    ink = np.zeros((size, size), np.float64)
    r = width / 2.0
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    for stroke in strokes:
        pts = [(float(x), float(y)) for x, y in stroke]
        if not pts:
            continue
        segments = list(zip(pts[:-1], pts[1:], strict=False)) or [(pts[0], pts[0])]
        for (x0, y0), (x1, y1) in segments:
            lo_x, hi_x = max(0, int(np.floor(min(x0, x1) - r - 1))), min(size, int(np.ceil(max(x0, x1) + r + 1)))
            lo_y, hi_y = max(0, int(np.floor(min(y0, y1) - r - 1))), min(size, int(np.ceil(max(y0, y1) + r + 1)))
            if lo_x >= hi_x or lo_y >= hi_y:
                continue
            px, py = xs[lo_y:hi_y, lo_x:hi_x], ys[lo_y:hi_y, lo_x:hi_x]
            dx, dy = x1 - x0, y1 - y0
            len2 = dx * dx + dy * dy
            t = np.zeros_like(px) if len2 == 0 else np.clip(((px - x0) * dx + (py - y0) * dy) / len2, 0, 1)
            d = np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))
            cov = np.clip(r + 0.5 - d, 0, 1)
            np.maximum(ink[lo_y:hi_y, lo_x:hi_x], cov, out=ink[lo_y:hi_y, lo_x:hi_x])
    return Image.fromarray(np.floor(ink * 255 + 0.5).astype(np.uint8), mode="L")


WORK_SIDE = 256  # large images are reduced to this longer side before looking for the ink


def ink_map(img: Image.Image) -> np.ndarray:
    """Grey image -> ink in [0, 1] on a zero background, whatever the paper, pen and lighting."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    grey = img.convert("L")
    if max(grey.size) > WORK_SIDE:
        f = WORK_SIDE / max(grey.size)
        grey = grey.resize((max(1, round(grey.width * f)), max(1, round(grey.height * f))), Image.Resampling.BOX)
    a = np.asarray(grey, dtype=np.float32) / 255.0
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 0.5:  # dark ink on light paper: make the ink bright
        a = 1.0 - a
        grey = Image.fromarray(np.round(a * 255).astype(np.uint8))
    paper = float(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))
    if np.mean(np.abs(a - paper) < 0.5 / 255) >= 0.5:  # a clean drawing: most pixels are the paper
        a = np.clip(a - paper, 0, None)
        top = float(a.max())
        return (a / top).astype(np.float32) if top > 1e-3 else np.zeros_like(a)
    side = max(a.shape)
    if side <= 64:  # small, digit-sized images (MNIST-like): a flat background
        a = np.clip(a - np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])), 0, None)
    else:  # paper and lighting: what remains once everything narrower than a sixth of the image
        # is removed (a morphological opening, computed at 64 px, then smoothed and brought back)
        f = 64 / side
        small = grey.resize((max(1, round(grey.width * f)), max(1, round(grey.height * f))), Image.Resampling.BOX)
        bg = small.filter(ImageFilter.MinFilter(11)).filter(ImageFilter.MaxFilter(11))
        bg = bg.filter(ImageFilter.GaussianBlur(3)).resize(grey.size, Image.Resampling.BILINEAR)
        a = np.clip(a - np.asarray(bg, np.float32) / 255.0, 0, None)
    top = float(np.percentile(a, 99.5))
    if top <= 1e-3:
        return np.zeros_like(a)
    a = np.clip(a / top, 0, 1)
    t = _otsu(a)  # ink vs background; cut the background's noise floor
    back = a[a < t]
    floor = float(np.percentile(back, 99)) if back.size else 0.0
    if floor >= 0.9:
        return np.zeros_like(a)
    return np.clip((a - floor) / (1 - floor), 0, 1).astype(np.float32)


def has_ink(x: np.ndarray, min_fraction: float = 0.005) -> bool:
    """Whether a preprocessed image shows anything (blank pages, empty canvases do not)."""
    return bool(np.mean(np.asarray(x) > 0.2) >= min_fraction)


def _otsu(a: np.ndarray) -> float:
    hist, edges = np.histogram(a, bins=64, range=(0.0, 1.0))
    w = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(w), np.cumsum(w * centers)
    total, mt = w0[-1], m0[-1]
    w1 = total - w0
    valid = (w0 > 0) & (w1 > 0)
    between = np.zeros_like(w)
    between[valid] = (mt * w0[valid] / total - m0[valid]) ** 2 / (w0[valid] * w1[valid])
    return float(edges[np.argmax(between) + 1])


def _speckle_free(a: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.round(a * 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.MedianFilter(3)), np.float32) / 255.0


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """An image file opened for reading, its size checked from the header before any pixel is
    decoded (pillow's global limits are left as they are: thread-safe); what goes wrong while it
    is read, in the body too, is one VaeEdgeError."""
    fd, _ = open_regular(path, "input")  # a regular file: never blocks on a FIFO
    try:
        with os.fdopen(fd, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            with Image.open(f) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise VaeEdgeError(f"{path} is {img.width}x{img.height}: too large (limit {MAX_PIXELS} pixels)")
                yield img
    except Image.DecompressionBombError as e:
        raise VaeEdgeError(f"{path} is too large to open safely (limit {MAX_PIXELS} pixels)") from e
    except UnidentifiedImageError as e:
        raise VaeEdgeError(f"{path} is not an image pillow can read") from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated or malformed files
        raise VaeEdgeError(f"cannot read image {path}: {e}") from e


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> [1, 28, 28], framed as MNIST's digits are (preprocess)."""
    path = Path(path)
    if path.is_dir():
        raise VaeEdgeError(f"input {path} is a folder: give image files (or a slice such as mnist:test[0:16])")
    with _open_image(path) as img:
        img.load()
        return preprocess(img)


def load_image_as_is(path: str | os.PathLike, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """An image file at the model's size -> [1, H, W] grey in [0, 1], pixel for pixel: no digit
    framing, which would resample (and so change) noise a restoration has to model exactly. Dark
    ink on light paper is inverted, as MNIST digits are white on black."""
    path = Path(path)
    with _open_image(path) as img:  # a regular file, its size checked, one-line errors
        if (img.height, img.width) != size:
            raise VaeEdgeError(f"{path} is {img.width}x{img.height}; restoring noise needs the image at the "
                               f"model's {size[1]}x{size[0]}, pixel for pixel (resizing changes the noise)")
        a = np.asarray(img.convert("L"), np.float32) / 255.0
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return (1.0 - a if np.median(border) > 0.5 else a)[None]


def images_from_npy(path: str | os.PathLike, shape=MNIST_SHAPE, any_size: int = 0) -> np.ndarray:
    """A .npy array of images -> [N, C, H, W] float32 in [0, 1]: float in [0, 1], or uint8 (/255);
    [N, H, W] and [H, W] are taken for one channel."""
    return images_from_array(load_npy(path, "image array"), path, shape, any_size)


def images_from_array(a: np.ndarray, path: object, shape=MNIST_SHAPE, any_size: int = 0) -> np.ndarray:
    if any_size and a.ndim in (3, 4) and a.shape[-3 if a.ndim == 3 else 1] == shape[0]:
        shape = (shape[0], *a.shape[-2:])  # its own size (the runtime checks it)
    elif any_size and shape[0] == 1 and a.ndim in (2, 3):
        shape = (1, *a.shape[-2:])
    grey = shape[0] == 1
    if grey and a.ndim == len(shape) - 1:  # [H, W]: one grey image
        a = a[None, None]
    elif grey and a.ndim == len(shape) and a.shape[1:] == tuple(shape[1:]):  # [N, H, W]: grey images
        a = a[:, None]
    elif a.ndim == len(shape):  # [C, H, W]: one image
        a = a[None]
    if a.ndim != len(shape) + 1 or a.shape[1:] != tuple(shape):
        raise VaeEdgeError(f"{path} holds an array of shape {list(a.shape)}; images must be [N, {', '.join(map(str, shape))}]")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise VaeEdgeError(f"{path}: image values must be uint8, or floats in [0, 1]")
    return a


MAX_FOLDER_IMAGES = 10_000


def load_resized(path: str | os.PathLike, shape: tuple[int, int, int], any_size: int = 0) -> np.ndarray:
    """An image file -> [C, H, W] in [0, 1]: resized to H x W (bilinear) and converted to the
    model's channels (grey or RGB); no digit framing. For models that are not MNIST-like.
    any_size > 0: kept at its own size, whose sides must be multiples of any_size."""
    c, h, w = shape
    path = Path(path)
    if not path.is_file():
        raise VaeEdgeError(f"input {path} does not exist")
    if c not in (1, 3):
        raise VaeEdgeError(f"image files hold 1 or 3 channels; this model takes {c}: give .npy arrays")
    with _open_image(path) as img:
        if any_size:
            w, h = img.size
            if w % any_size or h % any_size:
                raise VaeEdgeError(f"{path} is {w}x{h}: this model takes sides that are multiples of {any_size} "
                                   "(crop or pad it)")
        a = np.asarray(img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR),
                       np.float32) / 255.0
    return a[None] if c == 1 else a.transpose(2, 0, 1)


MAX_NPZ_MEMBERS = 64  # arrays in one .npz archive, at most


def images_from_npz(path: str | os.PathLike, shape=MNIST_SHAPE, any_size: int = 0) -> np.ndarray:
    """A .npz archive: its array `x` (or its only array) as images_from_npy reads one. The member
    is read from the archive itself (never a path its name may point to), streamed through its
    .npy header's checks: the size it declares, compressed or not, is bounded before a byte of
    data is inflated, and no more than that is inflated."""
    return images_from_array(load_npz_member(path), path, shape, any_size)


def load_npz_member(path: str | os.PathLike, name: str = "x", what: str = "image array") -> np.ndarray:
    import zipfile

    path = Path(path)
    fd, _ = open_regular(path, "input", MAX_NPY_BYTES)
    with os.fdopen(fd, "rb") as f:
        try:
            z = zipfile.ZipFile(f)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError, RuntimeError,
                struct.error) as e:  # zipfile's own errors are of several kinds (fuzzing found each)
            raise VaeEdgeError(f"{path} is not a .npz archive: {printable(e, 200)}") from None
        with z:
            infos = z.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise VaeEdgeError(f"{path} holds {len(infos):,} members; a .npz of images holds at most "
                                   f"{MAX_NPZ_MEMBERS} (name the images x)")
            arrays = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
            member = arrays.get(name) or (next(iter(arrays.values())) if len(arrays) == 1 else None)
            if member is None:
                shown = ", ".join(repr(printable(n, 40)) for n in list(arrays)[:8])
                more = f" and {len(arrays) - 8} more" if len(arrays) > 8 else ""
                raise VaeEdgeError(f"{path} holds arrays {shown or 'none'}{more}: name the images {name}")
            if member.file_size > MAX_NPY_BYTES:
                raise VaeEdgeError(f"{path}: its array {printable(member.filename, 60)!r} unpacks to "
                                   f"{member.file_size / 2**30:.1f} GiB, over the {MAX_NPY_BYTES >> 30} GiB limit")
            try:
                with z.open(member) as src:
                    return read_npy_stream(src, member.file_size, f"{path}:{printable(member.filename, 60)}", what)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, struct.error,
                    ValueError, OSError) as e:
                raise VaeEdgeError(f"{path} is a damaged .npz archive: {printable(e, 200)}") from None


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VaeEdgeError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > MAX_FOLDER_IMAGES:
        raise VaeEdgeError(f"{folder} holds {len(files):,} images; give at most {MAX_FOLDER_IMAGES:,} at a time")
    return files


def load_inputs(specs: list[str] | tuple[str, ...], data_dir=None, as_is: bool = False,
                shape: tuple[int, int, int] = MNIST_SHAPE, any_size: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Image files, folders of them, .npy/.npz arrays and dataset slices ('mnist:test[0:16]') ->
    (x [N, C, H, W] of the model's `shape`, labels or None). Image files are framed as MNIST's
    digits for 1x28x28 models (as_is: taken pixel for pixel), else resized to the model's size.
    any_size > 0 (a model of any image size): images keep their own size, a multiple of it."""
    from vae_edge.data import is_dataset_slice, load_slice

    if not specs:
        raise VaeEdgeError("no input given: pass image files or a slice such as mnist:test[0:16]")
    shape = tuple(shape)
    xs, ys, all_labelled = [], [], True

    def image(path) -> np.ndarray:
        if any_size:
            return load_resized(path, shape, any_size)
        if shape != MNIST_SHAPE:
            return load_resized(path, shape)
        return load_image_as_is(path) if as_is else load_image(path)

    for spec in specs:
        if is_dataset_slice(spec) and not Path(spec).exists():
            if shape != MNIST_SHAPE:  # the datasets vae-edge reads are 1x28x28
                raise VaeEdgeError(f"{spec} holds [1, 28, 28] images; this model takes {list(shape)}: give image "
                                   "files, a folder or .npy arrays")
            x, y = load_slice(spec, data_dir)
            xs.append(x)
            ys.append(y)
            continue
        if _SLICE_LIKE.match(spec) and not Path(spec).exists():
            raise VaeEdgeError(f"{spec!r} is not a dataset slice: write DATASET:SPLIT[A:B], with DATASET mnist or "
                               "fashion-mnist and SPLIT train or test, e.g. mnist:test[0:16] (or an image file)")
        all_labelled = False
        if spec.lower().endswith(".npy"):
            arr = images_from_npy(spec, shape, any_size)
        elif spec.lower().endswith(".npz"):
            arr = images_from_npz(spec, shape, any_size)
        elif Path(spec).is_dir():
            arr = np.stack([image(p) for p in _folder_images(Path(spec))])
        else:
            arr = image(spec)[None]
        xs.append(arr)
        ys.append(np.full(len(arr), -1, np.int64))
    if len({x.shape[1:] for x in xs}) > 1:
        sizes = sorted({"x".join(map(str, x.shape[2:])) for x in xs})
        raise VaeEdgeError(f"the inputs are of several sizes ({', '.join(sizes[:4])}): give images of one size per call")
    return np.concatenate(xs), (np.concatenate(ys) if all_labelled else None)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 2, scale: int = 2) -> Image.Image:
    """[N, C, H, W] in [0, 1] (C = 1: grey, 3: colour; [N, H, W] and [N, 784] read as grey 28x28
    and HxW) -> one PIL image, N cells laid out in rows of ncol."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # [N, H, W, C]
    elif images.ndim == 3:
        images = images[..., None]
    else:
        images = images.reshape(-1, 28, 28, 1)
    n, h, w, c = images.shape
    check_grid_size(n)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    ch, cw = h + pad, w + pad
    canvas = np.full((nrow * ch + pad, ncol * cw + pad, c), 64, np.uint8)
    for i, im in enumerate(to_uint8(images)):
        r, k = divmod(i, ncol)
        canvas[pad + r * ch : pad + r * ch + h, pad + k * cw : pad + k * cw + w] = im
    img = Image.fromarray(canvas[..., 0], "L") if c == 1 else Image.fromarray(canvas, "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 2) -> Image.Image:
    """A grid with one row per (label, images [N, 1, 28, 28]) and the label at the row's left."""
    from PIL import ImageDraw

    ncol = max(len(images) for _, images in rows)
    body = grid(np.concatenate([images for _, images in rows]), ncol=ncol, scale=scale)
    margin = 8 + 7 * max(len(label) for label, _ in rows)
    canvas = Image.new(body.mode, (body.width + margin, body.height), 64 if body.mode == "L" else (64, 64, 64))
    canvas.paste(body, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = body.height / len(rows)
    for i, (label, _) in enumerate(rows):
        draw.text((4, int(i * row_h + row_h / 2 - 6)), label, fill=255 if body.mode == "L" else (255, 255, 255))
    return canvas


def check_grid_size(n: int) -> None:
    if n > MAX_GRID_IMAGES:
        side = int(np.ceil(np.sqrt(n))) * 60 + 4
        raise VaeEdgeError(f"a grid of {n} images would be a {side}x{side} picture; one image file holds at most "
                           f"{MAX_GRID_IMAGES}: write .npy (-o out.npy) or ask for fewer")


def check_output(path: str | os.PathLike, suffixes=tuple(IMAGE_SUFFIXES)) -> Path:
    """Refuse a bad output path before any work is done. `-` is standard output, written in the
    first format of `suffixes`; an existing character device or FIFO is written through."""
    path = Path(path)
    if is_stdout(path) or existing_kind(path) == "through":  # /dev/null, a FIFO: any name will do
        return path
    if path.suffix.lower() not in suffixes:
        raise VaeEdgeError(f"output {path} must end in one of {', '.join(suffixes)} (or be - for standard output)")
    check_output_path(path)
    return path


def output_format(path: Path, suffixes=tuple(IMAGE_SUFFIXES)) -> str:
    """The suffix that says how to write `path` (`-`: the first of `suffixes`)."""
    return path.suffix.lower() if path.suffix.lower() in suffixes else suffixes[0]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """write(tmp_path) then rename: no half-written output if anything fails."""
    return write_output(path, write)


def save_image(img: Image.Image, path: str | os.PathLike, fmt: str | None = None) -> Path:
    fmt = IMAGE_SUFFIXES[fmt or output_format(Path(path))]
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


PICTURE_OR_ARRAY = (".png", ".jpg", ".jpeg", ".npy")  # -o of the commands that write images


def wants_array(path: Path) -> bool:
    """-o names a .npy file: the images' array, not a picture of them."""
    return output_format(path, PICTURE_OR_ARRAY) == ".npy"


def save_picture_or_array(path: Path, array: np.ndarray, picture: Callable[[], Image.Image]) -> None:
    """path.npy: the array itself; else the picture, made only then."""
    if wants_array(path):
        save_npy(array, path)
    else:
        save_image(picture(), path)


def save_gif(frames: np.ndarray, path: str | os.PathLike, scale: int = 8, duration_ms: int = 120) -> Path:
    """[T, C, H, W] -> an animated GIF (8x: 224 px a side for MNIST) that plays forward then back."""
    pics = [grid(f[None], ncol=1, pad=0, scale=scale) for f in frames]
    seq = pics + pics[-2:0:-1]
    return atomic_write(
        path, lambda tmp: seq[0].save(tmp, format="GIF", save_all=True, append_images=seq[1:],
                                      duration=duration_ms, loop=0),
    )


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array, allow_pickle=False)
    return atomic_write(path, write)


MAX_NPY_BYTES = 1 << 31  # an array file larger than this is refused (2 GiB) ...
MAX_NPY_ELEMENTS = 1 << 29  # ... and so is one of more values than 2 GiB of float32 holds
_NPY_KINDS = "biuf"  # bool, signed and unsigned integers, floats


def load_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """A .npy file -> array, its header checked before any data is read: a regular file (never a
    FIFO or device, which would block), real numbers only (no strings, complex numbers or
    objects), and a declared size within the limits that the file really holds."""
    path = Path(path)
    fd, size = open_regular(path, f"{what} file", None)
    with os.fdopen(fd, "rb") as f:
        try:
            return read_npy_stream(f, size, path, what)
        except OSError as e:
            raise VaeEdgeError(f"cannot read {path}: {e.strerror or e}") from None


def read_npy_stream(f, size: int, where: object, what: str = "array") -> np.ndarray:
    """A .npy from a stream of `size` bytes: the header parsed and bounded first, then exactly the
    declared bytes read (never more), then the end checked."""
    try:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0,
                  (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unknown .npy version {version}")
        shape, fortran, dtype = reader(f, max_header_size=10_000)
    except (ValueError, OSError, SyntaxError, TypeError, EOFError):
        raise VaeEdgeError(f"{where} is not a .npy file (write one with numpy.save or `vae-edge encode`)") from None
    if dtype.kind not in _NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise VaeEdgeError(f"{where} holds {dtype} values; a {what} must be real numbers (float or integer)")
    count = int(np.prod(shape, dtype=np.float64))
    nbytes = count * dtype.itemsize
    if nbytes > MAX_NPY_BYTES or count > MAX_NPY_ELEMENTS:
        raise VaeEdgeError(f"{where} declares {list(shape)[:8]} {dtype} ({nbytes / 2**30:.1f} GiB), over the limit "
                           f"({MAX_NPY_BYTES >> 30} GiB, {MAX_NPY_ELEMENTS:,} values): split it into smaller files")
    left = size - f.tell()  # files and zip members both tell where the header ended
    if nbytes != left:
        raise VaeEdgeError(f"{where} declares {list(shape)[:8]} {dtype} ({nbytes:,} bytes) but holds {left:,}: "
                           "truncated or corrupt")
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != nbytes or f.read(1):
        raise VaeEdgeError(f"{where} holds {got:,} bytes of data, not the {nbytes:,} it declares: truncated or corrupt")
    data = np.frombuffer(buf, dtype=dtype, count=count) if nbytes else np.empty(0, dtype)
    return data.reshape(shape, order="F" if fortran else "C")
