"""The content store: one OCI image layout under ``state_dir/store`` shared by every bundle (dedup by digest).

``blobs/sha256/<hex>`` only ever holds complete, verified, durable content: a blob is written to ``tmp/`` (same
filesystem), hashed while written, checked against the signed index, made durable and only then renamed into
place. Durability is batched (:meth:`Store.batch`, one per ingest step or part): the blobs of a batch wait in
``tmp/`` under temp names until one ``syncfs`` (or, without it, an fsync of each file) has put their bytes on
disk, then all are renamed and ``blobs/`` is fsynced once — before the journal records the step. After a crash
at any point a file under a digest name therefore has all its bytes, so "the store has it" (:meth:`has`, which
ingest, publish and the servers trust) stays true; unsynced blobs were only ever in ``tmp/``, emptied on start.

``index.json`` lists what is published (regenerated atomically by the publish step) with
``org.opencontainers.image.ref.name`` annotations, so ``skopeo copy oci:STORE:REF`` works on it too.

``.reserve`` (1 MiB) keeps room for the journal on the same filesystem: when a write finds the disk full (another
process filled it after the space check) — a blob, ``index.json`` or the journal itself (SQLITE_FULL, released by
the step runner) — the reserve is released so the failure can still be recorded; it is made again before the
next step (:meth:`Store.keep_reserve`), and a step does not start while it cannot be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle.reader import BlobMember
from ..digest import canonical_json, hex_of, sha256_file
from ..disk import WRITEBACK_STEP, disk_full, ensure_free_space, fsync_dir, human_bytes, start_writeback, sync_files
from ..errors import DiskSpaceError
from ..oci import mediatypes as mt
from ..oci.layout import OCI_LAYOUT, BlobDir

RESERVE_BYTES = 1 << 20
BATCH_BYTES = 1 << 30  # a batch is made durable after this many bytes too: bounds what a kill -9 makes us read again


@dataclass
class _Batch:
    """Written and verified, not yet durable: temp files waiting for their rename, assembly files written to."""

    renames: list[tuple[Path, Path]] = field(default_factory=list)   # (tmp, dest)
    written: set[Path] = field(default_factory=set)                  # every file to make durable
    digests: set[str] = field(default_factory=set)
    nbytes: int = 0


class Store(BlobDir):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "tmp"
        # blobs of split bundles being reassembled, one directory per bundle: one bundle's bad part never touches
        # bytes another bundle has verified (kept on restart)
        self.assembling = self.root / "assembling"
        self.assembling.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # the open batch of each thread
        self.reserve = self.root / ".reserve"
        self.make_reserve()
        if not (self.root / "oci-layout").exists():
            self._atomic_write(self.root / "oci-layout", OCI_LAYOUT)
        if not (self.root / "index.json").exists():
            self.write_index([])

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Blobs put in this thread inside the block are made durable together, at the end (and every
        BATCH_BYTES): one sync instead of one fsync per blob. Also on an exception: whatever was verified before
        it is kept (renamed in; the caller removes it if it refuses the bundle), as if each were put alone."""
        if getattr(self._local, "batch", None) is not None:  # nested: the outer batch commits
            yield
            return
        self._local.batch = _Batch()
        try:
            try:
                yield
            except BaseException:
                with contextlib.suppress(Exception):  # the original error is the one to report
                    self._commit()
                raise
            self._commit()
        finally:
            self._discard()  # what could not be committed (nothing, after a commit that succeeded)
            self._local.batch = None

    def _current(self) -> _Batch | None:
        b: _Batch | None = getattr(self._local, "batch", None)
        return b

    def _commit(self) -> None:
        """Sync the batch's bytes, then rename its blobs into place, then fsync ``blobs/`` (in that order: a
        digest name is never durable before its bytes are)."""
        b = self._current()
        if b is None or not b.written:
            return
        try:
            sync_files(self.root, sorted(b.written))
            for i, (tmp, dest) in enumerate(b.renames):
                try:
                    os.replace(tmp, dest)
                except BaseException:
                    del b.renames[:i]  # those are in place; the rest are discarded
                    raise
            b.renames.clear()
            fsync_dir(self.blobs)
        except BaseException as e:
            self._disk_full(e)
            raise
        b.written.clear()
        b.digests.clear()
        b.nbytes = 0

    def _discard(self) -> None:
        b = self._current()
        if b is not None:
            for tmp, _ in b.renames:
                tmp.unlink(missing_ok=True)
            b.renames.clear()
            b.written.clear()
            b.digests.clear()

    def pending(self, digest: str) -> bool:
        """Written in this thread's open batch, not yet renamed in (counts as present for this ingest)."""
        b = self._current()
        return b is not None and digest in b.digests

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes (run at start, before any ingest)."""
        n = 0
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
            n += 1
        return n

    def ensure_space(self, needed: int, reserve: int, what: str) -> None:
        self.make_reserve()
        ensure_free_space(self.root, needed, what, reserve=reserve)

    def make_reserve(self) -> None:
        if self.reserve.exists():
            return
        tmp = self.tmp / ".reserve"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve)
        except OSError:  # no room yet: try again before the next ingest
            tmp.unlink(missing_ok=True)

    def keep_reserve(self, what: str) -> None:
        """Before a step: make the reserve again if a disk-full failure released it. When it cannot be made the
        disk is full: raise DiskSpaceError (the step fails up front, with room left to record why)."""
        self.make_reserve()
        if not self.reserve.exists():
            free = shutil.disk_usage(self.root).free
            raise DiskSpaceError(f"disk full while {what}: {human_bytes(free)} free on {self.root}, less than the "
                                 f"{human_bytes(RESERVE_BYTES)} kept for the journal")

    def release_reserve(self) -> None:
        self.reserve.unlink(missing_ok=True)  # room for the journal to record a disk-full failure

    def _disk_full(self, e: BaseException) -> None:
        if disk_full(e):
            self.release_reserve()

    def put_member(self, member: BlobMember, progress: Callable[[int], None] | None = None) -> bool:
        """Copy one tar member in, hashing it once on the way. Returns False when the store already has it
        (the member's bytes are then not read at all). Raises VerifyError on a digest mismatch; the temp
        file is removed and nothing appears under the digest name."""
        dest = self.path(member.digest)
        if self.has(member.digest, member.size) or self.pending(member.digest):
            return False
        tmp = self.tmp / f"{hex_of(member.digest)}.{os.getpid()}.{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb", buffering=0) as out:
                pos = kicked = 0

                def sink(chunk: memoryview) -> None:
                    nonlocal pos, kicked
                    while chunk:
                        n = out.write(chunk)
                        chunk = chunk[n:]
                        pos += n
                    if pos - kicked >= WRITEBACK_STEP:
                        # start writeback now so the disk works while we read and hash the next chunks;
                        # the batch's sync then has little left to wait for
                        start_writeback(fd, kicked, pos - kicked)
                        kicked = pos

                member.read_into(sink, progress)
                if pos - kicked:
                    start_writeback(fd, kicked, pos - kicked)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            self._disk_full(e)
            raise
        self._add(member.digest, member.size, tmp, dest)
        return True

    def _add(self, digest: str, size: int, path: Path, dest: Path | None) -> None:
        """Record a written file in the open batch (or, outside one, make it durable and rename it now)."""
        b = self._current()
        alone = b is None
        if b is None:
            b = self._local.batch = _Batch()
        b.written.add(path)
        b.nbytes += size
        if dest is not None:
            b.renames.append((path, dest))
            b.digests.add(digest)
        if not alone and b.nbytes < BATCH_BYTES:
            return
        try:
            self._commit()
        finally:
            if alone:
                self._discard()
                self._local.batch = None

    def assembly_path(self, bundle: str, blob: str) -> Path:
        return self.assembling / hex_of(bundle) / hex_of(blob)

    def put_segment(self, bundle: str, blob: str, offset: int, member: BlobMember,
                    progress: Callable[[int], None] | None = None) -> bool:
        """Write a verified-while-streaming segment at its offset into ``assembling/<bundle hex>/<blob hex>``, the
        file that becomes the blob (renamed, no second copy) once every segment is there and the whole digest
        matches. A segment whose digest does not match leaves its region to be rewritten by a good copy of its
        part; the region belongs to this bundle only."""
        if self.has(blob):
            return False
        path = self.assembly_path(bundle, blob)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            pos = offset

            def sink(chunk: memoryview) -> None:
                nonlocal pos
                while chunk:
                    n = os.pwrite(fd, chunk, pos)
                    chunk = chunk[n:]
                    pos += n

            member.read_into(sink, progress)
            start_writeback(fd, offset, member.size)
        finally:
            os.close(fd)
        self._add(blob, member.size, path, None)  # durable with the part's batch, before the part is journaled
        return True

    def finish_assembly(self, bundle: str, blob: str, size: int,
                        progress: Callable[[int], None] | None = None) -> bool:
        """Every segment is in: hash the whole file once and rename it into ``blobs/`` when it matches. False (the
        file removed) when it does not match or is missing: the parts holding its segments must be read again."""
        src = self.assembly_path(bundle, blob)
        try:
            got, n = sha256_file(src)
        except FileNotFoundError:
            return False
        if progress:
            progress(n)
        if got != blob or n != size:
            src.unlink(missing_ok=True)
            return False
        os.replace(src, self.path(blob))
        fsync_dir(self.blobs)
        return True

    def drop_assembly(self, bundle: str) -> None:
        """A bundle's assembly area, once its set is complete (or it was refused)."""
        shutil.rmtree(self.assembling / hex_of(bundle), ignore_errors=True)

    def remove(self, digests: Iterable[str]) -> None:
        for d in digests:
            self.path(d).unlink(missing_ok=True)
        fsync_dir(self.blobs)

    def write_index(self, manifests: list[dict[str, Any]]) -> None:
        self._atomic_write(self.root / "index.json",
                           canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}))

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = self.tmp / f"{path.name}.{os.getpid()}.{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            self._disk_full(e)
            raise
        fsync_dir(path.parent)

    def disk_usage(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.blobs) if e.is_file())
