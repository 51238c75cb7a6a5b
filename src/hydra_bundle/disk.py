"""Files and free space: durable renames, up-front space checks, writeback kicks, telling a full disk apart."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from .errors import DiskSpaceError

WRITEBACK_STEP = 8 << 20  # start writeback every 8 MiB, so the final fsync of a big file has little left to wait for
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2) (Linux; Python's os module does not expose it). None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to disk now, without waiting (the GIL is released
    for the call). Writing a big file then keeps the disk busy while the next chunks are read and hashed, instead
    of leaving it all dirty in the page cache for one long fsync at the end. Best effort: errors are ignored."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux; not in Python's os module). None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


def sync_files(root: str | os.PathLike[str], paths: Iterable[Path]) -> None:
    """Make the bytes and names of ``paths`` (files on the filesystem holding ``root``) durable. More than one
    file: one ``syncfs`` of that filesystem (one journal commit and cache flush instead of one per file; it also
    flushes whatever else is dirty there, which is written back soon anyway). One file, no syncfs, or syncfs
    failing (it reports writeback errors since Linux 5.8): fsync each file and each directory holding one, so the
    error, if any, names the file."""
    paths = list(paths)
    if len(paths) > 1 and _syncfs is not None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d in sorted({p.parent for p in paths}):
        fsync_dir(d)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_free_space(path: str | os.PathLike[str], needed: int, what: str, reserve: int = 64 << 20) -> None:
    """Refuse a big write up front instead of failing half way (keeps a small reserve)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    if needed + reserve > free:
        raise DiskSpaceError(
            f"{what}: needs {human_bytes(needed)} but only {human_bytes(free)} free on {p} "
            f"(keeping {human_bytes(reserve)} in reserve)"
        )


def disk_full(e: BaseException) -> bool:
    """Is ``e`` "no space left": ENOSPC/EDQUOT from a file write, or SQLITE_FULL from a database?"""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False


def preallocate(path: Path, size: int) -> None:
    """Make ``path`` at least ``size`` bytes of allocated blocks (best effort: a full disk leaves it smaller)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < size:
                os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        pass


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Extent(NamedTuple):
    """``size`` bytes of an open output file at ``offset``: where (part of) a blob goes."""

    fd: int
    offset: int
    size: int


class BlobSink:
    """Where a downloaded blob's bytes go: one extent (its member in a tar) or several (the segments of a blob cut
    across the parts of a split bundle), written in order, with writeback kicked as it goes. With ``hash_extents``
    every extent's sha256 is computed on the way (segment digests, without reading the bytes back)."""

    def __init__(self, extents: list[Extent], hash_extents: bool = False):
        self.extents = extents
        self.hash_extents = hash_extents
        self.reset()

    def reset(self) -> None:
        """Start over (the server ignored a Range request and sends the body from its first byte)."""
        self._k = 0          # current extent
        self._at = 0         # bytes written into it
        self._kicked = 0
        self._hashers = [hashlib.sha256() for _ in self.extents] if self.hash_extents else []

    def write(self, data: memoryview) -> None:
        """Append ``data`` (sequentially: the next bytes of the blob)."""
        while len(data):
            if self._k >= len(self.extents):
                raise OSError("more data than the blob's extents hold")
            e = self.extents[self._k]
            n = min(len(data), e.size - self._at)
            chunk = data[:n]
            done = 0
            while done < n:
                done += os.pwrite(e.fd, chunk[done:], e.offset + self._at + done)
            if self._hashers:
                self._hashers[self._k].update(chunk)
            self._at += n
            data = data[n:]
            if self._at - self._kicked >= WRITEBACK_STEP or self._at == e.size:
                start_writeback(e.fd, e.offset + self._kicked, self._at - self._kicked)
                self._kicked = self._at
            if self._at == e.size:
                self._k, self._at, self._kicked = self._k + 1, 0, 0

    def digests(self) -> list[str]:
        """``sha256:<hex>`` of each extent (``hash_extents`` only)."""
        return ["sha256:" + h.hexdigest() for h in self._hashers]
