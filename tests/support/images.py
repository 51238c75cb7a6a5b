"""Synthetic, deterministic OCI/Docker images and Helm OCI charts, pushed with a tiny raw-httpx pusher.

Independent from `hydra_bundle.oci` on purpose: tests must not validate the client with itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .chartrepo import FIXED_CREATED, helm_config_json, read_chart_metadata

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

Auth = tuple[str, str] | None

LAYER_MTIME = 1704067200  # fixed tar mtime (2024-01-01T00:00:00Z)
CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    """Compact, key-sorted JSON bytes (stable manifest/config encoding)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def parse_platform(platform: str) -> dict[str, str]:
    """`os/arch[/variant]` → OCI platform dict."""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"bad platform {platform!r} (want os/arch[/variant])")
    out = {"architecture": parts[1], "os": parts[0]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


# -- layers ------------------------------------------------------------------------------------------
def _tar_chunks(size: int, seed: int) -> Iterator[bytes]:
    """An uncompressed tar holding one file of `size` pseudo-random bytes, in chunks."""
    info = tarfile.TarInfo(f"data/blob-{seed}.bin")
    info.size = size
    info.mtime = LAYER_MTIME
    info.mode = 0o644
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n
    yield b"\0" * ((-size) % 512) + b"\0" * 1024


def _gzip_layer(size: int, seed: int, level: int) -> Iterator[tuple[bytes, bytes]]:
    """Yield (uncompressed_chunk, compressed_chunk) pairs; gzip header mtime is 0."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    for chunk in _tar_chunks(size, seed):
        yield chunk, comp.compress(chunk)
    yield b"", comp.flush()


def make_layer(size: int, seed: int, level: int = 1) -> bytes:
    """A deterministic gzip'd tar with one file of ~`size` incompressible bytes (same bytes as push_random_layer)."""
    return b"".join(c for _, c in _gzip_layer(size, seed, level))


def diff_id(layer: bytes) -> str:
    """sha256 of the uncompressed tar inside a gzip layer."""
    d = zlib.decompressobj(47)
    h = hashlib.sha256()
    for i in range(0, len(layer), CHUNK):
        h.update(d.decompress(layer[i : i + CHUNK]))
    h.update(d.flush())
    return "sha256:" + h.hexdigest()


# -- images ------------------------------------------------------------------------------------------
@dataclass
class Image:
    """A complete in-memory image: config, layers and the manifest that references them."""

    config: bytes
    layers: list[bytes]
    manifest: bytes
    media_type: str
    digest: str
    platform: str = "linux/amd64"
    diff_ids: list[str] = field(default_factory=list)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256_digest(layer) for layer in self.layers]

    @property
    def size(self) -> int:
        """Manifest size in bytes."""
        return len(self.manifest)

    @property
    def total_size(self) -> int:
        """Manifest + config + layers."""
        return len(self.manifest) + len(self.config) + sum(len(x) for x in self.layers)

    def descriptor(self, with_platform: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if with_platform:
            d["platform"] = parse_platform(self.platform)
        return d


def make_config(platform: str, diff_ids: Sequence[str], docker: bool = False) -> bytes:
    """An image config JSON with architecture/os(/variant) and rootfs diff_ids."""
    cfg: dict[str, Any] = {
        **parse_platform(platform),
        "created": FIXED_CREATED,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": FIXED_CREATED, "created_by": "hydra-bundle tests"} for _ in diff_ids],
    }
    return canonical(cfg)


def make_manifest(
    config: bytes | tuple[str, int],
    layers: Sequence[bytes | tuple[str, int]],
    docker: bool = False,
    *,
    config_media_type: str | None = None,
    layer_media_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> bytes:
    """Manifest JSON; config/layers are bytes or `(digest, size)` pairs."""

    def desc(x: bytes | tuple[str, int], mt: str) -> dict[str, Any]:
        dg, size = (sha256_digest(x), len(x)) if isinstance(x, bytes) else x
        return {"mediaType": mt, "digest": dg, "size": size}

    cmt = config_media_type or (DOCKER_CONFIG if docker else OCI_CONFIG)
    lmt = layer_media_type or (DOCKER_LAYER if docker else OCI_LAYER_GZIP)
    m: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": desc(config, cmt),
        "layers": [desc(x, lmt) for x in layers],
    }
    if annotations:
        m["annotations"] = annotations
    return json.dumps(m, indent=3).encode()


def make_image(layer_sizes: Sequence[int], seed: int, platform: str = "linux/amd64", docker: bool = False) -> Image:
    """A deterministic image; layer i is `make_layer(layer_sizes[i], seed * 1000 + i)`."""
    layers = [make_layer(size, seed * 1000 + i) for i, size in enumerate(layer_sizes)]
    diff_ids = [diff_id(x) for x in layers]
    config = make_config(platform, diff_ids, docker)
    manifest = make_manifest(config, layers, docker)
    return Image(
        config=config,
        layers=layers,
        manifest=manifest,
        media_type=DOCKER_MANIFEST if docker else OCI_MANIFEST,
        digest=sha256_digest(manifest),
        platform=platform,
        diff_ids=diff_ids,
    )


def make_index(images: Sequence[Image], docker: bool = False) -> bytes:
    """An OCI image index (or Docker manifest list) over images, with platform fields."""
    idx = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST if docker else OCI_INDEX,
        "manifests": [img.descriptor() for img in images],
    }
    return json.dumps(idx, indent=3).encode()


