"""Tar writing for bundles: deterministic PAX/ustar headers (uid/gid 0, mode 0644, fixed mtime), file data
copied with ``copy_file_range``/``sendfile`` where it can, so big blobs never pass through Python.

Headers come from :meth:`tarfile.TarInfo.tobuf` (public API); reading is :mod:`.tarreader`'s job.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from typing import BinaryIO

from ..digest import CHUNK

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
Piece = tuple["str | os.PathLike[str]", int, int]  # file, offset, length


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, mtime, 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti


class TarWriter:
    """Append-only tar stream writer. Tracks ``offset`` so callers can account bytes per output."""

    def __init__(self, out: BinaryIO, mtime: int):
        self.out = out
        self.mtime = mtime
        self.offset = 0
        self.progress: Callable[[int], None] | None = None

    @staticmethod
    def header_size(name: str, size: int) -> int:
        return len(_tarinfo(name, size, 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    @staticmethod
    def member_size(name: str, size: int) -> int:
        """Bytes a member takes in the archive: header(s) + data padded to a block."""
        return TarWriter.header_size(name, size) + size + (-size % BLOCK)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.offset += len(data)

    def _header(self, name: str, size: int) -> None:
        self._write(_tarinfo(name, size, self.mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        if size % BLOCK:
            self._write(b"\0" * (BLOCK - size % BLOCK))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self._write(data)
        self._pad(len(data))
        if self.progress:
            self.progress(len(data))

    def add_pieces(self, name: str, pieces: list[Piece], size: int, hashers: list[hashlib._Hash] | None = None) -> int:
        """Add a member whose ``size`` bytes are the concatenation of ``pieces`` (file, offset, length): a blob
        that lies in the parts of an earlier split bundle. Every hasher in ``hashers`` sees the bytes (the caller
        checks digests); with none the copy stays in the kernel. Returns the offset of the member's data."""
        assert sum(n for _, _, n in pieces) == size, "pieces do not add up to the member size"
        self._header(name, size)
        self.out.flush()
        start = self.offset
        through = list(hashers or [])
        for path, offset, n in pieces:
            with open(path, "rb") as src:
                if not through:
                    copy_range(src.fileno(), self.out.fileno(), offset, n, self.progress)
                else:
                    _copy_hashed(src.fileno(), self.out.fileno(), offset, n, str(path), self.progress, through)
        self.offset += size
        self._pad(size)
        return start

    def reserve(self, name: str, size: int) -> int:
        """Write a member's header and leave its data as a hole to be filled later (``build --direct``).
        Returns the file offset where the data goes. Needs a seekable output."""
        self._header(name, size)
        start = self.offset
        self.out.seek(size, os.SEEK_CUR)
        self.offset += size
        self._pad(size)
        return start

    def close(self) -> None:
        """End-of-archive: two zero blocks, padded to a full record like GNU tar and tarfile."""
        end = self.offset + 2 * BLOCK
        self._write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self.out.flush()


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int,
               progress: Callable[[int], None] | None = None) -> None:
    """Copy ``size`` bytes from ``src_fd`` at ``offset`` to ``dst_fd``'s current position, in the kernel."""
    remaining = size
    pos = offset
    step = 64 << 20
    while remaining:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(step, remaining), pos)
        except OSError:
            n = 0
        if n <= 0:
            try:
                n = os.sendfile(dst_fd, src_fd, pos, min(step, remaining))
            except OSError:
                n = 0
        if n <= 0:  # fall back to plain reads (e.g. dst is a pipe on an old kernel)
            data = os.pread(src_fd, min(CHUNK, remaining), pos)
            if not data:
                raise OSError(f"source ended {remaining} bytes early")
            n = os.write(dst_fd, data)
        pos += n
        remaining -= n
        if progress:
            progress(n)


def _copy_hashed(src_fd: int, dst_fd: int, offset: int, size: int, what: str,
                 progress: Callable[[int], None] | None, hashers: list[hashlib._Hash]) -> None:
    """Copy through Python, feeding every hasher (one read and one hash of each byte per hasher)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos, remaining = offset, size
    while remaining:
        n = os.preadv(src_fd, [view[: min(CHUNK, remaining)]], pos)
        if n <= 0:
            raise OSError(f"{what}: ended {remaining} bytes early")
        for h in hashers:
            h.update(view[:n])
        written = 0
        while written < n:
            written += os.write(dst_fd, view[written:n])
        pos += n
        remaining -= n
        if progress:
            progress(n)
