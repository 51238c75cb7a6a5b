"""What the site serves: tags → manifests, published blobs, model/file paths. Written in one transaction by
the publish step, read by the registry and file servers (so a bundle is visible completely or not at all).

Repositories are the site names of ``oci/sitename.py``: the upstream host stays in the path
(``release.daocloud.io/hydra/vllm-openai`` tag ``0.8.5.dev940-cpu``, ``docker.io/library/ubuntu`` tag ``24.04``).
Untagged (digest-only) references are kept under the pseudo-tag ``@sha256:…`` (never listed) so the repository
exists and pulls by digest work.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError, VerifyError
from ..oci import mediatypes as mt
from ..oci.sitename import site_name
from .db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS refs(
  repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, kind TEXT NOT NULL,
  ref TEXT NOT NULL, bundle_id TEXT NOT NULL, published_at REAL NOT NULL, PRIMARY KEY(repo, tag));
CREATE TABLE IF NOT EXISTS blobs(
  digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT NOT NULL, bundle_id TEXT NOT NULL,
  published_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS paths(
  area TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
  bundle_id TEXT NOT NULL, published_at REAL NOT NULL, PRIMARY KEY(area, name, path));
"""


def rename_to_site_names(c: sqlite3.Connection) -> None:
    """Migration 3: repositories published before site names kept the upstream host (``library/ubuntu`` →
    ``docker.io/library/ubuntu``); recompute every row's name from the reference it was published for."""
    rows = c.execute("SELECT repo, tag, kind, ref FROM refs").fetchall()
    for repo, tag, kind, ref in rows:
        try:
            new = site_name(ref, "images" if kind == "image" else f"{kind}s").repository
        except UsageError:
            continue  # a reference that no longer parses keeps its old name (it is still served)
        if new != repo:
            c.execute("UPDATE OR REPLACE refs SET repo=? WHERE repo=? AND tag=?", (new, repo, tag))


@dataclass
class RefRow:
    repo: str
    tag: str
    digest: str
    media_type: str
    kind: str
    ref: str