# -- raw registry pushing -----------------------------------------------------------------------------
def _base(host: str) -> str:
    return host.rstrip("/") if host.startswith(("http://", "https://")) else f"http://{host}"


def _client(auth: Auth) -> httpx.Client:
    return httpx.Client(auth=auth, timeout=httpx.Timeout(120.0, connect=10.0))


def _check(r: httpx.Response, what: str) -> None:
    if r.is_error:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")


def blob_exists(host: str, repo: str, digest: str, auth: Auth = None) -> bool:
    """HEAD /v2/<repo>/blobs/<digest> is 200."""
    with _client(auth) as c:
        return c.head(f"{_base(host)}/v2/{repo}/blobs/{digest}").status_code == 200


def _upload(c: httpx.Client, host: str, repo: str, digest: str, size: int, content: bytes | Iterable[bytes]) -> None:
    base = _base(host)
    if c.head(f"{base}/v2/{repo}/blobs/{digest}").status_code == 200:
        return
    r = c.post(f"{base}/v2/{repo}/blobs/uploads/")
    _check(r, f"start upload {repo}@{digest}")
    location = httpx.URL(base).join(r.headers["location"])
    location = location.copy_merge_params({"digest": digest})
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    r = c.put(location, content=content, headers=headers)
    _check(r, f"PUT blob {repo}@{digest}")


def push_blob(host: str, repo: str, data: bytes, auth: Auth = None) -> str:
    """Monolithic blob upload (skipped if it exists); returns its digest."""
    digest = sha256_digest(data)
    with _client(auth) as c:
        _upload(c, host, repo, digest, len(data), data)
    return digest


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def push_blob_file(host: str, repo: str, path: Path | str, digest: str, auth: Auth = None) -> None:
    """Monolithic blob upload streamed from a file (never held in memory)."""
    path = Path(path)
    with _client(auth) as c:
        _upload(c, host, repo, digest, path.stat().st_size, _file_chunks(path))


def push_manifest(host: str, repo: str, ref: str, data: bytes, media_type: str, auth: Auth = None) -> str:
    """PUT a manifest/index under a tag or digest; returns its digest."""
    digest = sha256_digest(data)
    with _client(auth) as c:
        r = c.put(f"{_base(host)}/v2/{repo}/manifests/{ref}", content=data, headers={"Content-Type": media_type})
        _check(r, f"PUT manifest {repo}:{ref}")
    return digest


def push_image(host: str, repo: str, tag: str | None, image: Image, auth: Auth = None) -> str:
    """Push blobs then the manifest (under `tag`, or by digest when None); returns the manifest digest."""
    for blob in [image.config, *image.layers]:
        push_blob(host, repo, blob, auth)
    return push_manifest(host, repo, tag or image.digest, image.manifest, image.media_type, auth)


def push_index(
    host: str, repo: str, tag: str | None, index_bytes: bytes, images: Sequence[Image], auth: Auth = None
) -> str:
    """Push child images by digest, then the index under `tag`; returns the index digest."""
    for img in images:
        push_image(host, repo, None, img, auth)
    media_type = json.loads(index_bytes).get("mediaType", OCI_INDEX)
    return push_manifest(host, repo, tag or sha256_digest(index_bytes), index_bytes, media_type, auth)


