"""One source per kind of content (like Hauler's getters): images, charts, plain files, models.

The rest of the builder never asks where bytes came from: each source yields BlobTasks and, once the
cache holds them, a finished component.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import yaml

from ..bundle import index as ix
from ..digest import canonical_json, hex_of
from ..errors import DigestMismatch, NotFound, SourceError, UsageError
from ..httpio import Body, HttpxBody, download, download_into, fast_get
from ..oci import mediatypes as mt
from ..oci.client import Manifest
from ..oci.reference import Reference
from ..spec.model import ChartSpec, FileSpec, ImageSpec, ManifestSpec, ModelSpec
from .plan import BlobTask, Context, Descriptor, Finished, Progress

MAX_CHART_INDEX = 64 << 20


# ---------------------------------------------------------------- helpers

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


def _registry_task(ctx: Context, ref: Reference, digest: str, size: int, media_type: str) -> BlobTask:
    def fetch(progress: Progress) -> tuple[str, int]:
        ctx.client.fetch_blob(ref.registry, ref.repository, digest, size, ctx.cache.path(digest), progress,
                              RESUME_ATTEMPTS, ctx.log)
        return digest, size

    def fetch_into(fd: int, offset: int, progress: Progress, stop: threading.Event) -> tuple[str, int]:
        return download_into(ctx.client.blob_opener(ref.registry, ref.repository, digest), f"{ref.name}@{digest}",
                             fd, offset, size, digest, progress, ctx.client.fail, RESUME_ATTEMPTS, stop, ctx.log)

    return BlobTask(digest, digest, size, media_type, f"{ref.name}@{digest[:19]}", fetch, fetch_into=fetch_into)


def _http_task(ctx: Context, url: str, sha256: str | None, size: int | None, media_type: str,
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
        import hashlib

        partial = ctx.cache.path(digest).with_suffix(".partial") if digest else \
            ctx.cache.tmp / (hashlib.sha256(url.encode()).hexdigest() + ".partial")
        if digest is None:
            # unpinned: a partial left by an earlier run may be of different content; resume only within this run
            partial.unlink(missing_ok=True)
        got, n = download(open_response, url, partial, size, digest, progress, fail, RESUME_ATTEMPTS, ctx.log)
        ctx.cache.adopt(partial, got)
        return got, n

    def fetch_into(fd: int, offset: int, progress: Progress, stop: threading.Event) -> tuple[str, int]:
        assert digest is not None and size is not None
        return download_into(open_response, url, fd, offset, size, digest, progress, fail, RESUME_ATTEMPTS, stop,
                             ctx.log)

    # only content pinned by digest and size can have its place in the bundle before it is downloaded
    direct = fetch_into if digest is not None and size is not None else None
    return BlobTask(digest or url, digest, size, media_type, label, fetch, fetch_into=direct)


def _local_task(ctx: Context, path: Path, sha256: str | None, media_type: str, label: str) -> BlobTask:
    digest = f"sha256:{sha256}" if sha256 else None
    if not path.is_file():
        raise UsageError(f"{label}: local file {path} does not exist")

    def fetch(progress: Progress) -> tuple[str, int]:
        return ctx.cache.put_file(path, digest, str(path), progress)

    return BlobTask(digest or f"file://{path.resolve()}", digest, path.stat().st_size, media_type, label, fetch)


def _artifact(ctx: Context, artifact_type: str | None, config: Descriptor, layers: list[Descriptor],
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


def _empty_config(ctx: Context) -> Descriptor:
    ctx.cache.put_bytes(mt.EMPTY_JSON, mt.EMPTY_DIGEST)
    return Descriptor(mt.OCI_EMPTY, mt.EMPTY_DIGEST, len(mt.EMPTY_JSON))


def _ref_ann(ref_name: str, kind: str) -> dict[str, str]:
    return {mt.ANN_REF_NAME: ref_name, mt.ANN_KIND: kind}


# ---------------------------------------------------------------- images

class ImageSource:
    kind = "images"

    def __init__(self, spec: ImageSpec, ctx: Context):
        self.spec = spec
        self.ref = spec.reference
        self.platforms = spec.platforms or ctx.platforms
        self.manifests: list[Manifest] = []
        self.blob_types: dict[str, str] = {}
        self.kept: list[str] = []
        self.kept_desc: list[dict[str, Any]] = []  # descriptors of the kept platform manifests
        self.top: Manifest | None = None

    def _pinned(self, ctx: Context) -> str | None:
        if self.ref.digest:
            return self.ref.digest
        if ctx.locked is not None:
            entry = ctx.locked.get("images", {}).get(self.spec.ref)
            if entry is None:
                raise UsageError(f"images: {self.spec.ref} is not in the lock file; run `hydra-bundle lock`")
            return str(entry)
        return None

    def resolve(self, ctx: Context) -> list[BlobTask]:
        pinned = self._pinned(ctx)
        top = ctx.client.get_manifest(self.ref, pinned)
        if ctx.locked is not None and not self.ref.digest:
            current = ctx.client.head_manifest(self.ref)
            if current and current != pinned:
                raise UsageError(f"images: {self.spec.ref} drifted: the lock pins {pinned}, the tag now points at "
                                 f"{current}; run `hydra-bundle lock` to accept the change")
        ctx.lock_out.setdefault("images", {})[self.spec.ref] = top.digest
        self.top = top
        self._keep(ctx, top)
        tasks: list[BlobTask] = []
        if top.is_index:
            children = []
            for d in top.json().get("manifests", []):
                plat = platform_of(d.get("platform"))
                if any(platform_matches(plat, w) for w in self.platforms) and d.get("mediaType") in mt.MANIFEST_TYPES:
                    children.append((plat, d))
            if not children:
                avail = sorted({platform_of(d.get("platform")) for d in top.json().get("manifests", [])})
                raise SourceError(f"{self.spec.ref}: no manifest for {', '.join(self.platforms)} "
                                  f"(image has {', '.join(avail)})")
            for plat, d in children:
                child = ctx.client.get_manifest(self.ref, d["digest"])
                self._keep(ctx, child)
                self.kept.append(plat)
                self.kept_desc.append(d)
                tasks += self._image_blobs(ctx, child)
        elif top.media_type in mt.MANIFEST_TYPES:
            tasks += self._image_blobs(ctx, top)
            plat = self._config_platform(ctx, top)
            self.kept.append(plat)
            os_, _, arch = plat.partition("/")
            arch, _, variant = arch.partition("/")
            p = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
            self.kept_desc.append({"mediaType": top.media_type, "digest": top.digest, "size": len(top.data),
                                   "platform": p})
        else:
            raise SourceError(f"{self.spec.ref}: unsupported manifest type {top.media_type}")
        return tasks

    def _keep(self, ctx: Context, m: Manifest) -> None:
        ctx.cache.put_bytes(m.data, m.digest)
        self.manifests.append(m)
        self.blob_types[m.digest] = m.media_type

    def _image_blobs(self, ctx: Context, m: Manifest) -> list[BlobTask]:
        body = m.json()
        out = []
        for d in [body["config"], *body.get("layers", [])]:
            if "urls" in d and d.get("mediaType", "").endswith("foreign.diff.tar.gzip"):
                continue  # foreign (Windows) layers are not distributable
            self.blob_types.setdefault(d["digest"], d["mediaType"])
            out.append(_registry_task(ctx, self.ref, d["digest"], int(d["size"]), d["mediaType"]))
        return out

    def _config_platform(self, ctx: Context, m: Manifest) -> str:
        cfg = m.json()["config"]
        if cfg.get("size", 0) > 1 << 20:
            return "unknown/unknown"
        data = _fetch_small_blob(ctx, self.ref, cfg["digest"], int(cfg["size"]))
        try:
            c = json.loads(data)
        except ValueError:
            return "unknown/unknown"
        plat = platform_of(c if isinstance(c, dict) else None)
        if plat != "unknown/unknown" and not any(platform_matches(plat, w) for w in self.platforms):
            ctx.log(f"warning: {self.spec.ref} is a single-platform image for {plat}, not {', '.join(self.platforms)}")
        return plat

    def pin(self, ctx: Context) -> None:
        """Lock entry: recorded by resolve (the top manifest digest)."""

    def finish(self, ctx: Context) -> Finished:
        assert self.top is not None
        src = None
        ep = ctx.client.endpoint(self.ref.registry)
        if ep.host != self.ref.registry and not (self.ref.registry == "docker.io"
                                                  and ep.host == "registry-1.docker.io"):
            src = f"{ep.host}/{ep.repo(self.ref.repository)}"
        types = dict(self.blob_types)
        top = Descriptor(self.top.media_type, self.top.digest, len(self.top.data), _ref_ann(self.spec.ref, "image"))
        layout_digest = None
        if self.top.media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_LIST):
            # OCI tools (skopeo's oci-archive: transport) only look up OCI-typed entries of index.json. A small
            # OCI index listing the kept Docker manifests names the image for them; the original manifest (and
            # its digest, which is what the site serves and what signatures cover) stays as it is.
            wrapper = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": self.kept_desc})
            layout_digest = ctx.cache.put_bytes(wrapper)
            types[layout_digest] = mt.OCI_INDEX
            top = Descriptor(mt.OCI_INDEX, layout_digest, len(wrapper), _ref_ann(self.spec.ref, "image"))
        comp = ix.Image(ref=self.spec.ref, digest=self.top.digest, mediaType=self.top.media_type,
                        platforms=self.kept, blobs=list(types), source=src, layoutDigest=layout_digest)
        return Finished(self.kind, comp, top, types)


def _fetch_small_blob(ctx: Context, ref: Reference, digest: str, size: int) -> bytes:
    if not ctx.cache.has(digest, size):
        with ctx.cache.lock(digest):
            if not ctx.cache.has(digest, size):
                ctx.client.fetch_blob(ref.registry, ref.repository, digest, size, ctx.cache.path(digest))
    return ctx.cache.path(digest).read_bytes()


# ---------------------------------------------------------------- charts

def _chart_metadata(tgz: Path, what: str) -> dict[str, Any]:
    """Chart.yaml of a packaged chart (read from the stream; nothing else is unpacked)."""
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            for m in tf:
                parts = m.name.split("/")
                if len(parts) == 2 and parts[1] == "Chart.yaml" and m.isreg() and m.size < (1 << 20):
                    f = tf.extractfile(m)
                    assert f is not None
                    meta = yaml.safe_load(f.read())
                    if isinstance(meta, dict):
                        return meta
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError, gzip.BadGzipFile) as e:
        raise SourceError(f"{what}: not a packaged Helm chart ({e})") from None
    raise SourceError(f"{what}: no Chart.yaml in the package")


_HELM_META_KEYS = ("name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
                   "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
                   "dependencies", "type")


class ChartSource:
    kind = "charts"

    def __init__(self, spec: ChartSpec, ctx: Context):
        self.spec = spec
        self.tasks: list[BlobTask] = []
        self.manifest: Manifest | None = None
        self.url: str | None = None

    @property
    def ref_name(self) -> str:
        if self.spec.ref:
            return str(self.spec.oci_reference)
        return f"charts/{self.spec.name}:{self.spec.version}"

    def resolve(self, ctx: Context) -> list[BlobTask]:
        if self.spec.ref:
            return self._resolve_oci(ctx)
        return self._resolve_repo(ctx)

    def _resolve_oci(self, ctx: Context) -> list[BlobTask]:
        ref = self.spec.oci_reference
        pinned = None
        if ctx.locked is not None:
            pinned = ctx.locked.get("charts", {}).get(self.spec.name)
            if pinned is None:
                raise UsageError(f"charts: {self.spec.name} is not in the lock file; run `hydra-bundle lock`")
            current = ctx.client.head_manifest(ref)
            if current and current != pinned:
                raise UsageError(f"charts: {self.spec.name} {self.spec.version} drifted: the lock pins {pinned}, "
                                 f"{ref} now points at {current}; run `hydra-bundle lock` to accept the change")
        m = ctx.client.get_manifest(ref, pinned)
        body = m.json()
        if m.media_type != mt.OCI_MANIFEST or body.get("config", {}).get("mediaType") != mt.HELM_CONFIG:
            raise SourceError(f"charts: {self.spec.ref} {self.spec.version} is not a Helm chart artifact "
                              f"(config type {body.get('config', {}).get('mediaType')})")
        ctx.cache.put_bytes(m.data, m.digest)
        ctx.lock_out.setdefault("charts", {})[self.spec.name] = m.digest
        self.manifest = m
        for d in [body["config"], *body.get("layers", [])]:
            self.tasks.append(_registry_task(ctx, ref, d["digest"], int(d["size"]), d["mediaType"]))
        return self.tasks

    def _resolve_repo(self, ctx: Context) -> list[BlobTask]:
        assert self.spec.repo
        index_url = self.spec.repo.rstrip("/") + "/index.yaml"
        try:
            resp = ctx.http.get(ctx.url(index_url))
        except httpx.HTTPError as e:
            raise SourceError(f"charts: {index_url}: {e}") from None
        if resp.status_code != 200:
            raise SourceError(f"charts: {index_url}: HTTP {resp.status_code}")
        if len(resp.content) > MAX_CHART_INDEX:
            raise SourceError(f"charts: {index_url}: index larger than {MAX_CHART_INDEX} bytes")
        try:
            index = yaml.safe_load(resp.content)
            entries = index["entries"][self.spec.chart_name]
        except (yaml.YAMLError, KeyError, TypeError):
            raise NotFound(f"charts: {self.spec.chart_name} not in {index_url}") from None
        entry = next((e for e in entries if str(e.get("version")) == self.spec.version), None)
        if entry is None:
            versions = ", ".join(str(e.get("version")) for e in entries[:8])
            raise NotFound(f"charts: {self.spec.name} {self.spec.version} not in {index_url} (has {versions} …)")
        urls = entry.get("urls") or []
        if not urls:
            raise SourceError(f"charts: {self.spec.name} {self.spec.version}: index entry has no urls")
        self.url = urljoin(index_url, urls[0])
        pin = self.spec.sha256
        repo_digest = entry.get("digest")
        if ctx.locked is not None:
            locked = ctx.locked.get("charts", {}).get(self.spec.name)
            if locked is None:
                raise UsageError(f"charts: {self.spec.name} is not in the lock file; run `hydra-bundle lock`")
            pin = hex_of(locked)
        if pin and repo_digest and repo_digest != pin:
            raise DigestMismatch(f"charts: {self.spec.name} {self.spec.version} (repo index)", f"sha256:{pin}",
                                 f"sha256:{repo_digest}")
        self.tasks = [_http_task(ctx, self.url, pin or repo_digest, None, mt.HELM_CHART,
                                 f"chart {self.spec.name}-{self.spec.version}")]
        return self.tasks

    def pin(self, ctx: Context) -> None:
        if self.manifest is None and self.tasks[0].result:
            ctx.lock_out.setdefault("charts", {})[self.spec.name] = self.tasks[0].result[0]

    def finish(self, ctx: Context) -> Finished:
        if self.manifest is not None:
            m = self.manifest
            body = m.json()
            chart_layer = next((d for d in body.get("layers", []) if d["mediaType"] == mt.HELM_CHART), None)
            if chart_layer is None:
                raise SourceError(f"charts: {self.spec.ref}: artifact has no chart layer")
            types = {m.digest: m.media_type, **{d["digest"]: d["mediaType"] for d in
                                                [body["config"], *body.get("layers", [])]}}
            comp = ix.Chart(ref=self.ref_name, digest=m.digest, mediaType=m.media_type, blobs=list(types),
                            name=self.spec.name, version=self.spec.version, source=self.spec.ref or "",
                            chartDigest=chart_layer["digest"])
            top = Descriptor(m.media_type, m.digest, len(m.data), _ref_ann(self.ref_name, "chart"))
            return Finished(self.kind, comp, top, types)
        digest, size = self.tasks[0].result or (None, 0)
        assert digest
        ctx.lock_out.setdefault("charts", {})[self.spec.name] = digest
        meta = _chart_metadata(ctx.cache.path(digest), f"chart {self.spec.name}")
        if str(meta.get("version")) != self.spec.version or meta.get("name") != self.spec.chart_name:
            raise SourceError(f"charts: {self.url} holds {meta.get('name')} {meta.get('version')}, "
                              f"not {self.spec.chart_name} {self.spec.version}")
        cfg = canonical_json({k: meta[k] for k in _HELM_META_KEYS if k in meta})
        cfg_digest = ctx.cache.put_bytes(cfg)
        config = Descriptor(mt.HELM_CONFIG, cfg_digest, len(cfg))
        layer = Descriptor(mt.HELM_CHART, digest, size)
        top, _ = _artifact(ctx, None, config, [layer], {mt.ANN_TITLE: self.spec.chart_name,
                                                         mt.ANN_VERSION: self.spec.version})
        types = {top.digest: mt.OCI_MANIFEST, cfg_digest: mt.HELM_CONFIG, digest: mt.HELM_CHART}
        comp = ix.Chart(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                        name=self.spec.name, version=self.spec.version, source=self.spec.repo or "",
                        chartDigest=digest)
        top.annotations = _ref_ann(self.ref_name, "chart")
        return Finished(self.kind, comp, top, types)


# ---------------------------------------------------------------- manifests and files

class FileSource:
    """A single file (Kubernetes manifests or an arbitrary file) as a one-layer OCI artifact."""

    def __init__(self, spec: FileSpec | ManifestSpec, ctx: Context, kind: str):
        self.spec = spec
        self.kind = kind
        self.label = f"{kind[:-1]} {spec.name}"
        self.ref_name = f"hydra-bundle/{kind}/{spec.name}:{ctx.tag}"
        pin = spec.sha256
        if ctx.locked is not None and pin is None:
            locked = ctx.locked.get(kind, {}).get(spec.name)
            if locked is None:
                raise UsageError(f"{kind}: {spec.name} is not in the lock file; run `hydra-bundle lock`")
            pin = hex_of(locked)
        layer_type = mt.YAML_LAYER if kind == "manifests" else mt.FILE_LAYER
        if spec.url:
            self.task = _http_task(ctx, spec.url, pin, getattr(spec, "size", None), layer_type, self.label)
        else:
            assert spec.path
            self.task = _local_task(ctx, ctx.base_dir / spec.path, pin, layer_type, self.label)

    def resolve(self, ctx: Context) -> list[BlobTask]:
        return [self.task]

    def pin(self, ctx: Context) -> None:
        assert self.task.result
        ctx.lock_out.setdefault(self.kind, {})[self.spec.name] = self.task.result[0]

    def finish(self, ctx: Context) -> Finished:
        assert self.task.result
        digest, size = self.task.result
        ctx.lock_out.setdefault(self.kind, {})[self.spec.name] = digest
        fname = self.spec.filename
        layer = Descriptor(self.task.media_type, digest, size, {mt.ANN_TITLE: fname})
        config = _empty_config(ctx)
        art = mt.MANIFESTS_ARTIFACT if self.kind == "manifests" else mt.FILE_ARTIFACT
        top, _ = _artifact(ctx, art, config, [layer], {mt.ANN_NAME: self.spec.name})
        top.annotations = _ref_ann(self.ref_name, self.kind[:-1])
        types = {top.digest: mt.OCI_MANIFEST, config.digest: mt.OCI_EMPTY, digest: self.task.media_type}
        cls = ix.Manifests if self.kind == "manifests" else ix.File
        comp = cls(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                   name=self.spec.name, source=self.spec.url or str(self.spec.path),
                   file=ix.FileRef(path=fname, digest=digest, size=size))
        return Finished(self.kind, comp, top, types)


# ---------------------------------------------------------------- models

class ModelSource:
    """A model directory as a CNCF ModelPack-style artifact: one uncompressed layer per file, titled."""

    kind = "models"

    def __init__(self, spec: ModelSpec, ctx: Context):
        self.spec = spec
        self.ref_name = f"hydra-bundle/models/{spec.name}:{ctx.tag}"
        locked = (ctx.locked or {}).get("models", {}).get(spec.name, {}) if ctx.locked is not None else {}
        self.tasks: list[BlobTask] = []
        for f in spec.files:
            pin = f.sha256 or (hex_of(locked[f.path]) if f.path in locked else None)
            if ctx.locked is not None and pin is None:
                raise UsageError(f"models: {spec.name}/{f.path} is not in the lock file; run `hydra-bundle lock`")
            label = f"model {spec.name}/{f.path}"
            media = mt.model_layer_type(f.path)
            if spec.base_url:
                self.tasks.append(_http_task(ctx, urljoin(spec.base_url, f.path), pin, f.size, media, label))
            else:
                assert spec.path
                self.tasks.append(_local_task(ctx, ctx.base_dir / spec.path / f.path, pin, media, label))

    def resolve(self, ctx: Context) -> list[BlobTask]:
        return self.tasks

    def pin(self, ctx: Context) -> None:
        for f, t in zip(self.spec.files, self.tasks, strict=True):
            assert t.result
            ctx.lock_out.setdefault("models", {}).setdefault(self.spec.name, {})[f.path] = t.result[0]

    def finish(self, ctx: Context) -> Finished:
        layers, files = [], []
        for f, t in zip(self.spec.files, self.tasks, strict=True):
            assert t.result
            digest, size = t.result
            ctx.lock_out.setdefault("models", {}).setdefault(self.spec.name, {})[f.path] = digest
            layers.append(Descriptor(t.media_type, digest, size, {mt.ANN_TITLE: f.path}))
            files.append(ix.FileRef(path=f.path, digest=digest, size=size))
        cfg = canonical_json({
            "descriptor": {"name": self.spec.name, "sourceURL": self.spec.base_url or ""},
            "modelfs": {"type": "layers", "diffIds": [d.digest for d in layers]},
            "config": {},
        })
        cfg_digest = ctx.cache.put_bytes(cfg)
        config = Descriptor(mt.MODEL_CONFIG, cfg_digest, len(cfg))
        top, _ = _artifact(ctx, mt.MODEL_ARTIFACT, config, layers, {mt.ANN_NAME: self.spec.name})
        top.annotations = _ref_ann(self.ref_name, "model")
        types = {top.digest: mt.OCI_MANIFEST, cfg_digest: mt.MODEL_CONFIG}
        for d in layers:
            types.setdefault(d.digest, d.media_type)
        comp = ix.Model(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                        name=self.spec.name, source=self.spec.base_url or str(self.spec.path), files=files)
        return Finished(self.kind, comp, top, types)


Source = ImageSource | ChartSource | FileSource | ModelSource
SourceFactory = Callable[..., Source]
_ = io
