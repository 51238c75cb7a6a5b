"""Helm charts: OCI chart artifacts as pulled, charts from classic repositories wrapped the way ``helm push``
would."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import yaml

from ...bundle import index as ix
from ...digest import canonical_json, hex_of
from ...errors import DigestMismatch, NotFound, SourceError, UsageError
from ...oci import mediatypes as mt
from ...oci.client import Manifest
from ...spec.model import ChartSpec
from ..context import BlobTask, Context, Descriptor, Finished
from .common import artifact, http_task, ref_annotations, registry_task

MAX_CHART_INDEX = 64 << 20


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
        pinned = ctx.locked_pin("charts", self.spec.name)
        if pinned is not None:
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
        ctx.record_pin("charts", self.spec.name, digest=m.digest)
        self.manifest = m
        for d in [body["config"], *body.get("layers", [])]:
            self.tasks.append(registry_task(ctx, ref, d["digest"], int(d["size"]), d["mediaType"]))
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
        locked = ctx.locked_pin("charts", self.spec.name)
        if locked is not None:
            pin = hex_of(locked)
        if pin and repo_digest and repo_digest != pin:
            raise DigestMismatch(f"charts: {self.spec.name} {self.spec.version} (repo index)", f"sha256:{pin}",
                                 f"sha256:{repo_digest}")
        self.tasks = [http_task(ctx, self.url, pin or repo_digest, None, mt.HELM_CHART,
                                 f"chart {self.spec.name}-{self.spec.version}")]
        return self.tasks

    def pin(self, ctx: Context) -> None:
        if self.manifest is None and self.tasks[0].result:
            ctx.record_pin("charts", self.spec.name, digest=self.tasks[0].result[0])

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
            top = Descriptor(m.media_type, m.digest, len(m.data), ref_annotations(self.ref_name, "chart"))
            return Finished(self.kind, comp, top, types)
        digest, size = self.tasks[0].result or (None, 0)
        assert digest
        ctx.record_pin("charts", self.spec.name, digest=digest)
        meta = _chart_metadata(ctx.cache.path(digest), f"chart {self.spec.name}")
        if str(meta.get("version")) != self.spec.version or meta.get("name") != self.spec.chart_name:
            raise SourceError(f"charts: {self.url} holds {meta.get('name')} {meta.get('version')}, "
                              f"not {self.spec.chart_name} {self.spec.version}")
        cfg = canonical_json({k: meta[k] for k in _HELM_META_KEYS if k in meta})
        cfg_digest = ctx.cache.put_bytes(cfg)
        config = Descriptor(mt.HELM_CONFIG, cfg_digest, len(cfg))
        layer = Descriptor(mt.HELM_CHART, digest, size)
        top, _ = artifact(ctx, None, config, [layer], {mt.ANN_TITLE: self.spec.chart_name,
                                                         mt.ANN_VERSION: self.spec.version})
        types = {top.digest: mt.OCI_MANIFEST, cfg_digest: mt.HELM_CONFIG, digest: mt.HELM_CHART}
        comp = ix.Chart(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                        name=self.spec.name, version=self.spec.version, source=self.spec.repo or "",
                        chartDigest=digest)
        top.annotations = ref_annotations(self.ref_name, "chart")
        return Finished(self.kind, comp, top, types)
