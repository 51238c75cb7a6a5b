"""What the sources of a build share (:class:`Context`) and what they hand back: blobs to fetch
(:class:`BlobTask`) and finished components (:class:`Finished`).

Each source (image, chart, manifest/file, model) resolves in two steps: ``resolve`` fetches small
metadata (manifests, chart indexes) and returns the blobs still to fetch; ``finish`` runs after all
blobs are cached and returns the component record and its top-level descriptor (artifact manifests for
HTTP content are made here, once digests and sizes are known).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..disk import BlobSink
from ..errors import UsageError
from ..oci.client import RegistryClient
from .cache import BlobCache

Progress = Callable[[int], None]
FetchInto = Callable[[BlobSink, Progress, threading.Event], tuple[str, int]]


@dataclass
class Context:
    client: RegistryClient
    http: httpx.Client
    cache: BlobCache
    base_dir: Path
    platforms: list[str]
    tag: str                                 # tag used for our own artifacts (bundle version)
    locked: dict[str, Any] | None = None     # lock entries when building --locked
    lock_out: dict[str, Any] = field(default_factory=dict)  # what `lock` records
    log: Callable[[str], None] = lambda _msg: None
    url_mirrors: dict[str, str] = field(default_factory=dict)  # URL prefix → replacement prefix
    verify_tls: bool | str = True                            # as the http client (the fast body path uses it)

    def locked_pin(self, section: str, *keys: str) -> str | None:
        """What the lock file pins for ``section`` → ``keys`` (None when not building ``--locked``); refuses
        content the lock file does not know."""
        if self.locked is None:
            return None
        node: Any = self.locked.get(section) or {}
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is None:
            raise UsageError(f"{section}: {'/'.join(keys)} is not in the lock file; run `hydra-bundle lock`")
        return str(node)

    def record_pin(self, section: str, *keys: str, digest: str) -> None:
        """Remember what ``lock`` writes for ``section`` → ``keys``."""
        node = self.lock_out.setdefault(section, {})
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = digest

    def url(self, url: str) -> str:
        """Where to actually fetch ``url`` from (``--mirror https://huggingface.co=https://hf-mirror.corp``)."""
        for src in sorted(self.url_mirrors, key=len, reverse=True):
            if url.startswith(src):
                return self.url_mirrors[src] + url[len(src):]
        return url


@dataclass
class BlobTask:
    """A blob to bring into the cache. ``key`` dedups tasks (digest when known, else the URL)."""

    key: str
    digest: str | None
    size: int | None
    media_type: str
    label: str
    fetch: Callable[[Progress], tuple[str, int]]
    result: tuple[str, int] | None = None
    # write the (digest- and size-pinned) blob straight into its holes in the bundle or parts being written:
    # (sink, progress, stop) → (digest, size). None: this source goes through the cache.
    fetch_into: FetchInto | None = None


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass
class Finished:
    kind: str                      # images | charts | manifests | files | models
    component: Any                 # a bundle.index component model
    top: Descriptor                # goes into the layout's index.json
    blob_types: dict[str, str]     # digest → media type for every blob of the component
    # a second index.json entry under the same name, after `top`, for readers that skip `top`'s media type
    fallback: Descriptor | None = None
