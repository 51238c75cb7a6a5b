"""Model weights (URL prefix or local directory) as a CNCF ModelPack-style artifact."""

from __future__ import annotations

from urllib.parse import urljoin

from ...bundle import index as ix
from ...digest import canonical_json, hex_of
from ...oci import mediatypes as mt
from ...spec.model import ModelSpec
from ..context import BlobTask, Context, Descriptor, Finished
from .common import artifact, http_task, local_task, ref_annotations


class ModelSource:
    """A model directory as a CNCF ModelPack-style artifact: one uncompressed layer per file, titled."""

    kind = "models"

    def __init__(self, spec: ModelSpec, ctx: Context):
        self.spec = spec
        self.ref_name = f"hydra-bundle/models/{spec.name}:{ctx.tag}"
        self.tasks: list[BlobTask] = []
        for f in spec.files:
            pin = f.sha256
            if pin is None and (locked := ctx.locked_pin("models", spec.name, f.path)) is not None:
                pin = hex_of(locked)
            label = f"model {spec.name}/{f.path}"
            media = mt.model_layer_type(f.path)
            if spec.base_url:
                self.tasks.append(http_task(ctx, urljoin(spec.base_url, f.path), pin, f.size, media, label))
            else:
                assert spec.path
                self.tasks.append(local_task(ctx, ctx.base_dir / spec.path / f.path, pin, media, label))

    def resolve(self, ctx: Context) -> list[BlobTask]:
        return self.tasks

    def pin(self, ctx: Context) -> None:
        for f, t in zip(self.spec.files, self.tasks, strict=True):
            assert t.result
            ctx.record_pin("models", self.spec.name, f.path, digest=t.result[0])

    def finish(self, ctx: Context) -> Finished:
        layers, files = [], []
        for f, t in zip(self.spec.files, self.tasks, strict=True):
            assert t.result
            digest, size = t.result
            ctx.record_pin("models", self.spec.name, f.path, digest=digest)
            layers.append(Descriptor(t.media_type, digest, size, {mt.ANN_TITLE: f.path}))
            files.append(ix.FileRef(path=f.path, digest=digest, size=size))
        cfg = canonical_json({
            "descriptor": {"name": self.spec.name, "sourceURL": self.spec.base_url or ""},
            "modelfs": {"type": "layers", "diffIds": [d.digest for d in layers]},
            "config": {},
        })
        cfg_digest = ctx.cache.put_bytes(cfg)
        config = Descriptor(mt.MODEL_CONFIG, cfg_digest, len(cfg))
        top, _ = artifact(ctx, mt.MODEL_ARTIFACT, config, layers, {mt.ANN_NAME: self.spec.name})
        top.annotations = ref_annotations(self.ref_name, "model")
        types = {top.digest: mt.OCI_MANIFEST, cfg_digest: mt.MODEL_CONFIG}
        for d in layers:
            types.setdefault(d.digest, d.media_type)
        comp = ix.Model(ref=self.ref_name, digest=top.digest, mediaType=mt.OCI_MANIFEST, blobs=list(types),
                        name=self.spec.name, source=self.spec.base_url or str(self.spec.path), files=files)
        return Finished(self.kind, comp, top, types)