def helm_manifest(tgz_bytes: bytes, created: str = FIXED_CREATED) -> tuple[bytes, bytes]:
    """(config, manifest) of a Helm OCI chart artifact as `helm push` builds them."""
    meta = read_chart_metadata(tgz_bytes)
    config = helm_config_json(meta)
    ann: dict[str, str] = {}
    chart_ann = meta.get("annotations") or {}
    ann.update({str(k): str(v) for k, v in chart_ann.items()})
    maintainers = ", ".join(
        f"{m['name']} ({m['email']})" if m.get("email") else str(m.get("name", ""))
        for m in meta.get("maintainers") or []
    )
    for key, value in {
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.description": meta.get("description"),
        "org.opencontainers.image.title": meta.get("name"),
        "org.opencontainers.image.version": meta.get("version"),
        "org.opencontainers.image.url": meta.get("home"),
        "org.opencontainers.image.source": (meta.get("sources") or [None])[0],
        "org.opencontainers.image.authors": maintainers,
    }.items():
        if value:
            ann[key] = str(value)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": HELM_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": HELM_CHART, "digest": sha256_digest(tgz_bytes), "size": len(tgz_bytes)}],
        "annotations": dict(sorted(ann.items())),
    }
    return config, json.dumps(manifest, separators=(",", ":")).encode()


def push_helm_chart(host: str, repo: str, version: str, tgz_bytes: bytes, auth: Auth = None) -> str:
    """Push a chart like `helm push` (tag = version with `+` → `_`); returns the manifest digest."""
    config, manifest = helm_manifest(tgz_bytes)
    push_blob(host, repo, config, auth)
    push_blob(host, repo, tgz_bytes, auth)
    return push_manifest(host, repo, version.replace("+", "_"), manifest, OCI_MANIFEST, auth)


# -- large images (streamed, one layer at a time on disk) --------------------------------------------
def write_random_layer(path: Path | str, size: int, seed: int, level: int = 1) -> tuple[str, int, str]:
    """Stream `make_layer(size, seed, level)` to a file; returns (digest, compressed size, diff_id)."""
    h_comp, h_raw, n = hashlib.sha256(), hashlib.sha256(), 0
    with open(path, "wb") as f:
        for raw, comp in _gzip_layer(size, seed, level):
            h_raw.update(raw)
            if comp:
                h_comp.update(comp)
                f.write(comp)
                n += len(comp)
    return "sha256:" + h_comp.hexdigest(), n, "sha256:" + h_raw.hexdigest()


def push_random_layer(
    host: str,
    repo: str,
    size: int,
    seed: int,
    auth: Auth = None,
    *,
    level: int = 1,
    tmp_dir: Path | str | None = None,
) -> tuple[str, int, str]:
    """Generate a layer via a temp file and upload it streaming; returns (digest, size, diff_id).

    Memory stays O(chunk); the bytes equal `make_layer(size, seed, level)`.
    """
    fd, name = tempfile.mkstemp(prefix="hydra-layer-", suffix=".tar.gz", dir=tmp_dir)
    os.close(fd)
    try:
        digest, n, did = write_random_layer(name, size, seed, level)
        push_blob_file(host, repo, name, digest, auth)
    finally:
        os.unlink(name)
    return digest, n, did


@dataclass
class PushedImage:
    """What `push_random_image` pushed (layers were never held in memory)."""

    digest: str
    manifest: bytes
    media_type: str
    config: bytes
    layers: list[tuple[str, int, str]]  # (digest, size, diff_id)

    @property
    def total_size(self) -> int:
        return len(self.manifest) + len(self.config) + sum(s for _, s, _ in self.layers)


def push_random_image(
    host: str,
    repo: str,
    tag: str | None,
    layer_sizes: Sequence[int],
    seed: int,
    platform: str = "linux/amd64",
    docker: bool = False,
    auth: Auth = None,
    *,
    workers: int = 2,
    tmp_dir: Path | str | None = None,
    level: int = 1,
) -> PushedImage:
    """A big image, layer by layer (up to `workers` layers generated at once); same digests as make_image."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        layers = list(
            pool.map(
                lambda i: push_random_layer(
                    host, repo, layer_sizes[i], seed * 1000 + i, auth, tmp_dir=tmp_dir, level=level
                ),
                range(len(layer_sizes)),
            )
        )
    config = make_config(platform, [d for _, _, d in layers], docker)
    push_blob(host, repo, config, auth)
    manifest = make_manifest(config, [(d, s) for d, s, _ in layers], docker)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    digest = push_manifest(host, repo, tag or sha256_digest(manifest), manifest, media_type, auth)
    return PushedImage(digest=digest, manifest=manifest, media_type=media_type, config=config, layers=layers)


def get_manifest(host: str, repo: str, ref: str, auth: Auth = None) -> httpx.Response:
    """GET a manifest accepting OCI and Docker media types (for assertions)."""
    with _client(auth) as c:
        return c.get(f"{_base(host)}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