class Published:
    def __init__(self, db: Database):
        self.db = db

    # ---------------------------------------------------------------- writing (publish step)

    def conflicts(self, owner: str, refs: list[RefRow], paths: list[tuple[str, str, str, str, int]],
                  c: sqlite3.Connection | None = None) -> list[str]:
        """What publishing for bundle name ``owner`` would take from another bundle name: a tag that serves other
        content, or a model/file name (served as a whole) with other content. A name belongs to the bundle name
        that published it first; the same content under the same name is no conflict."""
        q = c.execute if c is not None else self.db.conn().execute
        out = []
        for r in refs:
            if r.tag.startswith("@"):
                continue  # a digest names its own content
            for row in q("SELECT r.digest, b.name FROM refs r JOIN bundles b ON b.id = r.bundle_id "
                         "WHERE r.repo=? AND r.tag=? AND b.name<>?", (r.repo, r.tag, owner)).fetchall():
                if row[0] != r.digest:
                    out.append(f"{r.repo}:{r.tag} is served for bundle {row[1]!r} ({row[0][:19]})")
        mine: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for area, name, path, digest, _ in paths:
            mine.setdefault((area, name), set()).add((path, digest))
        for (area, name), files in sorted(mine.items()):
            rows = q("SELECT p.path, p.digest, b.name FROM paths p JOIN bundles b ON b.id = p.bundle_id "
                     "WHERE p.area=? AND p.name=? AND b.name<>?", (area, name, owner)).fetchall()
            if rows and {(r[0], r[1]) for r in rows} != files:
                out.append(f"/{area}/{name}/ is served for bundle {rows[0][2]!r}")
        return out

    def publish(self, bundle_id: str, refs: list[RefRow], blobs: list[tuple[str, int, str]],
                paths: list[tuple[str, str, str, str, int]],
                before_commit: Callable[[], None] | None = None, owner: str | None = None) -> None:
        """Write every row in one transaction. ``before_commit`` runs inside it, after the rows (queries on this
        thread see them): if it raises, nothing is published. With ``owner`` (the bundle's name) a name another
        bundle name serves with other content is refused (:meth:`conflicts`), checked inside the transaction."""
        now = time.time()
        with self.db.tx() as c:
            if owner is not None:
                taken = self.conflicts(owner, refs, paths, c)
                if taken:
                    raise VerifyError("name-taken", f"{len(taken)} name(s) belong to another bundle: "
                                      f"{'; '.join(taken[:3])}{' …' if len(taken) > 3 else ''} (a bundle may only "
                                      "replace what bundles of its own name published)")
            for d, size, media in blobs:
                c.execute("INSERT OR IGNORE INTO blobs(digest, size, media_type, bundle_id, published_at) "
                          "VALUES(?,?,?,?,?)", (d, size, media, bundle_id, now))
            for r in refs:
                c.execute("INSERT OR REPLACE INTO refs(repo, tag, digest, media_type, kind, ref, bundle_id, "
                          "published_at) VALUES(?,?,?,?,?,?,?,?)",
                          (r.repo, r.tag, r.digest, r.media_type, r.kind, r.ref, bundle_id, now))
            for area, name in {(p[0], p[1]) for p in paths}:  # a model/file set is replaced as a whole
                c.execute("DELETE FROM paths WHERE area=? AND name=? AND bundle_id<>?", (area, name, bundle_id))
            for area, name, path, digest, size in paths:
                c.execute("INSERT OR REPLACE INTO paths(area, name, path, digest, size, bundle_id, published_at) "
                          "VALUES(?,?,?,?,?,?,?)", (area, name, path, digest, size, bundle_id, now))
            if before_commit is not None:
                before_commit()

    def unpublish(self, bundle_ids: list[str], blobs: set[str],
                  before_commit: Callable[[], None] | None = None) -> tuple[int, int, int]:
        """Stop serving what ``bundle_ids`` published, in one transaction: their tags and model/file paths, and
        ``blobs`` (the caller leaves out those other served bundles still need). ``before_commit`` as in
        :meth:`publish`. Returns (references, paths, blobs) removed; the content store keeps the files."""
        marks = ",".join("?" * len(bundle_ids))
        with self.db.tx() as c:
            refs = c.execute(f"DELETE FROM refs WHERE bundle_id IN ({marks})", bundle_ids).rowcount
            paths = c.execute(f"DELETE FROM paths WHERE bundle_id IN ({marks})", bundle_ids).rowcount
            gone = sum(c.execute("DELETE FROM blobs WHERE digest=?", (d,)).rowcount for d in sorted(blobs))
            if before_commit is not None:
                before_commit()
        return refs, paths, gone

    def serving(self) -> set[str]:
        """Ids of the bundles whose tags or model/file paths are served now."""
        return {r["bundle_id"] for r in self.db.query("SELECT bundle_id FROM refs UNION SELECT bundle_id FROM paths")}

    def served_by(self, bundle_ids: list[str]) -> tuple[list[str], list[str]]:
        """What ``bundle_ids`` serve now: ``repo:tag`` references (digest-only ones as ``repo@sha256:…``) and
        ``/area/name/`` model and file paths."""
        marks = ",".join("?" * len(bundle_ids))
        refs = [f"{r['repo']}{'' if r['tag'].startswith('@') else ':'}{r['tag']}" for r in self.db.query(
            f"SELECT repo, tag FROM refs WHERE bundle_id IN ({marks}) ORDER BY repo, tag", tuple(bundle_ids))]
        paths = [f"/{r['area']}/{r['name']}/" for r in self.db.query(
            f"SELECT DISTINCT area, name FROM paths WHERE bundle_id IN ({marks}) ORDER BY area, name",
            tuple(bundle_ids))]
        return refs, paths

    def layout_manifests(self) -> list[dict[str, Any]]:
        """Descriptors for the store's index.json: one per published reference, annotated with its ref name."""
        rows = self.db.query("SELECT r.ref, r.digest, r.media_type, r.kind, b.size FROM refs r "
                             "JOIN blobs b ON b.digest = r.digest ORDER BY r.repo, r.tag")
        return [{"mediaType": r["media_type"], "digest": r["digest"], "size": r["size"],
                 "annotations": {mt.ANN_REF_NAME: r["ref"], mt.ANN_KIND: r["kind"]}} for r in rows]

    # ---------------------------------------------------------------- registry reads

    def repo_exists(self, repo: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM refs WHERE repo=? LIMIT 1", (repo,)))

    def repositories(self) -> list[str]:
        return [r["repo"] for r in self.db.query("SELECT DISTINCT repo FROM refs ORDER BY repo")]

    def tags(self, repo: str) -> list[str]:
        return [r["tag"] for r in self.db.query("SELECT tag FROM refs WHERE repo=? AND tag NOT LIKE '@%' "
                                                 "ORDER BY tag", (repo,))]

    def manifest(self, repo: str, reference: str) -> tuple[str, str] | None:
        """(digest, media type) of a manifest by tag or digest in ``repo``."""
        if not self.repo_exists(repo):
            return None
        if reference.startswith("sha256:"):
            rows = self.db.query("SELECT digest, media_type FROM blobs WHERE digest=?", (reference,))
            if rows and rows[0]["media_type"] in mt.ALL_MANIFEST_TYPES:
                return rows[0]["digest"], rows[0]["media_type"]
            return None
        rows = self.db.query("SELECT digest, media_type FROM refs WHERE repo=? AND tag=?", (repo, reference))
        return (rows[0]["digest"], rows[0]["media_type"]) if rows else None

    def indexes(self, repo: str) -> list[str]:
        """Digests of the multi-platform indexes published in ``repo``."""
        marks = ",".join("?" * len(mt.INDEX_TYPES))
        return [r["digest"] for r in self.db.query(
            f"SELECT DISTINCT digest FROM refs WHERE repo=? AND media_type IN ({marks})", (repo, *mt.INDEX_TYPES))]

    def blob_size(self, digest: str) -> int | None:
        rows = self.db.query("SELECT size FROM blobs WHERE digest=?", (digest,))
        return int(rows[0]["size"]) if rows else None

    # ---------------------------------------------------------------- file server reads

    def names(self, area: str) -> list[str]:
        return [r["name"] for r in self.db.query("SELECT DISTINCT name FROM paths WHERE area=? ORDER BY name",
                                                  (area,))]

    def file(self, area: str, name: str, path: str) -> tuple[str, int, float] | None:
        rows = self.db.query("SELECT digest, size, published_at FROM paths WHERE area=? AND name=? AND path=?",
                             (area, name, path))
        return (rows[0]["digest"], int(rows[0]["size"]), float(rows[0]["published_at"])) if rows else None

    def files(self, area: str, name: str) -> list[tuple[str, int, float]]:
        rows = self.db.query("SELECT path, size, published_at FROM paths WHERE area=? AND name=? ORDER BY path",
                             (area, name))
        return [(r["path"], int(r["size"]), float(r["published_at"])) for r in rows]

    # ---------------------------------------------------------------- inventory

    def image_refs(self) -> list[str]:
        """Every published image reference as the bundle wrote it (for ``mirror-config``)."""
        return [r["ref"] for r in self.db.query("SELECT DISTINCT ref FROM refs WHERE kind='image' ORDER BY ref")]

    def published_bytes(self) -> int:
        return int(self.db.query("SELECT COALESCE(SUM(size), 0) AS n FROM blobs")[0]["n"])

    def inventory(self) -> list[tuple[str, int]]:
        return [(r["digest"], int(r["size"])) for r in self.db.query("SELECT digest, size FROM blobs ORDER BY digest")]

    def referenced_blobs(self) -> set[str]:
        return {r["digest"] for r in self.db.query("SELECT digest FROM blobs")}
