"""Container images from registries: manifests and indexes byte for byte, filtered to the wanted platforms."""

from __future__ import annotations

import json
from typing import Any

from ...bundle import index as ix
from ...digest import canonical_json
from ...errors import SourceError, UsageError
from ...oci import mediatypes as mt
from ...oci.client import Manifest
from ...oci.reference import Reference
from ...spec.model import ImageSpec
from ..context import BlobTask, Context, Descriptor, Finished
from .common import platform_matches, platform_of, ref_annotations, registry_task


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

    def _wanted(self, plat: str) -> bool:
        return bool(self.spec.allPlatforms) or any(platform_matches(plat, w) for w in self.platforms)

    def _pinned(self, ctx: Context) -> str | None:
        return self.ref.digest or ctx.locked_pin("images", self.spec.ref)

    def resolve(self, ctx: Context) -> list[BlobTask]:
        pinned = self._pinned(ctx)
        top = ctx.client.get_manifest(self.ref, pinned)
        if ctx.locked is not None and not self.ref.digest:
            current = ctx.client.head_manifest(self.ref)
            if current and current != pinned:
                raise UsageError(f"images: {self.spec.ref} drifted: the lock pins {pinned}, the tag now points at "
                                 f"{current}; run `hydra-bundle lock` to accept the change")
        ctx.record_pin("images", self.spec.ref, digest=top.digest)
        self.top = top
        self._keep(ctx, top)
        tasks: list[BlobTask] = []
        if top.is_index:
            children = []
            for d in top.json().get("manifests", []):
                plat = platform_of(d.get("platform"))
                if self._wanted(plat) and d.get("mediaType") in mt.MANIFEST_TYPES:
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
            out.append(registry_task(ctx, self.ref, d["digest"], int(d["size"]), d["mediaType"]))
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
        if plat != "unknown/unknown" and not self._wanted(plat):
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
        top = Descriptor(self.top.media_type, self.top.digest, len(self.top.data),
                         ref_annotations(self.spec.ref, "image"))
        layout_digest = fallback = None
        if self.top.media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_LIST):
            # index.json names the upstream manifest itself first: readers that look up Docker-typed entries
            # (recent containers/image) copy it with its upstream digest. Older ones (skopeo 1.9, podman 4.3)
            # skip Docker-typed entries; for them a small OCI index listing the kept Docker manifests follows
            # under the same name (copying that with --all lands the small index's digest, see bundle-format.md).
            wrapper = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": self.kept_desc})
            layout_digest = ctx.cache.put_bytes(wrapper)
            types[layout_digest] = mt.OCI_INDEX
            fallback = Descriptor(mt.OCI_INDEX, layout_digest, len(wrapper), ref_annotations(self.spec.ref, "image"))
        comp = ix.Image(ref=self.spec.ref, digest=self.top.digest, mediaType=self.top.media_type,
                        platforms=self.kept, blobs=list(types), source=src, layoutDigest=layout_digest)
        return Finished(self.kind, comp, top, types, fallback)


def _fetch_small_blob(ctx: Context, ref: Reference, digest: str, size: int) -> bytes:
    if not ctx.cache.has(digest, size):
        with ctx.cache.lock(digest):
            if not ctx.cache.has(digest, size):
                ctx.client.fetch_blob(ref.registry, ref.repository, digest, size, ctx.cache.path(digest))
    return ctx.cache.path(digest).read_bytes()
