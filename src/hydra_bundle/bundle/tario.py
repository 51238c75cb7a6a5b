"""Tar writing and strict, verifying tar reading for bundles.

The writer emits deterministic PAX/ustar headers (uid/gid 0, mode 0644, fixed mtime) and copies file
data with ``copy_file_range``/``sendfile`` where it can, so big blobs never pass through Python.
The reader takes member headers from :mod:`tarfile` but reads data itself from the file descriptor,
hashing every byte once while it goes to its destination.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from ..digest import CHUNK
from ..errors import VerifyError

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


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
        self.hasher: hashlib._Hash | None = None  # set: every byte written is hashed (data goes through Python)

    @staticmethod
    def header_size(name: str, size: int) -> int:
        return len(_tarinfo(name, size, 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    @staticmethod
    def member_size(name: str, size: int) -> int:
        """Bytes a member takes in the archive: header(s) + data padded to a block."""
        return TarWriter.header_size(name, size) + size + (-size % BLOCK)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
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

    def add_file(self, name: str, path: str | os.PathLike[str], size: int, offset: int = 0,
                 verify: str | None = None) -> None:
        """Add ``size`` bytes of ``path`` starting at ``offset`` (offset/size allow blob segments).

        With ``verify`` (a sha256 digest) the bytes are hashed on the way through and a mismatch raises
        DigestMismatch; otherwise they are copied in the kernel."""
        self._header(name, size)
        self.out.flush()
        with open(path, "rb") as src:
            if verify is None and self.hasher is None:
                copy_range(src.fileno(), self.out.fileno(), offset, size, self.progress)
            else:
                _copy_hashed(src.fileno(), self.out.fileno(), offset, size, verify, str(path), self.progress,
                             self.hasher)
        self.offset += size
        self._pad(size)

    def reserve(self, name: str, size: int) -> int:
        """Write a member's header and leave its data as a hole to be filled later (``build --direct``).
        Returns the file offset where the data goes. Needs a seekable output and no ``hasher``."""
        assert self.hasher is None, "a hashed stream cannot have holes"
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


def _copy_hashed(src_fd: int, dst_fd: int, offset: int, size: int, digest: str | None, what: str,
                 progress: Callable[[int], None] | None, out_hasher: hashlib._Hash | None = None) -> None:
    from ..errors import DigestMismatch

    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos, remaining = offset, size
    while remaining:
        n = os.preadv(src_fd, [view[: min(CHUNK, remaining)]], pos)
        if n <= 0:
            raise OSError(f"{what}: ended {remaining} bytes early")
        if digest is not None:
            h.update(view[:n])
        if out_hasher is not None:
            out_hasher.update(view[:n])
        written = 0
        while written < n:
            written += os.write(dst_fd, view[written:n])
        pos += n
        remaining -= n
        if progress:
            progress(n)
    got = "sha256:" + h.hexdigest()
    if digest is not None and got != digest:
        raise DigestMismatch(what, digest, got)


# ---------------------------------------------------------------- reading

PIPE_CHUNK = 4 << 20  # pipelined reads: large enough that the per-chunk thread hand-off costs < 1 %


def _pipelined(fd: int, e: Entry, h: hashlib._Hash, sink: Callable[[memoryview], object] | None,
               progress: Callable[[int], None] | None) -> None:
    bufs = [memoryview(bytearray(PIPE_CHUNK)), memoryview(bytearray(PIPE_CHUNK))]
    pos, remaining, i = e.offset, e.size, 0
    with ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool:
        pending: Future[None] | None = None
        try:
            while remaining:
                view = bufs[i & 1]  # the other buffer may still be hashed; this one is free (see below)
                n = os.preadv(fd, [view[: min(PIPE_CHUNK, remaining)]], pos)
                if n <= 0:
                    raise VerifyError("truncated", f"{e.name}: file ends inside the member")
                chunk = view[:n]
                if pending is not None:
                    pending.result()  # hash chunks in order; also frees the buffer read next
                pending = pool.submit(h.update, chunk)
                if sink is not None:
                    sink(chunk)
                pos += n
                remaining -= n
                i += 1
                if progress:
                    progress(n)
        finally:
            if pending is not None:
                pending.result()

@dataclass
class Entry:
    """A tar member as seen by the reader. ``offset`` is where its data starts in the file."""

    name: str
    size: int
    offset: int


_ALLOWED_TYPES = {tarfile.REGTYPE, tarfile.AREGTYPE}
# PAX records that only describe the member; anything else (comments, vendor keys) is data outside the index.
_PAX_KEYS = {"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "hdrcharset"}


def _check_header_block(blk: bytes, name: str) -> None:
    """tarfile skips the checksum field when it sums a header and stops reading it at its NUL, so bytes there
    could change unnoticed: require exactly what the writer emits (six octal digits, NUL, space)."""
    if len(blk) != BLOCK or blk[148:156] != b"%06o\0 " % tarfile.calc_chksums(blk)[0]:
        raise VerifyError("bad-member", f"{name}: tar header checksum field is not in canonical form")


def _check_pax_data(data: bytes, size: int, name: str) -> None:
    """The records of a PAX header must fill exactly its declared size (tarfile stops at the first record it
    cannot parse and ignores the rest), and the block padding after them must be zero."""
    pos = 0
    while pos < size:
        sp = data.find(b" ", pos, min(pos + 21, size))
        n = int(data[pos:sp]) if sp > pos and data[pos:sp].isdigit() else 0
        if n <= max(sp - pos + 1, 0) or pos + n > size or data[pos + n - 1] != 0x0A:
            raise VerifyError("bad-member", f"{name}: malformed PAX header record at byte {pos}")
        pos += n
    if data[size:].count(0) != len(data) - size:
        raise VerifyError("trailing-data", f"{name}: non-zero bytes after the PAX header records")


def check_member_name(name: str) -> None:
    """Refuse absolute paths, ``..``, empty or odd components, backslashes and NULs."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise VerifyError("bad-member", f"unsafe member name {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise VerifyError("bad-member", f"unsafe member name {name!r}")


class TarReader:
    """Iterates members of an uncompressed tar file strictly: regular files only, safe names, no duplicates.

    Headers are parsed by :mod:`tarfile` (PAX, GNU, ustar); data is read by :meth:`read_into` straight from
    the file descriptor. Anything that is not a plain regular file is refused with its kind named.
    """

    def __init__(self, f: BinaryIO, size: int | None = None):
        self.f = f
        self.fd = f.fileno()
        self.file_size = size if size is not None else os.fstat(self.fd).st_size
        try:
            self.tf = tarfile.TarFile(fileobj=f, mode="r")
        except tarfile.TarError as e:
            raise VerifyError("not-a-tar", f"not a tar archive ({e})") from None
        except Exception as e:  # tarfile parses untrusted bytes: any other failure is a malformed header too
            raise VerifyError("not-a-tar", f"not a tar archive ({type(e).__name__}: {e})") from None
        self.seen: set[str] = set()
        self._end = 0

    def __iter__(self) -> Iterator[Entry]:
        while True:
            try:
                ti = self.tf.next()
            except tarfile.TarError as e:
                raise VerifyError("truncated", f"tar structure broken or truncated ({e})") from None
            except Exception as e:  # e.g. an overflowing or undecodable field in a hostile header
                raise VerifyError("bad-member", f"unreadable tar header after byte {self._end} "
                                  f"({type(e).__name__}: {e})") from None
            if ti is None:
                break
            self.tf.members.clear()  # tarfile keeps every member otherwise: memory must not grow
            name = ti.name
            check_member_name(name)
            if ti.size < 0:
                raise VerifyError("bad-member", f"{name}: negative size {ti.size} in its tar header")
            self._check_headers(ti)
            if ti.type not in _ALLOWED_TYPES:
                kind = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char device",
                        tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo", tarfile.DIRTYPE: "directory"}
                raise VerifyError("bad-member", f"{name}: {kind.get(ti.type, repr(ti.type))} members are not allowed")
            if ti.sparse is not None:
                raise VerifyError("bad-member", f"{name}: sparse members are not allowed")
            extra = sorted(set(ti.pax_headers) - _PAX_KEYS) or sorted(self.tf.pax_headers)
            if extra:
                raise VerifyError("bad-member", f"{name}: unexpected PAX header record {extra[0]!r}")
            if name in self.seen:
                raise VerifyError("duplicate-member", f"{name} appears twice")
            self.seen.add(name)
            if ti.offset_data + ti.size > self.file_size:
                raise VerifyError("truncated", f"{name}: member data runs past the end of the file")
            self._end = ti.offset_data + ti.size + (-ti.size % BLOCK)
            yield Entry(name, ti.size, ti.offset_data)

    def _check_headers(self, ti: tarfile.TarInfo) -> None:
        """Every header byte must matter: canonical checksum fields, PAX (not GNU) extension headers whose
        records fill them exactly."""
        first = os.pread(self.fd, BLOCK, ti.offset)
        _check_header_block(first, ti.name)
        if ti.offset_data - ti.offset == BLOCK:
            return
        if first[156:157] != tarfile.XHDTYPE:
            raise VerifyError("bad-member", f"{ti.name}: {first[156:157]!r} extension headers are not allowed "
                              "(only PAX)")
        size = tarfile.nti(first[124:136])
        start, end = ti.offset + BLOCK, ti.offset_data - BLOCK
        if size < 0 or end - start != size + (-size % BLOCK):
            raise VerifyError("bad-member", f"{ti.name}: more than one extension header")
        _check_pax_data(os.pread(self.fd, end - start, start), size, ti.name)
        _check_header_block(os.pread(self.fd, BLOCK, end), ti.name)

    def check_trailer(self) -> None:
        """After the last member only zero padding may follow (no smuggled data)."""
        pos = self._end
        while pos < self.file_size:
            chunk = os.pread(self.fd, min(CHUNK, self.file_size - pos), pos)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                raise VerifyError("trailing-data", f"non-zero data after the end of the archive at byte {pos}")
            pos += len(chunk)
        if self.file_size - self._end < 2 * BLOCK:
            raise VerifyError("truncated", "archive ends without its end-of-archive marker")

    def read_bytes(self, e: Entry, limit: int) -> bytes:
        if e.size > limit:
            raise VerifyError("too-large", f"{e.name}: {e.size} bytes exceeds the limit of {limit}")
        data = os.pread(self.fd, e.size, e.offset)
        if len(data) != e.size:
            raise VerifyError("truncated", f"{e.name}: short read")
        self._check_padding(e)
        return data

    def _check_padding(self, e: Entry) -> None:
        """The bytes between a member's data and the next header must be zero (no data outside the digests)."""
        pad = -e.size % BLOCK
        if not pad:
            return
        data = os.pread(self.fd, pad, e.offset + e.size)
        if len(data) != pad:
            raise VerifyError("truncated", f"{e.name}: file ends inside the member's block padding")
        if data.count(0) != pad:
            raise VerifyError("trailing-data", f"{e.name}: non-zero bytes in the block padding after its data")

    def read_into(self, e: Entry, sink: Callable[[memoryview], object] | None,
                  progress: Callable[[int], None] | None = None) -> str:
        """Stream the member's data to ``sink`` (or nowhere), returning its sha256 digest.

        Big members are pipelined: chunk *i* is hashed on a helper thread while this thread hands it to the
        sink and reads chunk *i+1* (hashlib, reads and writes all release the GIL), so on two cores ingest
        runs at about the rate sha256 alone would. Two buffers, so memory stays bounded."""
        h = hashlib.sha256()
        if e.size <= PIPE_CHUNK:
            data = os.pread(self.fd, e.size, e.offset) if e.size else b""
            if len(data) != e.size:
                raise VerifyError("truncated", f"{e.name}: file ends inside the member")
            h.update(data)
            if sink is not None and data:
                sink(memoryview(data))
            if progress and data:
                progress(len(data))
        else:
            _pipelined(self.fd, e, h, sink, progress)
        self._check_padding(e)
        return "sha256:" + h.hexdigest()
