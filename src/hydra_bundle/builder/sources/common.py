"""What every source uses: blob tasks for registry, HTTP and local content, artifact manifests for content we
wrap, platform matching."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import httpx

from ...digest import canonical_json
from ...disk import BlobSink
from ...errors import NotFound, SourceError, UsageError
from ...httpio import Body, HttpxBody, download, download_into, fast_get
from ...oci import mediatypes as mt
from ...oci.reference import Reference
from ..context import BlobTask, Context, Descriptor, Progress


def platform_of(p: dict[str, Any] | None) -> str:
    if not p:
        return "unknown/unknown"
    s = f"{p.get('os', 'unknown')}/{p.get('architecture', 'unknown')}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")


def platform_matches(have: str, want: str) -> bool:
    """``linux/arm64`` matches ``linux/arm64/v8``; a wanted variant must match exactly."""
    h, w = have.split("/"), want.split("/")
    if h[:2] != w[:2]:
        return False
    return len(w) < 3 or (len(h) >= 3 and h[2] == w[2]) or (w[2] == "v8" and len(h) == 2 and h[1] == "arm64")


RESUME_ATTEMPTS = 5


def registry_task(ctx: Context, ref: Reference, digest: str, size: int, media_type: str) -> BlobTask:
    def fetch(progress: Progress) -> tuple[str, int]:
        ctx.client.fetch_blob(ref.registry, ref.repository, digest, size, ctx.cache.path(digest), progress,
                              RESUME_ATTEMPTS, ctx.log)
        return digest, size

    def fetch_into(sink: BlobSink, progress: Progress, stop: threading.Event) -> tuple[str, int]:
        return download_into(ctx.client.blob_opener(ref.registry, ref.repository, digest), f"{ref.name}@{digest}",
                             sink, size, digest, progress, ctx.client.fail, RESUME_ATTEMPTS, stop, ctx.log)

    return BlobTask(digest, digest, size, media_type, f"{ref.name}@{digest[:19]}", fetch, fetch_into=fetch_into)


def http_task(ctx: Context, url: str, sha256: str | None, size: int | None, media_type: str,
               label: str) -> BlobTask:
    digest = f"sha256:{sha256}" if sha256 else None

    def open_response(headers: dict[str, str]) -> Body:
        fast = fast_get(ctx.url(url), headers, ctx.verify_tls)
        if fast is not None:
            return fast
        try:
            return HttpxBody(ctx.http.send(ctx.http.build_request("GET", ctx.url(url), headers=headers), stream=True))
        except httpx.HTTPError as e:
            raise SourceError(f"{url}: {e}") from None

    def fail(resp: httpx.Response, what: str) -> Exception:
        if resp.status_code == 404:
            return NotFound(f"{what}: HTTP 404 not found")
        return SourceError(f"{what}: HTTP {resp.status_code}")

    def fetch(progress: Progress) -> tuple[str, int]:
        partial = ctx.cache.path(digest).with_suffix(".partial") if digest else \
            ctx.cache.tmp / (hashlib.sha256(url.encode()).hexdigest() + ".partial")
        if digest is None:
            # unpinned: a partial left by an earlier run may be of different content; resume only within this run
            partial.unlink(missing_ok=True)
        got, n = download(open_response, url, partial, size, digest, progress, fail, RESUME_ATTEMPTS, ctx.log)
        ctx.cache.adopt(partial, got)
        return got, n

    def fetch_into(sink: BlobSink, progress: Progress, stop: threading.Event) -> tuple[str, int]:
        assert digest is not None and size is not None
        return download_into(open_response, url, sink, size, digest, progress, fail, RESUME_ATTEMPTS, stop,
                             ctx.log)

    # only content pinned by digest and size can have its place in the bundle before it is downloaded
    direct = fetch_into if digest is not None and size is not None else None
    return BlobTask(digest or url, digest, size, media_type, label, fetch, fetch_into=direct)


def local_task(ctx: Context, path: Path, sha256: str | None, media_type: str, label: str) -> BlobTask:
    digest = f"sha256:{sha256}" if sha256 else None
    if not path.is_file():
        raise UsageError(f"{label}: local file {path} does not exist")

    def fetch(progress: Progress) -> tuple[str, int]:
        return ctx.cache.put_file(path, digest, str(path), progress)

    return BlobTask(digest or f"file://{path.resolve()}", digest, path.stat().st_size, media_type, label, fetch)


def artifact(ctx: Context, artifact_type: str | None, config: Descriptor, layers: list[Descriptor],
              annotations: dict[str, str]) -> tuple[Descriptor, bytes]:
    m: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if artifact_type:
        m["artifactType"] = artifact_type
    m["config"] = config.json()
    m["layers"] = [layer.json() for layer in layers]
    if annotations:
        m["annotations"] = annotations
    data = canonical_json(m)
    digest = ctx.cache.put_bytes(data)
    return Descriptor(mt.OCI_MANIFEST, digest, len(data)), data


def empty_config(ctx: Context) -> Descriptor:
    ctx.cache.put_bytes(mt.EMPTY_JSON, mt.EMPTY_DIGEST)
    return Descriptor(mt.OCI_EMPTY, mt.EMPTY_DIGEST, len(mt.EMPTY_JSON))


def ref_annotations(ref_name: str, kind: str) -> dict[str, str]:
    return {mt.ANN_REF_NAME: ref_name, mt.ANN_KIND: kind}
