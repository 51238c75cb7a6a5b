"""Resumable, verifying HTTP downloads to a file (used for registry blobs and plain HTTP sources alike)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx

from .digest import CHUNK
from .errors import DigestMismatch, SourceError

Progress = Callable[[int], None]


def download(open_response: Callable[[dict[str, str]], httpx.Response], what: str, partial: Path,
             size: int | None, digest: str | None, progress: Progress | None = None,
             fail: Callable[[httpx.Response, str], Exception] | None = None) -> tuple[str, int]:
    """Stream a response body into ``partial``, resuming with Range from what is already there.

    The bytes already on disk are hashed first, so the digest covers the whole file and each downloaded
    byte is hashed exactly once. Returns (digest, size); the caller renames ``partial`` into place.
    On a digest mismatch the partial file is removed (it can never become right)."""
    h = hashlib.sha256()
    have = 0
    if partial.exists():
        have = partial.stat().st_size
        if size is not None and have > size:
            partial.unlink()
            have = 0
        else:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with open(partial, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    h.update(view[:n])
    if size is not None and have == size and size > 0:
        resp = None
    else:
        resp = open_response({"Range": f"bytes={have}-"} if have else {})
    try:
        if resp is not None:
            if resp.status_code == 200 and have:
                h, have = hashlib.sha256(), 0  # server ignored Range: start over
            elif resp.status_code == 416 and have:
                resp.close()
                resp = None
            elif resp.status_code not in (200, 206):
                raise (fail(resp, what) if fail else SourceError(f"{what}: HTTP {resp.status_code}"))
            if progress and have:
                progress(have)
        with open(partial, "ab" if have else "wb") as out:
            if resp is not None:
                for chunk in resp.iter_raw():  # httpcore-sized chunks: no re-chunking copies
                    h.update(chunk)
                    out.write(chunk)
                    have += len(chunk)
                    if size is not None and have > size:
                        out.close()
                        partial.unlink(missing_ok=True)
                        raise SourceError(f"{what}: more data than the declared {size} bytes")
                    if progress:
                        progress(len(chunk))
            out.flush()  # no fsync: the cache is a cache (see builder/cache.py)
    except httpx.HTTPError as e:
        raise SourceError(f"{what}: download interrupted after {have} bytes ({e}); run again to resume") from None
    finally:
        if resp is not None:
            resp.close()
    got = "sha256:" + h.hexdigest()
    if size is not None and have != size:
        raise SourceError(f"{what}: got {have} of {size} bytes; run again to resume")
    if digest and got != digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(what, digest, got)
    return got, have
