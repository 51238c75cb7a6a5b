"""The ``publish`` step: make a stored bundle visible — tags, blobs and model/file paths in one transaction,
and the store's ``index.json`` (the OCI layout view) regenerated atomically inside it, before COMMIT: when
either write fails (e.g. the disk is full) the transaction rolls back and nothing of the bundle is served."""

from __future__ import annotations

import contextlib

from ..bundle.index import BundleIndex
from ..disk import disk_full
from ..errors import HydraError
from ..oci.sitename import site_name
from .published import RefRow
from .runner import StepContext

KIND = {"images": "image", "charts": "chart", "manifests": "manifest", "files": "file", "models": "model",
        "kits": "kit"}


def refs_of(index: BundleIndex) -> list[RefRow]:
    out = []
    for kind in KIND:
        for c in getattr(index.components, kind):
            name = site_name(c.ref, kind)
            out.append(RefRow(name.repository, name.tag or f"@{c.digest}", c.digest, c.mediaType, KIND[kind], c.ref))
    return out


def paths_of(index: BundleIndex) -> list[tuple[str, str, str, str, int]]:
    out = []
    for m in index.components.models:
        out += [("model", m.name, f.path, f.digest, f.size) for f in m.files]
    for f in index.components.files:
        out.append(("files", f.name, f.file.path, f.file.digest, f.file.size))
    return out


def run(ctx: StepContext) -> str:
    idx = ctx.index
    missing = [b.digest for b in idx.blobs if not ctx.store.has(b.digest, b.size)]
    if missing:
        raise HydraError(f"{len(missing)} blob(s) of the bundle are missing from the store (first {missing[0]}); "
                         "drop the bundle again")
    refs = refs_of(idx)
    wrote = False

    def write_index() -> None:  # inside the transaction: layout_manifests sees its rows
        nonlocal wrote
        ctx.store.write_index(ctx.published.layout_manifests())
        wrote = True

    try:
        ctx.published.publish(ctx.bundle_id, refs, [(b.digest, b.size, b.mediaType) for b in idx.blobs],
                              paths_of(idx), before_commit=write_index, owner=idx.name)
    except BaseException as e:
        if wrote:  # the COMMIT failed after index.json was rewritten: back to what is published (best effort)
            if disk_full(e):
                ctx.store.release_reserve()  # the room to write it (and then to record the failure)
            with contextlib.suppress(Exception):
                ctx.store.write_index(ctx.published.layout_manifests())
        raise
    return f"{len(refs)} references, {len(idx.blobs)} blobs"
