"""Stop serving bundles (``agent remove``; the bundle an ``agent rollback`` leaves): their references, paths and
the blobs no other served bundle needs, in one transaction with the store's ``index.json`` (as publish writes
it). The content store keeps the files: a later rollback or re-drop needs no new copy (``agent gc`` frees them)."""

from __future__ import annotations

from .journal import Journal
from .published import Published
from .store import Store


def blobs_of(j: Journal, bundle_ids: set[str]) -> set[str]:
    out: set[str] = set()
    for bid in bundle_ids:
        row = j.bundle(bid)
        if row is not None and row.index_json is not None:
            out |= {b.digest for b in row.index().blobs}
    return out


def unpublish(j: Journal, published: Published, store: Store, bundle_ids: list[str]) -> tuple[int, int, int]:
    """(references, paths, blobs) no longer served. Call under the pipeline lock (no publish meanwhile)."""
    others = published.serving() - set(bundle_ids)
    doomed = blobs_of(j, set(bundle_ids)) - blobs_of(j, others)
    return published.unpublish(bundle_ids, doomed,
                               before_commit=lambda: store.write_index(published.layout_manifests()))
