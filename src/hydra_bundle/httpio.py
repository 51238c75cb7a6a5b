"""Resumable, verifying HTTP downloads to a file (used for registry blobs and plain HTTP sources alike).

Bodies of big blobs are read through :func:`fast_get` when it can take the request: the stdlib's
``http.client`` reads straight from the socket into our 1 MiB buffer (``readinto``), where httpx/h11 hand over
64 KiB ``bytes`` objects with a copy and several Python frames each; for a multi-GB image that roughly halves the
CPU a build spends per byte (bench/hashing.py). httpx stays in charge of everything else — the token dance,
error bodies, proxies — and takes over whenever the fast path declines (401, an error status, a proxy, a
connection problem), so behaviour never depends on which path served the bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from . import __version__
from .digest import CHUNK
from .disk import BlobSink
from .errors import BodyInterrupted, Cancelled, DigestMismatch, SourceError
from .retry import delay

Progress = Callable[[int], None]
FAST_BUFFER = 1 << 20


class Body:
    """A response whose body is being streamed: status, chunks (valid until the next one), close."""

    status_code: int
    response: httpx.Response | None = None   # for error messages (the httpx path only)

    def chunks(self) -> Iterator[bytes | memoryview]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class HttpxBody(Body):
    def __init__(self, resp: httpx.Response):
        self.response = resp
        self.status_code = resp.status_code

    def chunks(self) -> Iterator[bytes | memoryview]:
        assert self.response is not None
        try:
            yield from self.response.iter_raw()  # httpcore-sized chunks: no re-chunking copies
        except httpx.HTTPError as e:
            raise BodyInterrupted(str(e)) from None

    def close(self) -> None:
        assert self.response is not None
        self.response.close()


class FastBody(Body):
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp
        self.status_code = resp.status

    def chunks(self) -> Iterator[memoryview]:
        view = memoryview(bytearray(FAST_BUFFER))
        expected, got = self.resp.length, 0  # Content-Length (None: chunked or until close)
        try:
            while n := self.resp.readinto(view):
                got += n
                yield view[:n]
        except (OSError, http.client.HTTPException) as e:
            raise BodyInterrupted(str(e) or type(e).__name__) from None
        if expected is not None and got < expected:  # readinto reports a cut-off body as a short read
            raise BodyInterrupted(f"connection closed after {got} of {expected} bytes")

    def close(self) -> None:
        self.conn.close()


_SSL: dict[str, ssl.SSLContext] = {}
_SSL_LOCK = threading.Lock()


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """The same trust httpx would use for ``verify`` (certifi, or the given CA file, or none), built once."""
    key = repr(verify)
    with _SSL_LOCK:
        if key not in _SSL:
            if isinstance(verify, str):  # a CA bundle file or directory (--tls-ca)
                _SSL[key] = (ssl.create_default_context(cafile=verify) if os.path.isfile(verify)
                             else ssl.create_default_context(capath=verify))
            else:
                _SSL[key] = httpx.create_ssl_context(verify=verify)
        return _SSL[key]


def tls_verify(verify: bool | str) -> bool | ssl.SSLContext:
    """What to give httpx as ``verify``: a CA path becomes an SSL context (httpx deprecates path strings)."""
    return _ssl_context(verify) if isinstance(verify, str) else verify


def fast_get(url: str, headers: dict[str, str], verify: bool | str = True, timeout: float = 60.0,
             redirects: int = 5) -> FastBody | None:
    """GET ``url`` with http.client when that is safe: no proxy configured for it, a 200/206 answer (after
    following redirects; credentials are not sent to another host). Returns None to let httpx do the request."""
    for _ in range(redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        proxies = urllib.request.getproxies()
        if (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.hostname):
            return None
        try:
            if parts.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    parts.hostname, parts.port, timeout=timeout, context=_ssl_context(verify))
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            path = parts.path or "/"
            conn.request("GET", f"{path}?{parts.query}" if parts.query else path,
                         headers={"User-Agent": f"hydra-bundle/{__version__}", **headers})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError):
            return None  # httpx makes the same attempt and reports it properly
        if resp.status in (200, 206):
            return FastBody(conn, resp)
        location = resp.getheader("Location")
        conn.close()
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return None
        nxt = urljoin(url, location)
        if urlsplit(nxt).netloc != parts.netloc:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = nxt
    return None


def download(open_response: Callable[[dict[str, str]], Body], what: str, partial: Path,
             size: int | None, digest: str | None, progress: Progress | None = None,
             fail: Callable[[httpx.Response, str], Exception] | None = None, attempts: int = 1,
             log: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Stream a response body into ``partial``, resuming with Range from what is already there.

    The bytes a partial file from an earlier run holds are hashed first, so the digest covers the whole file;
    within a run a cut-off body is resumed (up to ``attempts`` requests, as long as each one makes progress)
    with the running hash kept, so each byte is hashed exactly once. Returns (digest, size); the caller renames
    ``partial`` into place. On a digest mismatch the partial file is removed (it can never become right)."""
    h = hashlib.sha256()
    have = reported = 0
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

    def advance() -> None:  # progress counts each byte of the blob once, across resumes and restarts
        nonlocal reported
        if progress and have > reported:
            progress(have - reported)
            reported = have

    advance()
    for attempt in range(1, attempts + 1):
        if size is not None and have == size and size > 0:
            break
        before = have
        resp = open_response({"Range": f"bytes={have}-"} if have else {})
        try:
            if resp.status_code == 200 and have:
                h, have = hashlib.sha256(), 0  # server ignored Range: start over
            elif resp.status_code == 416 and have:
                break
            elif resp.status_code not in (200, 206):
                raise _failure(resp, what, fail)
            with open(partial, "ab" if have else "wb") as out:
                for chunk in resp.chunks():
                    h.update(chunk)
                    out.write(chunk)
                    have += len(chunk)
                    if size is not None and have > size:
                        out.close()
                        partial.unlink(missing_ok=True)
                        raise SourceError(f"{what}: more data than the declared {size} bytes")
                    advance()
                out.flush()  # no fsync: the cache is a cache (see builder/cache.py)
        except BodyInterrupted as e:
            if attempt == attempts or have <= before:
                raise SourceError(f"{what}: download interrupted after {have} bytes ({e}); run again to resume"
                                  ) from None
            if log:
                log(f"warning: {what}: interrupted after {have} bytes; resuming")
            continue
        finally:
            resp.close()
        if size is None or have >= size or have <= before:
            break  # complete, or a short body that made no progress (reported below)
    got = "sha256:" + h.hexdigest()
    if size is not None and have != size:
        raise SourceError(f"{what}: got {have} of {size} bytes; run again to resume")
    if digest and got != digest:
        partial.unlink(missing_ok=True)
        raise DigestMismatch(what, digest, got)
    return got, have


