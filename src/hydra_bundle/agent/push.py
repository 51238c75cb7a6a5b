"""The ``push`` step (only with ``push:`` configured): copy everything the embedded registry would serve — images,
charts, and the artifacts hydra-bundle makes (manifests, files, models, the agent kit) — to the site's existing
registry (Harbor, distribution) under their site names (``oci/sitename.py``: the upstream host stays in the path,
``hydra-bundle/models/<name>:<version>`` for our artifacts), under ``push.registry``'s prefix. A site that runs
its own registry instead of the embedded one so still has every artifact, with the digests the index pins.

Blobs stream from the store in chunked uploads (``push.chunk_size``), skipped when the registry already has
them (HEAD), cross-repo mounted when this step already pushed them to another repository. So a re-run after a
partial push (the step failed or the agent stopped) re-uploads only the blobs that never completed. Manifests are
pushed byte-for-byte, so every digest is preserved.

Platform-filtered multi-arch images: the bundle keeps the original index (its digest is what was pinned) but
only the children for the bundle's platforms. docker-registry 2.8 refuses an index whose children are missing,
so what goes under the *tag* is chosen like this:

* every child present → the original index, unchanged (same digest);
* exactly one child kept → that child's manifest (same digest as in the source registry); a pull by tag gets
  the image for the kept platform, which is the only one the site has anyway;
* several (not all) kept → a rewritten index listing only the kept children (a new digest, recorded in the
  step detail; the children keep their digests).

Children are always pushed by digest first. The embedded registry serves the original index unchanged.
"""

from __future__ import annotations

import json

from ..digest import canonical_json, sha256_bytes
from ..oci import mediatypes as mt
from ..oci.auth import CredentialStore
from ..oci.client import RegistryClient
from ..oci.sitename import site_name
from .publish import KIND  # the kinds the embedded registry serves, in publish order
from .runner import StepContext


class Pusher:
    def __init__(self, ctx: StepContext):
        cfg = ctx.config.push
        assert cfg is not None
        self.ctx = ctx
        self.cfg = cfg
        self.host = cfg.host
        creds = CredentialStore([cfg.credentials_file] if cfg.credentials_file else [])
        verify: bool | str = str(cfg.ca_file) if cfg.ca_file else cfg.tls_verify
        self.client = RegistryClient(insecure={cfg.host} if cfg.insecure else (), credentials=creds,
                                     verify_tls=verify)
        self.where: dict[str, str] = {}      # digest → a repo it was pushed to (mount source)
        self.counts = {"exists": 0, "mounted": 0, "uploaded": 0}
        self.sizes = {b.digest: b.size for b in ctx.index.blobs}

    def close(self) -> None:
        self.client.close()

    def target_repo(self, ref: str, kind: str) -> tuple[str, str | None]:
        name = site_name(ref, kind)
        return (f"{self.cfg.prefix}/{name.repository}" if self.cfg.prefix else name.repository), name.tag

    def blob(self, repo: str, digest: str) -> None:
        self.ctx.check_stop()
        size = self.sizes.get(digest)
        path = self.ctx.store.path(digest)
        if size is None:
            size = path.stat().st_size
        src = self.where.get(digest)
        how = self.client.push_blob(self.host, repo, digest, size, path, mount_from=src if src != repo else None,
                                    chunk_size=self.cfg.chunk_size, progress=self.ctx.progress)
        self.counts[how] += 1
        self.where.setdefault(digest, repo)

    def manifest(self, repo: str, digest: str, reference: str | None = None) -> tuple[bytes, str]:
        """Push a single manifest's blobs then the manifest itself (by digest, or under ``reference``)."""
        data = self.ctx.store.path(digest).read_bytes()
        body = json.loads(data)
        media = body.get("mediaType") or mt.OCI_MANIFEST
        for d in [body.get("config"), *body.get("layers", [])]:
            if d and self.ctx.store.has(d["digest"]):
                self.blob(repo, d["digest"])
        self.client.put_manifest(self.host, repo, reference or digest, data, media)
        return data, media

    def component(self, ref: str, kind: str, digest: str, media_type: str) -> str:
        repo, tag = self.target_repo(ref, kind)
        if media_type not in mt.INDEX_TYPES:
            self.manifest(repo, digest, tag or digest)
            return f"{repo}:{tag or digest}"
        data = self.ctx.store.path(digest).read_bytes()
        body = json.loads(data)
        children = body.get("manifests", [])
        kept = [c for c in children if self.ctx.store.has(c["digest"])]
        for c in kept:
            self.manifest(repo, c["digest"])
        target = tag or digest
        if len(kept) == len(children):
            self.client.put_manifest(self.host, repo, target, data, media_type)
            return f"{repo}:{target}"
        if not tag:
            return f"{repo}: {len(kept)} of {len(children)} platforms pushed by digest (untagged filtered index)"
        if len(kept) == 1:
            c = kept[0]
            child = self.ctx.store.path(c["digest"]).read_bytes()
            cmedia = json.loads(child).get("mediaType") or c.get("mediaType") or mt.OCI_MANIFEST
            self.client.put_manifest(self.host, repo, tag, child, cmedia)
            plat = c.get("platform") or {}
            return f"{repo}:{tag} → {c['digest'][:19]} ({plat.get('os')}/{plat.get('architecture')} only)"
        rewritten = {**body, "manifests": kept}
        new = canonical_json(rewritten)
        self.client.put_manifest(self.host, repo, tag, new, media_type)
        return f"{repo}:{tag} → rewritten index {sha256_bytes(new)[:19]} ({len(kept)} of {len(children)} platforms)"


def run(ctx: StepContext) -> str:
    p = Pusher(ctx)
    try:
        done = []
        comps = [(kind, c) for kind in KIND for c in getattr(ctx.index.components, kind)]
        for kind, c in comps:
            done.append(p.component(c.ref, kind, c.digest, c.mediaType))
            ctx.log.info("pushed", extra={"kv": {"ref": c.ref, "to": f"{p.host}/{done[-1]}"}})
    finally:
        p.close()
        ctx.result = {"blobs": dict(p.counts), "references": done}  # kept on failure too: what was pushed
    if not done:
        return "nothing to push"
    n = p.counts
    return (f"{len(done)} references to {p.host}; blobs: {n['uploaded']} uploaded, {n['mounted']} mounted, "
            f"{n['exists']} already there")
