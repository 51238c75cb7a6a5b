"""The journal: what the site holds and how far each bundle got.

Tables (this module owns them; ``schema`` creates and migrates them):
  bundles   one row per bundle, keyed by the sha256 of its signed index bytes; ``state`` is what users see
  steps     the ordered plan of named steps per bundle (state + detail, and the step's structured result as JSON:
            changes, notes, outputs, pending command)
  history   append-only events (received, step done, quarantined, complete, ...)
  drops     files already handled in the drop dir (path, size, mtime, inode) so kept drops are not re-read
  parts     which parts of a split bundle are ingested

Every write is one transaction: after kill -9 the journal is exactly as of the last commit, and the step runner
resumes from there (a step found ``running`` is run again: steps are idempotent).

When the journal itself cannot be written (the disk is full), a failure must still show and nothing may claim
to be ``running`` forever. Three layers, cheapest first:

1. The store keeps a 1 MiB ``.reserve`` on the same filesystem; any disk-full error (``disk.disk_full``)
   releases it, so recording the failure normally succeeds.
2. If even that write fails, the failure is kept in memory (``Journal.unrecorded``, shown by ``/healthz``),
   logged, and written into ``journal.fallback`` (``fallback.py``), which needs no new disk space.
3. ``status`` never trusts a ``running`` row alone: a bundle is running only while a pipeline holds
   ``pipeline.lock`` for it (``lock.py``); see ``status.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..bundle.index import BundleIndex
from ..states import FINISHED, LIFECYCLE_ENDED, BundleState, StepState
from .db import Database
from .fallback import FALLBACK_NAME, Fallback, failure_entry

SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles(
  id TEXT PRIMARY KEY, name TEXT, version TEXT, sequence INTEGER, state TEXT NOT NULL,
  verified INTEGER NOT NULL DEFAULT 0, source TEXT, signer TEXT, size INTEGER, created TEXT, expires TEXT,
  received_at REAL, updated_at REAL, completed_at REAL, reason TEXT, detail TEXT,
  index_json BLOB);
CREATE INDEX IF NOT EXISTS bundles_name ON bundles(name, sequence);
CREATE TABLE IF NOT EXISTS steps(
  bundle_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
  detail TEXT, attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL,
  PRIMARY KEY(bundle_id, name));
CREATE TABLE IF NOT EXISTS history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, bundle_id TEXT, name TEXT, version TEXT,
  event TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS drops(
  path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, bundle_id TEXT, outcome TEXT, at REAL);
CREATE TABLE IF NOT EXISTS parts(
  bundle_id TEXT NOT NULL, part INTEGER NOT NULL, source TEXT, at REAL, PRIMARY KEY(bundle_id, part));
"""


def add_step_results(c: sqlite3.Connection) -> None:
    """Schema 2: steps keep their structured result."""
    if "result" not in {r["name"] for r in c.execute("PRAGMA table_info(steps)")}:
        c.execute("ALTER TABLE steps ADD COLUMN result TEXT")


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class StepRow:
    """One step of a bundle's plan as the journal has it."""

    bundle_id: str
    position: int
    name: str
    state: StepState
    detail: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    result: str | None = None

    def json(self) -> dict[str, Any]:
        out = {"name": self.name, "state": str(self.state), "detail": self.detail, "attempts": self.attempts,
               "startedAt": iso(self.started_at), "finishedAt": iso(self.finished_at)}
        if self.result:
            out["result"] = json.loads(self.result)
        return out


@dataclass
class BundleRow:
    id: str
    name: str | None
    version: str | None
    sequence: int | None
    state: BundleState
    verified: bool
    source: str | None
    signer: str | None
    size: int | None
    created: str | None
    expires: str | None
    received_at: float | None
    updated_at: float | None
    completed_at: float | None
    reason: str | None
    detail: str | None
    index_json: bytes | None

    def index(self) -> BundleIndex:
        assert self.index_json is not None
        return BundleIndex.from_bytes(self.index_json)