def download_into(open_response: Callable[[dict[str, str]], Body], what: str, sink: BlobSink,
                  size: int, digest: str, progress: Progress | None = None,
                  fail: Callable[[httpx.Response, str], Exception] | None = None, attempts: int = 5,
                  stop: threading.Event | None = None, log: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Stream a body of known size and digest into ``sink`` (the holes reserved for it in a bundle or its parts).

    The default build's path: the bytes are written once, to their final place. A cut-off download resumes
    with Range from where it stopped, keeping the running hash, so each byte is still hashed exactly once;
    the caller owns the file and discards it on any error (a digest mismatch cannot become right)."""
    h = hashlib.sha256()
    have = high = 0
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
                    h, have = hashlib.sha256(), 0  # server ignored Range: start over
                    sink.reset()
                elif resp.status_code not in (200, 206):
                    raise _failure(resp, what, fail)
                for chunk in resp.chunks():
                    if stop is not None and stop.is_set():
                        raise Cancelled(what)
                    n = len(chunk)
                    if have + n > size:
                        raise SourceError(f"{what}: more data than the declared {size} bytes")
                    h.update(chunk)
                    sink.write(chunk if isinstance(chunk, memoryview) else memoryview(chunk))
                    have += n
                    if progress and have > high:
                        progress(have - high)
                        high = have
            except BodyInterrupted as e:
                if log:
                    log(f"warning: {what}: interrupted after {have} bytes ({e}); resuming")
            finally:
                resp.close()
        if have == size:
            break
        stalled = stalled + 1 if have == before else 0
        if stalled >= attempts:
            raise SourceError(f"{what}: got {have} of {size} bytes after {attempts} attempts without progress")
        if stalled and (stop or threading.Event()).wait(delay(stalled)):  # back off, stay cancellable
            raise Cancelled(what)
    got = "sha256:" + h.hexdigest()
    if got != digest:
        raise DigestMismatch(what, digest, got)
    return got, have


def _failure(body: Body, what: str, fail: Callable[[httpx.Response, str], Exception] | None) -> Exception:
    if fail is not None and body.response is not None:
        return fail(body.response, what)
    return SourceError(f"{what}: HTTP {body.status_code}")
