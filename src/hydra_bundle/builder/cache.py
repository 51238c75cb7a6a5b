"""Content-addressed blob cache (``~/.cache/hydra-bundle``): a rebuild downloads nothing it already has.

``blobs/sha256/<hex>`` holds verified content only; downloads land in ``<hex>.partial`` beside it and are
renamed into place after their digest checks out.

Cache writes are not fsynced (that would write every byte to disk twice per build: cache, then bundle).
A crash can therefore leave a damaged file under a digest name; the builder re-hashes every cache blob it
did not write in the current run while copying it into the bundle (``written`` tracks this run's blobs), so
each byte is still hashed once per build and a damaged cache entry is found, removed and reported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from ..digest import CHUNK
from ..errors import DigestMismatch
from ..oci.layout import BlobDir
from .ledger import Ledger


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hydra-bundle"


class BlobCache(BlobDir):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self.written: set[str] = set()  # digests written (and verified) by this process
        self._guard = threading.Lock()

    def lock(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest and got != digest:
            raise DigestMismatch("blob", digest, got)
        p = self.path(got)
        if got not in self.written:
            tmp = p.with_name(p.name + f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, p)
            self.written.add(got)
        return got

    def put_file(self, src: Path, digest: str | None, what: str,
                 progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Copy a local file in, hashing on the way; checks the pin when given. Returns (digest, size)."""
        h = hashlib.sha256()
        tmp = self.tmp / f"local.{os.getpid()}.{threading.get_ident()}"
        size = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as f, open(tmp, "wb") as out:
            while n := f.readinto(buf):
                h.update(view[:n])
                out.write(view[:n])
                size += n
                if progress:
                    progress(n)
        got = "sha256:" + h.hexdigest()
        if digest and got != digest:
            tmp.unlink()
            raise DigestMismatch(what, digest, got)
        os.replace(tmp, self.path(got))
        self.written.add(got)
        return got, size

    def adopt(self, tmp: Path, digest: str) -> None:
        os.replace(tmp, self.path(digest))
        self.written.add(digest)

    def discard(self, digest: str) -> None:
        """Remove a damaged entry (found while re-hashing it)."""
        self.path(digest).unlink(missing_ok=True)
        self.written.discard(digest)

    def prune(self) -> int:
        n = 0
        for p in (self.blobs, self.tmp):
            if p.exists():
                n += sum(f.stat().st_size for f in p.iterdir() if f.is_file())
        shutil.rmtree(self.root / "blobs", ignore_errors=True)
        Ledger(self.root).forget()  # the records of where earlier bundles hold blobs go with the cache
        shutil.rmtree(self.tmp, ignore_errors=True)
        return n
