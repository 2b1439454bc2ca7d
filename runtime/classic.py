"""The classical side of the container: a file that stores its images with PNG or WebP lossless
instead of the VAE, when that is smaller (a lone image: the VAE file's header and the model's
rate can cost more than a PNG of it). `vae-edge compress` codes the images both ways and keeps
the smaller file; `decompress` reads either, exactly (pixels, shape, dtype, axes).

A classical file: b"VAEC", a version byte, then <codec u8, layout u8, images u32, C, H, W u16,
binary u8, data digest 16 bytes>, then per image and per plane a u32 length and the coded
bytes, then a CRC-32 of all before it. Grey images are one 8-bit plane ("L"), colour ones one
RGB picture, other channel counts one grey plane per channel; binary images 1-bit planes.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from vae_edge import VaeEdgeError

MAGIC = b"VAEC"
VERSION = 1
CODECS = {1: "png", 2: "webp"}  # id in the file -> name
NAMES = {"png": "PNG", "webp": "WebP lossless"}
_HEAD = struct.Struct("<BBI3HB16s")
MAX_VALUES = 1 << 30  # pixels of all images of one file, at most (as the VAE container)
FULL_WEBP_IMAGES = 256  # more images: WebP is first tried on this many (it is ~25x slower than PNG)


class ClassicError(VaeEdgeError):
    """A classical file that cannot be read (damaged)."""


def _planes(img: np.ndarray, binary: bool) -> list[np.ndarray]:
    """uint8 [C, H, W] -> the pictures it is stored as: [H, W] planes, or one [H, W, 3]."""
    if binary:
        return [p.astype(bool) for p in img]
    if img.shape[0] == 3:
        return [img.transpose(1, 2, 0)]
    return list(img)


def _encode(plane: np.ndarray, codec: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pic = Image.fromarray(plane)
    if codec == "png":
        pic.save(buf, "PNG", optimize=True)
    else:
        pic.save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
    return buf.getvalue()


def webp_available() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def encode(values: np.ndarray, codec: str, binary: bool) -> list[bytes]:
    """uint8 [N, C, H, W] (binary: 0/1) -> the coded planes of every image, in order."""
    return [_encode(p, codec) for img in values for p in _planes(img, binary)]


def pack(codec: str, coded: list[bytes], layout: int, shape: tuple[int, ...], n: int, binary: bool,
         digest: bytes) -> bytes:
    cid = next(k for k, v in CODECS.items() if v == codec)
    body = MAGIC + bytes([VERSION]) + _HEAD.pack(cid, layout, n, *shape, int(binary), digest)
    body += b"".join(struct.pack("<I", len(c)) + c for c in coded)
    return body + struct.pack("<I", zlib.crc32(body))


def is_classic(data: bytes) -> bool:
    return data[:4] == MAGIC


def read(data: bytes, where: object = "file") -> tuple[dict, np.ndarray]:
    """A classical file -> (header, float32 [N, C, H, W] in [0, 1]: k/255, or 0/1 for binary)."""
    from PIL import Image

    if len(data) < 5 + _HEAD.size + 4 or data[4] != VERSION:
        raise ClassicError(f"{where} is a classical vae-edge file of a version this vae-edge does not read")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ClassicError(f"{where} is damaged (its checksum does not match: truncated or changed bytes)")
    cid, layout, n, c, h, w, binary, digest = _HEAD.unpack_from(data, 5)
    if cid not in CODECS or not n or not c or not h or not w or n * c * h * w > MAX_VALUES:
        raise ClassicError(f"{where} is damaged (its header claims codec {cid}, {n:,} images of {[c, h, w]})")
    per = c if binary or c != 3 else 1
    if (len(data) - 5 - _HEAD.size - 4) < 4 * n * per:  # bounded by the file before anything is built
        raise ClassicError(f"{where} is damaged (too short for the {n:,} images it claims)")
    out = np.empty((n, c, h, w), np.float32)
    pos, end = 5 + _HEAD.size, len(data) - 4
    for i in range(n):
        planes = []
        for _ in range(per):
            if pos + 4 > end:
                raise ClassicError(f"{where} is damaged (it ends inside image {i})")
            k = struct.unpack_from("<I", data, pos)[0]
            if pos + 4 + k > end:
                raise ClassicError(f"{where} is damaged (it ends inside image {i})")
            try:
                with Image.open(io.BytesIO(data[pos + 4: pos + 4 + k])) as pic:
                    if pic.size != (w, h):
                        raise ClassicError(f"{where} is damaged (image {i} is {pic.size[0]}x{pic.size[1]}, "
                                           f"not {w}x{h})")
                    a = np.asarray(pic.convert("1" if binary else ("RGB" if per == 1 and c == 3 else "L")))
            except ClassicError:
                raise
            except Exception as e:  # Pillow's own errors on damaged data: one line
                raise ClassicError(f"{where} is damaged (image {i} does not decode: {type(e).__name__})") from None
            planes.append(a)
            pos += 4 + k
        img = planes[0].transpose(2, 0, 1) if (per == 1 and c == 3 and not binary) else np.stack(planes)
        out[i] = img.astype(np.float32) if binary else (img / 255.0).astype(np.float32)  # as check_8bit
    if pos != end:
        raise ClassicError(f"{where} is damaged (its length does not match its images)")
    header = {"codec": CODECS[cid], "layout": layout, "images": n, "shape": (c, h, w), "binary": bool(binary),
              "data": digest}
    return header, out
