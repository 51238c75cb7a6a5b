"""Kubernetes manifests and plain files (URL or local path), each a one-layer OCI artifact."""

from __future__ import annotations

from ...bundle import index as ix
from ...digest import hex_of
from ...oci import mediatypes as mt
from ...spec.model import FileSpec, ManifestSpec
from ..context import BlobTask, Context, Descriptor, Finished
from .common import artifact, empty_config, http_task, local_task, ref_annotations


class FileSource:
    """A single file (Kubernetes manifests or an arbitrary file) as a one-layer OCI artifact."""

    def __init__(self, spec: FileSpec | ManifestSpec, ctx: Context, kind: str):
        self.spec = spec
        self.kind = kind
        self.label = f"{kind[:-1]} {spec.name}"
        self.ref_name = f"hydra-bundle/{kind}/{spec.name}:{ctx.tag}"
        pin = spec.sha256
        if pin is None and (locked := ctx.locked_pin(kind, spec.name)) is not None:
            pin = hex_of(locked)
        layer_type = mt.YAML_LAYER if kind == "manifests" else mt.FILE_LAYER
        if spec.url:
            self.task = http_task(ctx, spec.url, pin, getattr(spec, "size", None), layer_type, self.label)
        else:
            assert spec.path
            self.task = local_task(ctx, ctx.base_dir / spec.path, pin, layer_type, self.label)

    def resolve(self, ctx: Context) -> list[BlobTask]:
        return [self.task]

    def pin(self, ctx: Context) -> None:
        assert self.task.result
        ctx.record_pin(self.kind, self.spec.name, digest=self.task.result[0])

    def finish(self, ctx: Context) -> Finished:
        assert self.task.result
        digest, size = self.task.result
        ctx.record_pin(self.kind, self.spec.name, digest=digest)
        fname = self.spec.filename
        layer = Descriptor(self.task.media_type, digest, size, {mt.ANN_TITLE: fname})
        config = empty_config(ctx)
        art = mt.MANIFESTS_ARTIFACT if self.kind == "manifests" else mt.FILE_ARTIFACT
        top, _ = artifact(ctx, art, config, [layer], {mt.ANN_NAME: self.spec.name})
        top.annotations = ref_annotations(self.ref_name, self.kind[:-1])
        types = {top.digest: mt.OCI_MANIFEST, config.digest: mt.OCI_EMPTY, digest: self.task.media_type}
        cls = ix.Manifests if self.kind == "manifests" else ix.File
        comp = cls(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                   name=self.spec.name, source=self.spec.url or str(self.spec.path),
                   file=ix.FileRef(path=fname, digest=digest, size=size))
        return Finished(self.kind, comp, top, types)
