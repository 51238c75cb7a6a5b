"""Resumable, verifying HTTP downloads to a file (used for registry blobs and plain HTTP sources alike)."""

from __future__ import annotations

import hashlib
import os
import threading
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


WRITEBACK_STEP = 8 << 20  # start writeback every 8 MiB so a final fsync has little left to wait for
_SYNC_RANGE = hasattr(os, "sync_file_range")


class Cancelled(Exception):
    """A sibling download failed; this one stopped early (the caller reports the first failure)."""


def download_into(open_response: Callable[[dict[str, str]], httpx.Response], what: str, fd: int, offset: int,
                  size: int, digest: str, progress: Progress | None = None,
                  fail: Callable[[httpx.Response, str], Exception] | None = None, attempts: int = 5,
                  stop: threading.Event | None = None, log: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Stream a body of known size and digest into ``fd`` at ``offset`` (a hole reserved for it in a bundle).

    Used by ``build --direct``: the bytes are written once, to their final place. A cut-off download resumes
    with Range from where it stopped, keeping the running hash, so each byte is still hashed exactly once;
    the caller owns the file and discards it on any error (a digest mismatch cannot become right)."""
    h = hashlib.sha256()
    have = high = kicked = 0
    stalled = 0
    while True:
        before = have
        try:
            resp = open_response({"Range": f"bytes={have}-"} if have else {})
        except SourceError:
            resp = None
            if stalled + 1 >= attempts:
                raise
        if resp is not None:
            try:
                if resp.status_code == 200 and have:
                    h, have, kicked = hashlib.sha256(), 0, 0  # server ignored Range: start over
                elif resp.status_code not in (200, 206):
                    raise (fail(resp, what) if fail else SourceError(f"{what}: HTTP {resp.status_code}"))
                for chunk in resp.iter_raw():  # httpcore-sized chunks: no re-chunking copies
                    if stop is not None and stop.is_set():
                        raise Cancelled(what)
                    n = len(chunk)
                    if have + n > size:
                        raise SourceError(f"{what}: more data than the declared {size} bytes")
                    h.update(chunk)
                    view = memoryview(chunk)
                    done = 0
                    while done < n:
                        done += os.pwrite(fd, view[done:], offset + have + done)
                    have += n
                    if progress and have > high:
                        progress(have - high)
                        high = have
                    if _SYNC_RANGE and have - kicked >= WRITEBACK_STEP:
                        os.sync_file_range(fd, offset + kicked, have - kicked, os.SYNC_FILE_RANGE_WRITE)
                        kicked = have
            except httpx.HTTPError as e:
                if log:
                    log(f"warning: {what}: interrupted after {have} bytes ({e}); resuming")
            finally:
                resp.close()
        if have == size:
            break
        stalled = stalled + 1 if have == before else 0
        if stalled >= attempts:
            raise SourceError(f"{what}: got {have} of {size} bytes after {attempts} attempts without progress")
    got = "sha256:" + h.hexdigest()
    if got != digest:
        raise DigestMismatch(what, digest, got)
    return got, have
