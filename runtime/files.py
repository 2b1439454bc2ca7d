"""Bytes on disk, for every side of vae-edge: hashing, atomic writes, user outputs, bundle locks.

numpy-free and torch-free. Writers never leave half a file: they write a temporary file beside the
target, fsync, and rename it over the target. A user's `-o` that names something other than a
regular file (a character device such as /dev/null, a FIFO) is written through, never replaced;
block devices, sockets and folders are refused; `-o -` is standard output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vae_edge import VaeEdgeError

STDOUT = "-"
CHUNK = 1 << 20


# How every user file is opened for reading: never through a link, never blocking on a FIFO.
READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0))


# ---------------------------------------------------------------------------------------------
# A user's input file
# ---------------------------------------------------------------------------------------------

def open_regular(path: str | os.PathLike, what: str = "input", max_bytes: int | None = None) -> tuple[int, int]:
    """(fd, size) of a regular file opened for reading with READ_FLAGS: a FIFO, a device, a socket
    or a folder is refused at once (never waited on), and so is a file over `max_bytes`. Links are
    followed for a user's own input (its last component is checked after the open)."""
    flags = READ_FLAGS & ~getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise VaeEdgeError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise VaeEdgeError(f"{what} {path} is a folder, not a file") from None
    except OSError as e:
        raise VaeEdgeError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VaeEdgeError(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: refused")
        if max_bytes is not None and st.st_size > max_bytes:
            raise VaeEdgeError(f"{what} {path} is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit: refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular(path: str | os.PathLike, what: str = "input", max_bytes: int = 1 << 31) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see open_regular); never more than
    that is read, even from a file that grows while it is read."""
    fd, size = open_regular(path, what, max_bytes)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise VaeEdgeError(f"{what} {path} grew over the {max_bytes:,}-byte limit while it was read: refused")
    return data


def cache_base() -> Path:
    """The user cache ($XDG_CACHE_HOME, else ~/.cache): vae-edge's caches live in its vae-edge/ folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"))


def check_cache_path(path: Path) -> Path:
    """Refuse a cache path any part of which below the user cache (vae-edge/, its folders, the
    file) is a symbolic link: a cache is written and trusted, so it must be where it says (the
    bundle reader refuses links for the same reason). The cache base itself may be a link."""
    base = cache_base()
    try:
        rel = Path(path).relative_to(base)
    except ValueError:
        return Path(path)
    here = base
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise VaeEdgeError(f"the cache path {here} is a symbolic link: refused (remove it; vae-edge makes "
                               "its cache folders itself)")
    return Path(path)


MAX_JSON_DEPTH = 32  # nesting of any JSON vae-edge reads (its own files need 6)


def loads_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads that fails with a ValueError (json.JSONDecodeError) on anything it cannot read,
    deep nesting included (json.loads itself raises RecursionError past ~1000 levels, and
    shallower nesting would still reach the recursive code that walks the result)."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0) from None
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return obj


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, fsync, rename: readers see the old or the new file,
    never a part; the temporary file is removed if anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------------
# A user's output path
# ---------------------------------------------------------------------------------------------

def is_stdout(path: str | os.PathLike) -> bool:
    return str(path) == STDOUT


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words ('a FIFO', 'a folder', ...)."""
    for test, what in ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "not a regular file"


def existing_kind(path: Path) -> str | None:
    """None (nothing there), 'file', 'through' (a character device or FIFO: written through),
    or what it is that cannot be written ('a folder', 'a block device', 'a socket')."""
    try:
        st = os.stat(path)  # follows a link: what it points to is what would be written
    except FileNotFoundError:
        return None
    except OSError as e:
        raise VaeEdgeError(f"cannot write output {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return "through"
    return kind_of(st.st_mode)


def check_output_path(path: Path) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if is_stdout(path):
        return
    kind = existing_kind(path)
    if kind in ("file", "through"):
        if kind == "file" and not os.access(path.parent, os.W_OK):
            raise VaeEdgeError(f"cannot write output {path}: its folder is not writable")
        return
    if kind is not None:
        raise VaeEdgeError(f"output {path} is {kind}: it is left alone; give a file name (or - for standard output)")
    if not path.parent.exists():
        raise VaeEdgeError(f"the folder of output {path} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise VaeEdgeError(f"cannot write output {path}: its folder is not writable")


def write_output(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """write(tmp_path) then rename over `path`: no half-written output if anything fails.
    `-` goes to standard output, and a character device or FIFO is written through (its bytes
    produced first, in a temporary file), never replaced."""
    path = Path(path)
    check_output_path(path)
    through = is_stdout(path) or existing_kind(path) == "through"
    where = Path(tempfile.gettempdir()) if through else (path.parent or Path("."))
    try:
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{path.name if not is_stdout(path) else 'stdout'}.",
                                   suffix=".tmp")
    except OSError as e:
        raise VaeEdgeError(f"cannot write output {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(tmp)
        if through:
            _copy_through(tmp, path)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except OSError as e:
        raise VaeEdgeError(f"cannot write output {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _copy_through(tmp: str, path: Path) -> None:
    with open(tmp, "rb") as src:
        if is_stdout(path):
            out = sys.stdout.buffer
            for chunk in iter(lambda: src.read(CHUNK), b""):
                out.write(chunk)
            out.flush()
            return
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))  # no O_CREAT, no O_TRUNC: never a new file
        try:
            if not (stat.S_ISCHR(os.fstat(fd).st_mode) or stat.S_ISFIFO(os.fstat(fd).st_mode)):
                raise VaeEdgeError(f"output {path} changed while it was written: left alone")
            with os.fdopen(fd, "wb", closefd=False) as f:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    f.write(chunk)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# One writer per bundle
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(folder: str | os.PathLike, what: str = "update") -> Iterator[None]:
    """Hold an exclusive advisory lock on a bundle folder (flock on the folder itself: no lock
    file that would become part of the bundle). A second writer fails at once in one line.
    Re-entrant within one process."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; writers are not serialized there
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise VaeEdgeError(f"cannot open {folder} to {what} it: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise VaeEdgeError(f"{folder} is being changed by another vae-edge command: wait for it to finish, "
                                   f"then run this {what} again") from None
            raise
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_HELD: set[str] = set()


def _finite(obj):
    """JSON has no Infinity or NaN (browsers refuse them): such floats are written as null (a
    decoder PSNR of a variant whose outputs equal fp32's is infinite)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json_atomic(path: Path, obj: dict) -> None:
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode())
