"""``agent gc``: mark and sweep of the content store, so a site that takes a bundle a month does not grow forever.

Mark (under ``pipeline.lock``, so no ingest or publish runs meanwhile): of every bundle name, the published
versions beyond the latest ``keep`` (by sequence) are *collected*, except the one that published last (after a
rollback that is an older version: it is what the site serves). Bundles ``agent remove`` finished are not
versions any more: their blobs go whatever ``keep`` says. Every other bundle that is not refused — retained
versions, and bundles still on their way (a split set waiting for parts, a delta waiting for blobs, a failed
step) — is live, and every blob its signed index lists is kept, as is whatever the published view still
references. Assembly areas (``store/assembling/<bundle>``) of live bundles are kept too.

Sweep, in this order, so a kill -9 anywhere leaves a consistent store:

1. one journal transaction unpublishes the collected bundles' references and model/file paths, drops the
   published rows of unmarked blobs, marks the bundles ``collected`` and rewrites ``store/index.json`` before
   COMMIT (as the publish step does): either all of it happened or none of it;
2. only then are the unmarked blob files unlinked (and ``blobs/`` fsynced).

A crash after 1 leaves blobs nothing references — exactly what the next gc removes. A crash before its COMMIT
leaves the journal as it was (``index.json`` may already list only the retained references, all still on disk;
the next gc or publish rewrites it). Bytes are never deleted while they are published, so ``agent inventory``
(the published blobs) never lists a deleted blob and a delta built from it never leaves out something the site
lacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..digest import hex_of
from ..disk import disk_full, fsync_dir, human_bytes
from ..errors import HydraError
from ..states import FINISHED, BundleState
from .journal import Journal
from .published import Published
from .store import Store


@dataclass
class Collected:
    """A bundle whose content gc deletes."""

    id: str
    name: str
    version: str | None
    sequence: int | None

    def json(self) -> dict[str, Any]:
        return {"digest": self.id, "name": self.name, "version": self.version, "sequence": self.sequence}


@dataclass
class Plan:
    """What one gc would do now (the mark); :func:`sweep` carries it out."""

    keep: int | None
    bundles: list[Collected] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)          # digest → bytes on disk, to unlink
    assemblies: dict[str, int] = field(default_factory=dict)     # assembly dir name → bytes, to remove
    marked: set[str] = field(default_factory=set)                # blob digests that stay
    owners: dict[str, str] = field(default_factory=dict)         # kept digest → a live bundle that lists it
    live: int = 0

    @property
    def bytes(self) -> int:
        return sum(self.blobs.values()) + sum(self.assemblies.values())


@dataclass
class Report:
    """What a gc did (or, with ``dry_run``, would do)."""

    plan: Plan
    dry_run: bool
    references: int = 0    # registry references unpublished
    paths: int = 0         # model/file paths unpublished
    freed: int = 0         # bytes removed from disk (dry run: what would be)

    def summary(self) -> str:
        p = self.plan
        what = ", ".join(f"{b.name} {b.version}" for b in p.bundles) or "no bundle"
        kept = f"the latest {p.keep} version(s) of each name" if p.keep is not None else "every version"
        would = "would be " if self.dry_run else ""
        return (f"keeping {kept}: {what} {would}collected; {self.references} reference(s) and {self.paths} "
                f"model/file path(s) {would}unpublished; {len(p.blobs)} blob(s) and {len(p.assemblies)} assembly "
                f"area(s) {would}removed, {human_bytes(self.freed)} {would}freed")

    def json(self) -> dict[str, Any]:
        p = self.plan
        return {"dryRun": self.dry_run, "keep": p.keep, "bundles": [b.json() for b in p.bundles],
                "liveBundles": p.live, "blobs": len(p.blobs), "assemblies": len(p.assemblies),
                "references": self.references, "paths": self.paths, "bytes": self.freed}


def _published_versions(j: Journal) -> list[dict[str, Any]]:
    """Bundles whose publish step finished (what counts as a version of a name), with when they published."""
    rows = j.db.query(
        "SELECT b.id, b.name, b.version, b.sequence, b.received_at, s.finished_at FROM bundles b "
        "JOIN steps s ON s.bundle_id = b.id AND s.name = 'publish' "
        "WHERE b.verified = 1 AND b.name IS NOT NULL AND b.state NOT IN (?, ?, ?) "
        f"AND s.state IN ({','.join('?' * len(FINISHED))})",
        (BundleState.QUARANTINED, BundleState.COLLECTED, BundleState.REMOVED, *FINISHED))
    return [dict(r) for r in rows]


def to_collect(j: Journal, keep: int | None) -> list[Collected]:
    """Published versions beyond the latest ``keep`` of each name; never the one that published last."""
    if keep is None:
        return []
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in _published_versions(j):
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rows in sorted(by_name.items()):
        rows.sort(key=lambda r: (r["sequence"] or 0, r["received_at"] or 0), reverse=True)
        current = max(rows, key=lambda r: r["finished_at"] or 0)["id"]
        out += [Collected(r["id"], name, r["version"], r["sequence"]) for r in rows[keep:] if r["id"] != current]
    return out


def _index_blobs(bundle_id: str, index_json: bytes) -> list[str]:
    """Every blob digest a signed index lists (carried or left out by a delta): raw JSON, no model build. An
    index that cannot be read stops the gc (its blobs would otherwise count as unreferenced)."""
    try:
        return [str(b["digest"]) for b in json.loads(index_json).get("blobs") or []]
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise HydraError(f"gc: cannot read the index of bundle {bundle_id} in the journal ({e}); nothing was "
                         "deleted") from None


def plan(j: Journal, store: Store, keep: int | None) -> Plan:
    """The mark: which bundles are collected, which blobs stay, which blob files and assembly areas go."""
    p = Plan(keep, to_collect(j, keep))
    gone = {b.id for b in p.bundles}
    owning = {r["bundle_id"] for r in j.db.query("SELECT DISTINCT bundle_id FROM refs UNION "
                                                  "SELECT DISTINCT bundle_id FROM paths")}
    live_ids = set()
    rows = j.db.query("SELECT id, state, index_json FROM bundles WHERE verified = 1 AND index_json IS NOT NULL "
                      "ORDER BY received_at")
    for r in rows:
        if r["id"] in gone or r["state"] in (BundleState.COLLECTED, BundleState.REMOVED):
            continue  # content gone, or removed from the site (`agent remove`): nothing of it is needed
        if r["state"] == BundleState.QUARANTINED and r["id"] not in owning:
            continue  # refused before it published: its blobs were removed then
        live_ids.add(r["id"])
        for d in _index_blobs(r["id"], r["index_json"]):
            p.marked.add(d)
            p.owners[d] = r["id"]  # the newest live bundle listing it
    p.live = len(live_ids)
    # whatever the published view still references once the collected bundles are unpublished
    for r in j.db.query("SELECT digest, bundle_id FROM refs UNION ALL SELECT digest, bundle_id FROM paths"):
        if r["bundle_id"] not in gone:
            p.marked.add(r["digest"])
    for e in _scan(store.blobs):
        digest = f"sha256:{e.name}"
        if digest not in p.marked:
            p.blobs[digest] = _size(e)
    live_hex = {hex_of(b) for b in live_ids}
    for e in _scan(store.assembling):
        if e.is_dir(follow_symlinks=False) and e.name not in live_hex:
            p.assemblies[e.name] = sum(_size(f) for f in _scan(Path(e.path)))
    return p


def _scan(d: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(d))
    except FileNotFoundError:
        return []


def _size(e: os.DirEntry[str]) -> int:
    try:
        return e.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def collect(j: Journal, published: Published, store: Store, keep: int | None, dry_run: bool = False) -> Report:
    """Mark and sweep. The caller holds ``pipeline.lock`` (no pipeline may publish or ingest meanwhile)."""
    p = plan(j, store, keep)
    rep = Report(p, dry_run, freed=p.bytes)
    gone = [b.id for b in p.bundles]
    if dry_run:
        rep.references = _count(j, "refs", gone)
        rep.paths = _count(j, "paths", gone)
        return rep
    store.clean_tmp()  # leftovers of writes a kill interrupted (no writer runs: the caller holds the lock)
    if gone or _stale_rows(published, p.marked):
        rep.references, rep.paths = unpublish(j, published, store, p)
    else:
        resync_index(published, store)
    rep.freed = sweep(store, p)
    if p.bundles or rep.freed:
        j.event(None, None, None, "gc", rep.summary())
    return rep


def _count(j: Journal, table: str, ids: list[str]) -> int:
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return int(j.db.query(f"SELECT COUNT(*) AS n FROM {table} WHERE bundle_id IN ({marks})", tuple(ids))[0]["n"])


def _stale_rows(published: Published, marked: set[str]) -> bool:
    return any(d not in marked for d in published.referenced_blobs())


def unpublish(j: Journal, published: Published, store: Store, p: Plan) -> tuple[int, int]:
    """Step 1 of the sweep, one transaction: unpublish, mark collected, rewrite index.json before COMMIT.
    Returns (references, paths) unpublished."""
    gone = [b.id for b in p.bundles]
    marks = ",".join("?" * len(gone))
    now = time.time()
    wrote = False
    try:
        with j.db.tx() as c:
            refs = paths = 0
            if gone:
                refs = c.execute(f"DELETE FROM refs WHERE bundle_id IN ({marks})", tuple(gone)).rowcount
                paths = c.execute(f"DELETE FROM paths WHERE bundle_id IN ({marks})", tuple(gone)).rowcount
            stale = [r["digest"] for r in c.execute("SELECT digest FROM blobs") if r["digest"] not in p.marked]
            c.executemany("DELETE FROM blobs WHERE digest=?", [(d,) for d in stale])
            if gone:  # a kept blob first published by a collected bundle now belongs to a live one
                for r in c.execute(f"SELECT digest FROM blobs WHERE bundle_id IN ({marks})", tuple(gone)).fetchall():
                    owner = p.owners.get(r["digest"])
                    if owner is not None:
                        c.execute("UPDATE blobs SET bundle_id=? WHERE digest=?", (owner, r["digest"]))
            for b in p.bundles:
                detail = (f"not among the latest {p.keep} version(s) of {b.name}: unpublished and its blobs "
                          "deleted; drop the bundle file again to restore it (a lower sequence needs a downgrade "
                          "permit)")
                c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=? WHERE id=?",
                          (BundleState.COLLECTED, "gc", detail, now, b.id))
                c.execute("INSERT INTO history(at, bundle_id, name, version, event, detail) VALUES(?,?,?,?,?,?)",
                          (now, b.id, b.name, b.version, "collected", detail))
            store.write_index(published.layout_manifests())  # sees this transaction's rows
            wrote = True
    except BaseException as e:
        if wrote:  # the COMMIT failed after index.json was rewritten: back to what is published (best effort)
            if disk_full(e):
                store.release_reserve()
            with contextlib.suppress(Exception):
                store.write_index(published.layout_manifests())
        raise
    return refs, paths


def resync_index(published: Published, store: Store) -> bool:
    """Rewrite ``store/index.json`` when it is not the published view (a kill inside the unpublish transaction
    after the rewrite: the rows rolled back, the file did not; it then lists a subset, every one still on disk).
    Returns whether it was rewritten."""
    want = published.layout_manifests()
    try:
        have = json.loads((store.root / "index.json").read_bytes()).get("manifests")
    except (OSError, ValueError, AttributeError):
        have = None
    if have == want:
        return False
    store.write_index(want)
    return True


def sweep(store: Store, p: Plan) -> int:
    """Step 2: unlink the unmarked blob files and orphaned assembly areas. Returns the bytes freed."""
    freed = 0
    for digest, size in sorted(p.blobs.items()):
        try:
            store.path(digest).unlink()
            freed += size
        except FileNotFoundError:
            pass
    if p.blobs:
        fsync_dir(store.blobs)
    for name, size in sorted(p.assemblies.items()):
        shutil.rmtree(store.assembling / name, ignore_errors=True)
        freed += size
    return freed


class Reclaimable:
    """``reclaimable_bytes`` for ``/metrics``: what a gc with the configured retention would free now. Planned
    again only when the journal (history) or the store's directories changed since the last scrape."""

    def __init__(self, j: Journal, store: Store, keep: int | None):
        self.j, self.store, self.keep = j, store, keep
        self._key: tuple[Any, ...] | None = None
        self._value = 0

    def __call__(self) -> int:
        try:
            key = (self.j.db.query("SELECT MAX(id) AS n FROM history")[0]["n"],
                   *(os.stat(d).st_mtime_ns for d in (self.store.blobs, self.store.assembling)))
            if key != self._key:
                self._value, self._key = plan(self.j, self.store, self.keep).bytes, key
        except (OSError, sqlite3.Error, HydraError):
            pass  # keep the last value; the scrape must not fail
        return self._value

