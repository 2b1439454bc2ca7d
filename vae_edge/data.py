"""MNIST-format datasets: IDX reading and writing, locating and downloading, binarization.

numpy only (no torch), so the on-device runtime can read dataset slices too.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_edge import VaeEdgeError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes are used by MNIST.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # of the official .gz files, for verifying downloads
    system_dirs: tuple[str, ...] = ()
    package: str = ""  # the Debian package that installs the files into system_dirs


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        package="dataset-fashion-mnist",
    ),
}


# sha256 of each official test-label set (10,000 bytes): tells which dataset a folder holds.
TEST_LABELS_SHA256 = {
    "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5": "mnist",
    "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9": "fashion-mnist",
}


def identify(directory: str | os.PathLike) -> str | None:
    """Which known dataset a folder holds, from its test labels; None if unknown or absent."""
    path = _find_file(Path(directory), SPLIT_FILES["test"][1])
    if path is None:
        return None
    try:
        labels = read_idx(path)
    except VaeEdgeError:
        return None
    return TEST_LABELS_SHA256.get(hashlib.sha256(labels.tobytes()).hexdigest())


def get_spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise VaeEdgeError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------


MAX_IDX_BYTES = 1 << 30  # an IDX file's data, unpacked: MNIST's largest is 47 MB


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array. The header is read and
    checked first; then exactly the bytes it declares are inflated (at most MAX_IDX_BYTES), so a
    gzip bomb costs no more than the file it claims to be."""
    from vae_edge.runtime.files import open_regular

    path = Path(path)
    fd, _ = open_regular(path, "data file", None)
    try:
        with os.fdopen(fd, "rb") as raw_file:
            gz = raw_file.read(2) == b"\x1f\x8b"
            raw_file.seek(0)
            f = gzip.GzipFile(fileobj=raw_file, mode="rb") if gz else raw_file
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise VaeEdgeError(f"{path} is not an IDX file (wrong magic number)")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise VaeEdgeError(f"{path} has a malformed IDX header")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise VaeEdgeError(f"{path} declares {list(shape)} ({expected / 2**30:.1f} GiB), over the "
                                   f"{MAX_IDX_BYTES >> 30} GiB limit of a data file: refused")
            body = f.read(expected + 1)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise VaeEdgeError(f"cannot read {path}: {e} (the file is truncated or corrupt)") from e
    if len(body) != expected:
        raise VaeEdgeError(
            f"{path} is truncated or corrupt: header says {shape} ({expected} bytes), "
            f"found {len(body) if len(body) <= expected else 'more than that'} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array of uint8/int8 as an IDX file; gzip-compressed when the name ends in .gz."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _IDX_CODES:
        raise ValueError("write_idx supports uint8 and int8 arrays")
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def split_present(directory: Path, split: str) -> bool:
    img, lab, _ = SPLIT_FILES[split]
    return _find_file(directory, img) is not None and _find_file(directory, lab) is not None


def load_split(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load (images uint8 [N, 28, 28], labels uint8 [N]) of one split, validating the format."""
    if split not in SPLIT_FILES:
        raise VaeEdgeError(f"unknown split {split!r}: choose train or test")
    directory = Path(directory)
    img_stem, lab_stem, _ = SPLIT_FILES[split]
    img_path, lab_path = _find_file(directory, img_stem), _find_file(directory, lab_stem)
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        raise VaeEdgeError(
            f"{directory} has no {missing}(.gz): point --data-dir at a folder with the four "
            "MNIST IDX files, or run `vae-edge data fetch`"
        )
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise VaeEdgeError(f"{img_path} holds {images.dtype}{list(images.shape)}, not uint8 [N, 28, 28]")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise VaeEdgeError(f"{lab_path} holds {labels.dtype}{list(labels.shape)}, not uint8 [N]")
    if len(images) != len(labels):
        raise VaeEdgeError(
            f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split"
        )
    if labels.size and labels.max() > 9:
        raise VaeEdgeError(f"{lab_path} has labels above 9")
    return images, labels


def verify_dir(directory: str | os.PathLike, full_size: bool = True) -> dict[str, int]:
    """Validate a data directory by format; with full_size, also the official record counts."""
    counts = {}
    for split, (_, _, n) in SPLIT_FILES.items():
        images, _ = load_split(directory, split)
        if full_size and len(images) != n:
            raise VaeEdgeError(f"{directory}: the {split} split has {len(images)} records, expected {n}")
        counts[split] = len(images)
    return counts


# ---------------------------------------------------------------------------------------------
# Where data comes from: --data-dir, $VAE_EDGE_DATA, the per-user cache, system dirs, download
# ---------------------------------------------------------------------------------------------


def cache_dir(dataset: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae-edge" / dataset


def candidate_dirs(dataset: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    spec = get_spec(dataset)
    if data_dir is not None:
        return [Path(data_dir)]
    dirs = []
    if os.environ.get("VAE_EDGE_DATA"):
        env = Path(os.environ["VAE_EDGE_DATA"])
        dirs += [env / dataset, env]
    dirs.append(cache_dir(dataset))
    dirs += [Path(d) for d in spec.system_dirs]
    return dirs


def resolve_data_dir(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    split: str = "train",
) -> Path:
    """Find a directory holding the dataset, downloading it into the user cache as a last resort."""
    get_spec(dataset)
    if data_dir is not None:
        d = Path(data_dir)
        if not d.is_dir():
            raise VaeEdgeError(
                f"data directory {d} does not exist: pass a folder with the MNIST IDX files, "
                "or leave --data-dir out to use the cache (`vae-edge data fetch` fills it)"
            )
        held = identify(d)
        if held is not None and held != dataset:
            raise VaeEdgeError(f"{d} holds {held}, not {dataset}: pass a folder with {dataset}'s files "
                               f"(or leave --data-dir out to use {dataset}'s own location)")
        return d
    for d in candidate_dirs(dataset):
        # $VAE_EDGE_DATA itself is a candidate for every dataset: a folder that holds another one
        # (MNIST, when Fashion-MNIST is asked for) is passed over, not silently used
        if d.is_dir() and split_present(d, split) and identify(d) in (None, dataset):
            return d
    if not download:
        raise VaeEdgeError(
            f"{dataset} not found in {', '.join(str(d) for d in candidate_dirs(dataset))}: "
            "run `vae-edge data fetch`, set VAE_EDGE_DATA, or pass --data-dir"
        )
    return fetch(dataset, splits=(split,))


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(name: str, dest_dir: Path, mirrors: tuple[str, ...], md5: str, timeout: float = 30,
                  deadline: float = 900) -> Path:
    """Download one file, trying each mirror in turn; verify its md5; write atomically. Bad bytes
    (truncated, wrong checksum, a connection that stalls for `timeout` s or takes longer than
    `deadline` s in all, or closes mid-transfer) never reach `dest_dir`; the error names every
    mirror tried and why it failed."""
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix="." + name, suffix=".part")
        try:
            start = time.monotonic()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                size = 0
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    size += len(chunk)
                    if time.monotonic() - start > deadline:
                        raise TimeoutError(f"took longer than {deadline:g} s")
                if expected is not None and size != int(expected):
                    raise http.client.IncompleteRead(b"", int(expected) - size)
                out.flush()
                os.fsync(out.fileno())
            got = _md5(Path(tmp))
            if got != md5:
                errors.append(f"{url}: wrong checksum (md5 {got}, expected {md5})")
                continue
            os.replace(tmp, dest)
            return dest
        except http.client.IncompleteRead as e:
            errors.append(f"{url}: truncated (the body ended {e.expected} bytes short)" if e.expected
                          else f"{url}: truncated")
        except TimeoutError as e:
            errors.append(f"{url}: timed out ({e or f'no data for {timeout:g} s'})")
        except urllib.error.HTTPError as e:
            errors.append(f"{url}: HTTP {e.code} {e.reason}")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or type(e).__name__ + (f' {e}' if str(e) else '')}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if created:
        with contextlib.suppress(OSError):
            dest_dir.rmdir()  # leave no empty cache folder behind (only if nothing else is in it)
    raise VaeEdgeError(
        f"could not download {name} from any of {len(mirrors)} mirror(s): {'; '.join(errors)}. "
        f"Offline? copy the IDX files into {dest_dir} (or another folder, then pass it with --data-dir; "
        "`vae-edge data fetch --dest DIR` downloads elsewhere)"
    )


def fetch(dataset: str = "mnist", dest: str | os.PathLike | None = None, mirrors: tuple[str, ...] | None = None,
          splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Download the IDX files of a dataset's splits (skipping those already verified) into dest:
    a command that needs test images only fetches the two test files."""
    spec = get_spec(dataset)
    dest_dir = Path(dest) if dest is not None else cache_dir(dataset)
    wanted = {f + ".gz" for s in splits for f in SPLIT_FILES[s][:2]}
    known = {f + ".gz" for s in SPLIT_FILES for f in SPLIT_FILES[s][:2]}
    for name, md5 in spec.md5.items():
        if name in known and name not in wanted:
            continue
        if (dest_dir / name).is_file() and _md5(dest_dir / name) == md5:
            continue
        try:
            download_file(name, dest_dir, mirrors or spec.mirrors, md5)
        except VaeEdgeError as e:
            if spec.package and mirrors is None:  # offline, and a system package has the files
                raise VaeEdgeError(f"{dataset} is not installed and could not be downloaded ({name}: no mirror "
                                   f"answered): install it with `apt-get install {spec.package}` (puts the files "
                                   f"in {spec.system_dirs[0]}), or pass --data-dir") from e
            raise
    return dest_dir


# ---------------------------------------------------------------------------------------------
# Dataset slices ("mnist:test[0:16]") and binarization, in numpy
# ---------------------------------------------------------------------------------------------

_SLICE_RE = re.compile(r"^(?P<ds>[a-z-]+):(?P<split>train|test)(\[(?P<a>-?\d*):(?P<b>-?\d*)\])?$")


def is_dataset_slice(text: str) -> bool:
    return bool(_SLICE_RE.match(text))


def load_slice(text: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """'mnist:test[0:16]' -> (float32 [n, 1, 28, 28] in [0, 1], int64 labels [n])."""
    m = _SLICE_RE.match(text)
    if not m:
        raise VaeEdgeError(f"{text!r} is not a dataset slice like mnist:test[0:16]")
    directory = resolve_data_dir(m["ds"], data_dir, split=m["split"])
    images, labels = load_split(directory, m["split"])
    a = int(m["a"]) if m["a"] else None
    b = int(m["b"]) if m["b"] else None
    images, labels = images[a:b], labels[a:b]
    if len(images) == 0:
        raise VaeEdgeError(f"{text} selects no images")
    return to_float(images), labels.astype(np.int64)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def binarize(x: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli draw of each pixel, with a fixed seed (the fixed test set for likelihoods)."""
    rng = np.random.default_rng(seed)
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
