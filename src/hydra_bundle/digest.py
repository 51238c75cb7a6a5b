"""Streaming hashing and copying: every byte is hashed once, on the way through, in bounded memory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import DigestMismatch, DiskSpaceError

CHUNK = 1 << 20  # 1 MiB: large enough that hashlib releases the GIL and syscalls stay cheap


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Digest and size of a file, read in CHUNK pieces."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant whitespace, UTF-8. What we sign and digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hex_of(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ValueError(f"unsupported digest {digest!r}")
    return hexpart


class HashingWriter:
    """Writes chunks to a file while hashing them; ``finish`` checks digest and size."""

    def __init__(self, fileobj: BinaryIO, hasher: Any | None = None, size: int = 0):
        self.f = fileobj
        self.h = hasher or hashlib.sha256()
        self.size = size

    def write(self, chunk: bytes | memoryview) -> None:
        self.h.update(chunk)
        self.f.write(chunk)
        self.size += len(chunk)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        for c in chunks:
            self.write(c)

    @property
    def digest(self) -> str:
        return "sha256:" + self.h.hexdigest()

    def check(self, what: str, expected_digest: str | None, expected_size: int | None) -> str:
        if expected_size is not None and self.size != expected_size:
            raise DigestMismatch(what, f"{expected_size} bytes", f"{self.size} bytes")
        if expected_digest is not None and self.digest != expected_digest:
            raise DigestMismatch(what, expected_digest, self.digest)
        return self.digest


WRITEBACK_STEP = 8 << 20  # start writeback every 8 MiB, so the final fsync of a big file has little left to wait for
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    """libc's sync_file_range(2) (Linux; Python's os module does not expose it). None elsewhere."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    import ctypes

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


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def blob_path(root: Path, digest: str) -> Path:
    """Where an OCI-layout-style directory (``root/blobs/sha256/<hex>``) keeps ``digest``."""
    return root / "blobs" / "sha256" / hex_of(digest)


class BlobDir:
    """A ``blobs/sha256/<hex>`` directory (the builder's cache and the agent's store both are one)."""

    blobs: Path

    def path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size
