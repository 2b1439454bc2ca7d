"""The classical side of the container: a file that stores its images with PNG or WebP lossless
instead of the VAE, when that is smaller (a lone image: the VAE file's header and the model's
rate can cost more than a PNG of it). `vae-edge compress` codes the images both ways and keeps
the smaller file; `decompress` reads either, exactly (pixels, shape, dtype, axes).

A classical file: b"VAEC", a version byte, codec, layout and binary bytes, then as LEB128
varints the image count and C, H, W, then 8 bytes of the data digest; then per image and per
plane a varint length and the plane's bytes, then a CRC-32 of all before it. The planes are
stored without their formats' fixed framing, rebuilt on reading: a PNG's zlib stream (its IDAT
data) after its bit depth and colour type (signature, IHDR, IEND and chunk CRCs rebuilt), a WebP's
VP8L bitstream (the RIFF framing rebuilt). Grey images are one 8-bit plane ("L"), colour ones one
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
_HEAD = struct.Struct("<BBB")  # codec, layout, binary; then varints and the digest
DIGEST = 8
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
    """One plane as a PNG or WebP lossless file, less its fixed framing (see the module's doc)."""
    from PIL import Image

    buf = io.BytesIO()
    pic = Image.fromarray(plane)
    if codec == "png":
        pic.save(buf, "PNG", optimize=True)
        return _strip_png(buf.getvalue())
    pic.save(buf, "WEBP", lossless=True, quality=100, method=6, exact=True)
    data = buf.getvalue()
    if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8L":
        raise VaeEdgeError("Pillow's WebP encoder wrote an unexpected file (not a lone VP8L bitstream)")
    size = struct.unpack("<I", data[16:20])[0]
    return data[20:20 + size]


def _strip_png(data: bytes) -> bytes:
    """A PNG of IHDR, IDAT... and IEND only -> bit depth, colour type and the zlib stream."""
    pos, idat, head = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = body[8:10]
            if body[10:13] != b"\0\0\0":
                raise VaeEdgeError("Pillow's PNG encoder wrote an interlaced or unusual PNG")
        elif kind == b"IDAT":
            idat.append(body)
        elif kind != b"IEND":
            raise VaeEdgeError(f"Pillow's PNG encoder wrote a {kind!r} chunk (not stored by this container)")
        pos += 12 + n
    return head + b"".join(idat)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _rebuild(payload: bytes, codec: str, w: int, h: int) -> bytes:
    """The inverse of _encode's stripping: a whole PNG or WebP file."""
    if codec == "png":
        ihdr = struct.pack(">II", w, h) + payload[:2] + b"\0\0\0"
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", payload[2:]) + _chunk(b"IEND", b"")
    pad = b"\0" if len(payload) % 2 else b""
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(payload)) + payload + pad
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, where: object) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        if pos >= end or shift > 35:
            raise ClassicError(f"{where} is damaged (a length runs past its end)")
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return n, pos


def webp_available() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def encode(values: np.ndarray, codec: str, binary: bool) -> list[bytes]:
    """uint8 [N, C, H, W] (binary: 0/1) -> the coded planes of every image, in order."""
    return [_encode(p, codec) for img in values for p in _planes(img, binary)]


def pack(codec: str, coded: list[bytes], layout: int, shape: tuple[int, ...], n: int, binary: bool,
         digest: bytes) -> bytes:
    cid = next(k for k, v in CODECS.items() if v == codec)
    body = (MAGIC + bytes([VERSION]) + _HEAD.pack(cid, layout, int(binary))
            + b"".join(_varint(int(k)) for k in (n, *shape)) + digest[:DIGEST])
    body += b"".join(_varint(len(c)) + c for c in coded)
    return body + struct.pack("<I", zlib.crc32(body))


def is_classic(data: bytes) -> bool:
    return data[:4] == MAGIC


def read(data: bytes, where: object = "file") -> tuple[dict, np.ndarray]:
    """A classical file -> (header, float32 [N, C, H, W] in [0, 1]: k/255, or 0/1 for binary)."""
    from PIL import Image

    if len(data) < 5 + _HEAD.size + 4 + DIGEST + 4 or data[4] != VERSION:
        raise ClassicError(f"{where} is a classical vae-edge file of a version this vae-edge does not read")
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ClassicError(f"{where} is damaged (its checksum does not match: truncated or changed bytes)")
    cid, layout, binary = _HEAD.unpack_from(data, 5)
    pos, end = 5 + _HEAD.size, len(data) - 4
    n, c, h, w = 0, 0, 0, 0
    n, pos = _read_varint(data, pos, end, where)
    c, pos = _read_varint(data, pos, end, where)
    h, pos = _read_varint(data, pos, end, where)
    w, pos = _read_varint(data, pos, end, where)
    digest, pos = data[pos:pos + DIGEST], pos + DIGEST
    if cid not in CODECS or not n or not c or not h or not w or n * c * h * w > MAX_VALUES or binary > 1:
        raise ClassicError(f"{where} is damaged (its header claims codec {cid}, {n:,} images of {[c, h, w]})")
    codec = CODECS[cid]
    colour = c == 3 and not binary
    per = 1 if colour else c
    if end - pos < n * per:  # every plane takes a byte at least: bounded by the file before anything is built
        raise ClassicError(f"{where} is damaged (too short for the {n:,} images it claims)")
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        planes = []
        for _ in range(per):
            k, pos = _read_varint(data, pos, end, where)
            if pos + k > end:
                raise ClassicError(f"{where} is damaged (it ends inside image {i})")
            try:
                with Image.open(io.BytesIO(_rebuild(data[pos:pos + k], codec, w, h))) as pic:
                    if pic.size != (w, h):
                        raise ClassicError(f"{where} is damaged (image {i} is {pic.size[0]}x{pic.size[1]}, "
                                           f"not {w}x{h})")
                    a = np.asarray(pic.convert("1" if binary else ("RGB" if colour else "L")))
            except ClassicError:
                raise
            except Exception as e:  # Pillow's own errors on damaged data: one line
                raise ClassicError(f"{where} is damaged (image {i} does not decode: {type(e).__name__})") from None
            planes.append(a)
            pos += k
        img = planes[0].transpose(2, 0, 1) if colour else np.stack(planes)
        out[i] = img.astype(np.float32) if binary else (img / 255.0).astype(np.float32)  # as check_8bit
    if pos != end:
        raise ClassicError(f"{where} is damaged (its length does not match its images)")
    header = {"codec": codec, "layout": layout, "images": n, "shape": (c, h, w), "binary": bool(binary),
              "data": digest}
    return header, out