def _bundle(r: sqlite3.Row) -> BundleRow:
    d = {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row
    d["state"] = BundleState(d["state"])
    return BundleRow(**d)


def _step(r: sqlite3.Row) -> StepRow:
    d = {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row
    d["state"] = StepState(d["state"])
    return StepRow(**d)


class Journal:
    """Bundles, their steps, history and seen drops."""

    def __init__(self, db: Database):
        self.db = db
        self.fallback = Fallback(db.path.with_name(FALLBACK_NAME))
        self.unrecorded: dict[str, dict[str, Any]] = {}  # failures the journal could not take (this process)

    # ---------------------------------------------------------------- bundles

    def bundle(self, bundle_id: str) -> BundleRow | None:
        rows = self.db.query("SELECT * FROM bundles WHERE id=?", (bundle_id,))
        return _bundle(rows[0]) if rows else None

    def bundles(self, states: tuple[BundleState, ...] | None = None) -> list[BundleRow]:
        sql = "SELECT * FROM bundles"
        args: tuple[Any, ...] = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(str(s) for s in states)
        return [_bundle(r) for r in self.db.query(sql + " ORDER BY received_at, id", args)]

    def state_counts(self) -> dict[str, int]:
        """Bundles by state as the journal rows say (``/healthz`` and the Prometheus gauge)."""
        return {r["state"]: r["n"] for r in self.db.query("SELECT state, COUNT(*) AS n FROM bundles GROUP BY state")}

    def admit(self, bundle_id: str, index: BundleIndex, index_bytes: bytes, source: str, signer: str | None,
              steps: list[str]) -> None:
        """Record a verified bundle and its step plan (a re-admitted bundle keeps its finished steps)."""
        now = time.time()
        with self.db.tx() as c:
            prev = c.execute("SELECT state FROM bundles WHERE id=?", (bundle_id,)).fetchone()
            if prev is not None and prev["state"] in (BundleState.QUARANTINED, BundleState.REMOVED):  # start over
                c.execute("DELETE FROM steps WHERE bundle_id=?", (bundle_id,))
            c.execute(
                """INSERT INTO bundles(id, name, version, sequence, state, verified, source, signer, size, created,
                   expires, received_at, updated_at, index_json) VALUES(?,?,?,?,?,1,?,?,?,?,?,?,?,?)
                   ON CONFLICT(id) DO UPDATE SET state=excluded.state, verified=1, source=excluded.source,
                   signer=excluded.signer, updated_at=excluded.updated_at, reason=NULL, detail=NULL,
                   index_json=excluded.index_json""",
                (bundle_id, index.name, index.version, index.sequence, BundleState.RECEIVED, source, signer,
                 index.total_size, index.created, index.expires, now, now, index_bytes))
            self._plan(c, bundle_id, steps)
            self._event(c, bundle_id, index.name, index.version, "received", f"from {source}, signed by {signer}")

    def replan(self, bundle_id: str, steps: list[str]) -> None:
        with self.db.tx() as c:
            self._plan(c, bundle_id, steps)

    @staticmethod
    def _plan(c: sqlite3.Connection, bundle_id: str, steps: list[str]) -> None:
        have = {r["name"]: StepState(r["state"]) for r in c.execute(
            "SELECT name, state FROM steps WHERE bundle_id=?", (bundle_id,))}
        for pos, name in enumerate(steps):
            if name in have:
                c.execute("UPDATE steps SET position=? WHERE bundle_id=? AND name=?", (pos, bundle_id, name))
                if have[name] in (StepState.FAILED, StepState.RUNNING):
                    c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND name=?",
                              (StepState.PENDING, bundle_id, name))
            else:
                c.execute("INSERT INTO steps(bundle_id, position, name, state) VALUES(?,?,?,?)",
                          (bundle_id, pos, name, StepState.PENDING))
        stale = [n for n in have if n not in steps and have[n] not in FINISHED]
        for name in stale:  # a step no longer planned (config changed) and never finished
            c.execute("UPDATE steps SET state=?, detail=? WHERE bundle_id=? AND name=?",
                      (StepState.SKIPPED, "no longer planned", bundle_id, name))

    def record_refused(self, bundle_id: str, name: str | None, version: str | None, sequence: int | None,
                       verified: bool, source: str, reason: str, detail: str, index_bytes: bytes | None) -> None:
        """A quarantined bundle: keep a row so `status` shows it. Never overrides a complete bundle, and a copy
        whose signature failed never changes the record of a verified bundle with the same index bytes."""
        now = time.time()
        with self.db.tx() as c:
            row = c.execute("SELECT state FROM bundles WHERE id=?", (bundle_id,)).fetchone()
            if row is None:
                c.execute(
                    """INSERT INTO bundles(id, name, version, sequence, state, verified, source, received_at,
                       updated_at, reason, detail, index_json) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (bundle_id, name, version, sequence, BundleState.QUARANTINED, int(verified), source, now, now,
                     reason, detail, index_bytes if verified else None))
            elif row["state"] != BundleState.COMPLETE and verified:  # an unverified copy never changes a record
                c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=?, source=? WHERE id=?",
                          (BundleState.QUARANTINED, reason, detail, now, source, bundle_id))
                c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND state IN (?,?)",
                          (StepState.SKIPPED, bundle_id, StepState.PENDING, StepState.RUNNING))
            self._event(c, bundle_id, name, version, "quarantined", f"{reason}: {detail}")

    def part_done(self, bundle_id: str, part: int, source: str) -> None:
        """A part of a split bundle is ingested (its blobs and segments are in the store, fsynced)."""
        with self.db.tx() as c:
            c.execute("INSERT OR REPLACE INTO parts(bundle_id, part, source, at) VALUES(?,?,?,?)",
                      (bundle_id, part, source, time.time()))

    def parts_done(self, bundle_id: str) -> dict[int, str]:
        return {r["part"]: r["source"] for r in self.db.query("SELECT part, source FROM parts WHERE bundle_id=?",
                                                               (bundle_id,))}

    def set_state(self, bundle_id: str, state: BundleState, reason: str | None = None,
                  detail: str | None = None) -> None:
        now = time.time()
        with self.db.tx() as c:
            if state == BundleState.COMPLETE:
                c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=?, completed_at=? WHERE id=?",
                          (state, reason, detail, now, now, bundle_id))
                r = c.execute("SELECT name, version FROM bundles WHERE id=?", (bundle_id,)).fetchone()
                self._event(c, bundle_id, r["name"], r["version"], "complete", None)
            else:
                c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=? WHERE id=?",
                          (state, reason, detail, now, bundle_id))
        self.unrecorded.pop(bundle_id, None)  # the journal has the bundle's state again

    def superseded_by(self, bundle_id: str) -> BundleRow | None:
        """A bundle of the same name admitted after this one (a newer version, or an allowed rollback)."""
        me = self.bundle(bundle_id)
        if me is None or me.name is None:
            return None
        gone = (BundleState.QUARANTINED, *LIFECYCLE_ENDED)  # refused, removed, or rolled back from
        rows = self.db.query("SELECT * FROM bundles WHERE name=? AND id<>? AND verified=1 AND state NOT IN "
                             f"({','.join('?' * len(gone))}) AND received_at>? ORDER BY received_at DESC LIMIT 1",
                             (me.name, bundle_id, *gone, me.received_at or 0))
        return _bundle(rows[0]) if rows else None

    def max_sequence(self, name: str, exclude: str) -> int | None:
        """Highest sequence of a verified, not refused bundle of this name (rollback protection)."""
        rows = self.db.query("SELECT MAX(sequence) AS s FROM bundles WHERE name=? AND id<>? AND verified=1 "
                             "AND state<>?", (name, exclude, BundleState.QUARANTINED))
        return rows[0]["s"] if rows and rows[0]["s"] is not None else None

    def max_published_sequence(self, name: str, exclude: str) -> int | None:
        """Highest sequence of another bundle of this name whose content was published (what the site serves
        now): a bundle that resumes must not publish older content over it."""
        rows = self.db.query("SELECT MAX(b.sequence) AS s FROM bundles b JOIN steps s ON s.bundle_id = b.id "
                             "WHERE b.name=? AND b.id<>? AND b.verified=1 AND b.state<>? AND s.name='publish' "
                             f"AND s.state IN ({','.join('?' * len(FINISHED))})",
                             (name, exclude, BundleState.QUARANTINED, *FINISHED))
        return rows[0]["s"] if rows and rows[0]["s"] is not None else None

    def forget_parts(self, bundle_id: str, parts: Iterable[int]) -> None:
        """Parts whose data must be read again (a reassembled blob did not match): a re-drop ingests them."""
        with self.db.tx() as c:
            c.executemany("DELETE FROM parts WHERE bundle_id=? AND part=?", [(bundle_id, p) for p in parts])

    # ---------------------------------------------------------------- steps

    def steps(self, bundle_id: str) -> list[StepRow]:
        return [_step(r) for r in self.db.query("SELECT * FROM steps WHERE bundle_id=? ORDER BY position",
                                                (bundle_id,))]

    def step_started(self, bundle_id: str, name: str) -> None:
        now = time.time()
        with self.db.tx() as c:
            c.execute("UPDATE steps SET state=?, attempts=attempts+1, started_at=?, finished_at=NULL, detail=NULL "
                      "WHERE bundle_id=? AND name=?", (StepState.RUNNING, now, bundle_id, name))
            c.execute("UPDATE bundles SET state=?, updated_at=?, reason=NULL, detail=? WHERE id=?",
                      (BundleState.RUNNING, now, f"step {name}", bundle_id))

    def step_finished(self, bundle_id: str, name: str, state: StepState, detail: str | None,
                      result: dict[str, Any] | None = None) -> None:
        """Record how a step ended. A retry that ends exactly like the previous attempt (a pending step retried
        every ``retry_interval``) adds no history event."""
        now = time.time()
        event = f"step {name} {state}"
        with self.db.tx() as c:
            c.execute("UPDATE steps SET state=?, detail=?, finished_at=?, result=? WHERE bundle_id=? AND name=?",
                      (state, detail, now, json.dumps(result, ensure_ascii=False) if result else None, bundle_id,
                       name))
            last = c.execute("SELECT event, detail FROM history WHERE bundle_id=? AND event LIKE ? ORDER BY id DESC "
                             "LIMIT 1", (bundle_id, f"step {name} %")).fetchone()
            if state in (StepState.PENDING, StepState.FAILED) and last is not None and (
                    last["event"], last["detail"]) == (event, detail):
                return
            r = c.execute("SELECT name, version FROM bundles WHERE id=?", (bundle_id,)).fetchone()
            self._event(c, bundle_id, r["name"], r["version"], event, detail)

    def step_progress(self, bundle_id: str, name: str, detail: str) -> None:
        """What a running step is doing now (shown by ``agent status``; replaced when it finishes)."""
        with self.db.tx() as c:
            c.execute("UPDATE steps SET detail=? WHERE bundle_id=? AND name=? AND state=?",
                      (detail, bundle_id, name, StepState.RUNNING))

    def reset_steps(self, bundle_id: str, names: list[str]) -> int:
        """Make finished steps run again (``agent apply``); returns how many were reset."""
        with self.db.tx() as c:
            n = 0
            for name in names:
                n += c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND name=? AND state<>?",
                               (StepState.PENDING, bundle_id, name, StepState.RUNNING)).rowcount
        return n

    def recover(self) -> int:
        """After a crash: steps left ``running`` go back to ``pending`` (they are idempotent)."""
        with self.db.tx() as c:
            return int(c.execute("UPDATE steps SET state=? WHERE state=?",
                                 (StepState.PENDING, StepState.RUNNING)).rowcount)

    # ---------------------------------------------------------------- history and drops

    def event(self, bundle_id: str | None, name: str | None, version: str | None, event: str,
              detail: str | None = None) -> None:
        with self.db.tx() as c:
            self._event(c, bundle_id, name, version, event, detail)

    @staticmethod
    def _event(c: sqlite3.Connection, bundle_id: str | None, name: str | None, version: str | None, event: str,
               detail: str | None) -> None:
        c.execute("INSERT INTO history(at, bundle_id, name, version, event, detail) VALUES(?,?,?,?,?,?)",
                  (time.time(), bundle_id, name, version, event, detail))

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM history ORDER BY id DESC LIMIT ?", (limit,))
        return [{"at": iso(r["at"]), "bundle": r["bundle_id"], "name": r["name"], "version": r["version"],
                 "event": r["event"], "detail": r["detail"]} for r in reversed(rows)]

    def seen_drop(self, path: str, size: int, mtime_ns: int, inode: int) -> tuple[str | None, str] | None:
        rows = self.db.query("SELECT bundle_id, outcome FROM drops WHERE path=? AND size=? AND mtime_ns=? AND inode=?",
                             (path, size, mtime_ns, inode))
        return (rows[0]["bundle_id"], rows[0]["outcome"]) if rows else None

    def record_drop(self, path: str, size: int, mtime_ns: int, inode: int, bundle_id: str | None,
                    outcome: str) -> None:
        with self.db.tx() as c:
            c.execute("INSERT OR REPLACE INTO drops(path, size, mtime_ns, inode, bundle_id, outcome, at) "
                      "VALUES(?,?,?,?,?,?,?)", (path, size, mtime_ns, inode, bundle_id, outcome, time.time()))

    def forget_drop(self, path: str) -> None:
        with self.db.tx() as c:
            c.execute("DELETE FROM drops WHERE path=?", (path,))

    # ---------------------------------------------------------------- when the journal cannot be written

    def note_failure(self, bundle_id: str, step: str | None, reason: str, detail: str,
                     step_detail: str | None) -> bool:
        """Keep a failure the journal could not record: in memory and in ``journal.fallback``. Never raises;
        returns whether the file took it."""
        entry = failure_entry(step, reason, detail, step_detail)
        self.unrecorded[bundle_id] = entry
        return self.fallback.write(bundle_id, entry)


REMOVE_PREFIX = "remove:"   # the steps of `agent remove` (agent/remove.py)


def removing(j: Journal, bundle_id: str) -> bool:
    """Has ``agent remove`` started on this bundle and not finished (its steps must not be replanned away)?"""
    rows = j.db.query(f"SELECT 1 FROM steps WHERE bundle_id=? AND name LIKE ? AND state NOT IN "
                      f"({','.join('?' * len(FINISHED))}) LIMIT 1", (bundle_id, REMOVE_PREFIX + "%", *FINISHED))
    return bool(rows)
