"""``docker-daemon:`` images: images that exist only in a local engine (Docker, or podman's Docker API).

The engine's ``save`` stream (docker-archive) is spooled to one temporary file, then each layer is copied
into the cache while it is hashed, and an OCI manifest is written for it. Layers come out of an engine
uncompressed (``…image.layer.v1.tar``); they are stored as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from typing import Any

from ...bundle import index as ix
from ...digest import CHUNK, canonical_json
from ...errors import NotFound, SourceError, UsageError
from ...oci import mediatypes as mt
from ...spec.model import ImageSpec
from ..context import BlobTask, Context, Descriptor, Finished

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _client() -> Any:
    try:
        import docker
    except ImportError:
        raise UsageError("docker-daemon: images need the docker SDK: pip install 'hydra-bundle[docker]'") from None
    try:
        return docker.from_env()
    except docker.errors.DockerException as e:
        raise SourceError(f"docker-daemon: cannot reach the engine (DOCKER_HOST?): {e}") from None


class DockerDaemonSource:
    kind = "images"

    def __init__(self, spec: ImageSpec, ctx: Context):
        self.spec = spec
        self.name = spec.ref.removeprefix("docker-daemon:")
        self.ref = str(spec.reference)
        self.manifest: bytes = b""
        self.digest = ""
        self.types: dict[str, str] = {}
        self.platform = "unknown/unknown"

    def resolve(self, ctx: Context) -> list[BlobTask]:
        """Export the image once (the save stream is the only way out of an engine) and cache its blobs."""
        client = _client()
        import docker

        try:
            image = client.images.get(self.name)
        except docker.errors.ImageNotFound:
            raise NotFound(f"images: {self.spec.ref}: no such image in the local engine") from None
        except docker.errors.DockerException as e:
            raise SourceError(f"images: {self.spec.ref}: {e}") from None
        spool = ctx.cache.tmp / f"daemon.{os.getpid()}.{abs(hash(self.name))}.tar"
        try:
            with open(spool, "wb") as f:
                for chunk in image.save(named=False):
                    f.write(chunk)
            self._ingest(ctx, spool)
        finally:
            spool.unlink(missing_ok=True)
            client.close()
        return []

    def _ingest(self, ctx: Context, spool: os.PathLike[str]) -> None:
        with tarfile.open(spool, "r:") as tf:
            members = {m.name: m for m in tf.getmembers() if m.isreg()}

            def read(name: str) -> bytes:
                m = members.get(name)
                f = tf.extractfile(m) if m else None
                if f is None:
                    raise SourceError(f"images: {self.spec.ref}: engine export lacks {name}")
                return f.read()

            try:
                entry = json.loads(read("manifest.json"))[0]
            except (ValueError, IndexError, KeyError) as e:
                raise SourceError(f"images: {self.spec.ref}: unreadable engine export ({e})") from None
            config = read(entry["Config"])
            cfg_digest = ctx.cache.put_bytes(config)
            cfg = json.loads(config)
            self.platform = f"{cfg.get('os', 'unknown')}/{cfg.get('architecture', 'unknown')}" + (
                f"/{cfg['variant']}" if cfg.get("variant") else "")
            layers = []
            for name in entry["Layers"]:
                m = members.get(name)
                src = tf.extractfile(m) if m else None
                if src is None:
                    raise SourceError(f"images: {self.spec.ref}: engine export lacks layer {name}")
                tmp = ctx.cache.tmp / f"daemon-layer.{os.getpid()}"


                h = hashlib.sha256()
                with open(tmp, "wb") as out:
                    head = b""
                    while chunk := src.read(CHUNK):
                        head = head or chunk[:2]
                        h.update(chunk)
                        out.write(chunk)
                digest = "sha256:" + h.hexdigest()
                ctx.cache.adopt(tmp, digest)
                media = OCI_LAYER_GZIP if head == b"\x1f\x8b" else OCI_LAYER_TAR
                layers.append(Descriptor(media, digest, m.size).json())  # type: ignore[union-attr]
                self.types.setdefault(digest, media)
        manifest = canonical_json({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                                   "config": {"mediaType": mt.OCI_CONFIG, "digest": cfg_digest,
                                              "size": len(config)},
                                   "layers": layers})
        self.digest = ctx.cache.put_bytes(manifest)
        self.manifest = manifest
        self.types = {self.digest: mt.OCI_MANIFEST, cfg_digest: mt.OCI_CONFIG, **self.types}

    def pin(self, ctx: Context) -> None:
        """Engine images have no upstream digest to pin; they are not locked."""

    def finish(self, ctx: Context) -> Finished:
        comp = ix.Image(ref=self.ref, digest=self.digest, mediaType=mt.OCI_MANIFEST, platforms=[self.platform],
                        blobs=list(self.types), source="docker-daemon")
        top = Descriptor(mt.OCI_MANIFEST, self.digest, len(self.manifest),
                         {mt.ANN_REF_NAME: self.ref, mt.ANN_KIND: "image"})
        return Finished(self.kind, comp, top, dict(self.types))



