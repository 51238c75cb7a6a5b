"""The content store: one OCI image layout under ``state_dir/store`` shared by every bundle (dedup by digest).

``blobs/sha256/<hex>`` only ever holds complete, verified content: a blob is written to ``tmp/`` (same
filesystem), hashed while written, fsynced, checked against the signed index and only then renamed into
place. ``index.json`` lists what is published (regenerated atomically by the publish step) with
``org.opencontainers.image.ref.name`` annotations, so ``skopeo copy oci:STORE:REF`` works on it too.

``.reserve`` (1 MiB) keeps room for the journal on the same filesystem: when a write finds the disk full (another
process filled it after the space check) — a blob, ``index.json`` or the journal itself (SQLITE_FULL, released by
the step runner) — the reserve is released so the failure can still be recorded; it is made again before the
next step (:meth:`Store.keep_reserve`), and a step does not start while it cannot be.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..bundle.reader import BlobMember
from ..digest import canonical_json, hex_of, sha256_file
from ..disk import WRITEBACK_STEP, disk_full, ensure_free_space, fsync_dir, human_bytes, start_writeback
from ..errors import DiskSpaceError
from ..oci import mediatypes as mt
from ..oci.layout import OCI_LAYOUT, BlobDir

RESERVE_BYTES = 1 << 20


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
        self.reserve = self.root / ".reserve"
        self.make_reserve()
        if not (self.root / "oci-layout").exists():
            self._atomic_write(self.root / "oci-layout", OCI_LAYOUT)
        if not (self.root / "index.json").exists():
            self.write_index([])

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
        if self.has(member.digest, member.size):
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
                        # the fsync below then has little left to wait for
                        start_writeback(fd, kicked, pos - kicked)
                        kicked = pos

                member.read_into(sink, progress)
                os.fsync(fd)
            os.replace(tmp, dest)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            self._disk_full(e)
            raise
        return True

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
            os.fsync(fd)
        finally:
            os.close(fd)
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

    def sync(self) -> None:
        """Make the renames of a batch of blobs durable."""
        fsync_dir(self.blobs)

    def remove(self, digests: Iterable[str]) -> None:
        for d in digests:
            self.path(d).unlink(missing_ok=True)
        self.sync()

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
