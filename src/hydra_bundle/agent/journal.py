"""The state database (sqlite, WAL): what the site holds and how far each bundle got.

Tables:
  bundles   one row per bundle, keyed by the sha256 of its signed index bytes; ``state`` is what users see
  steps     the ordered plan of named steps per bundle (pending/running/done/failed/skipped + detail, and the
            step's structured result as JSON: changes, notes, outputs, pending command)
  history   append-only events (received, step done, quarantined, complete, ...)
  drops     files already handled in the drop dir (path, size, mtime, inode) so kept drops are not re-read
  refs/blobs/paths  what is published (written only by the publish step, read by the servers; see published.py)

Every write is one transaction with ``synchronous=FULL``: after kill -9 the database is exactly as of the
last commit, and the step runner resumes from there (a step found ``running`` is run again: steps are
idempotent).

When the journal itself cannot be written (the disk is full: ``database or disk is full``), a failure must still
show, and nothing may claim to be ``running`` forever. Three layers, cheapest first:

1. The store keeps a 1 MiB ``.reserve`` on the same filesystem; any disk-full error (:func:`disk_full`: ENOSPC
   from a file write *or* SQLITE_FULL from the journal) releases it, so recording the failure normally succeeds.
2. If even that write fails, the failure is kept in memory (``Journal.unrecorded``, shown by ``/healthz``),
   logged, and written into ``journal.fallback``: a file pre-allocated at start (``FALLBACK_BYTES``) and only
   ever overwritten in place, so writing it needs no new disk space.
3. ``Journal.status`` never trusts a ``running`` row alone: a bundle is running only while a pipeline holds
   ``pipeline.lock`` for it (:class:`PipelineLock`). Otherwise it is shown ``failed`` with the reason from
   ``journal.fallback`` when there is one newer than the row, else ``interrupted`` ("no reason recorded: see
   the agent log"). The agent resumes such rows like failed ones once the disk has room again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

# Bundle states (what `agent status` shows).
RECEIVED = "received"        # signature verified, steps planned, nothing run yet
RUNNING = "running"          # a step is running (or was, when the agent died: it resumes)
FAILED = "failed"            # a step failed; retried after retry_interval
WAITING = "waiting"          # a step cannot finish yet (StepPending, e.g. an operator command); retried
COMPLETE = "complete"        # every planned step is done or skipped
QUARANTINED = "quarantined"  # refused: moved to state_dir/quarantine with a reason file
ACTIVE_STATES = (RECEIVED, RUNNING, FAILED, WAITING)
INTERRUPTED = "interrupted"  # shown by status only: the row says running, but no pipeline runs it (resumes)

FALLBACK_NAME = "journal.fallback"   # failures the journal could not take (module docstring)
FALLBACK_BYTES = 64 << 10
PIPELINE_LOCK = "pipeline.lock"
_OWNER_BYTES = 512                    # the lock file's owner record
_FALLBACK_KEEP = 32                   # bundles kept in journal.fallback

# Step states.
PENDING, STEP_RUNNING, DONE, STEP_FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS bundles(
  id TEXT PRIMARY KEY, name TEXT, version TEXT, sequence INTEGER, state TEXT NOT NULL,
  verified INTEGER NOT NULL DEFAULT 0, source TEXT, signer TEXT, size INTEGER, created TEXT, expires TEXT,
  received_at REAL, updated_at REAL, completed_at REAL, reason TEXT, detail TEXT,
  index_json BLOB);
CREATE INDEX IF NOT EXISTS bundles_name ON bundles(name, sequence);
CREATE TABLE IF NOT EXISTS steps(
  bundle_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
  detail TEXT, attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, finished_at REAL, result TEXT,
  PRIMARY KEY(bundle_id, name));
CREATE TABLE IF NOT EXISTS history(
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, bundle_id TEXT, name TEXT, version TEXT,
  event TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS drops(
  path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, bundle_id TEXT, outcome TEXT, at REAL);
CREATE TABLE IF NOT EXISTS parts(
  bundle_id TEXT NOT NULL, part INTEGER NOT NULL, source TEXT, at REAL, PRIMARY KEY(bundle_id, part));
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


@dataclass
class Step:
    bundle_id: str
    position: int
    name: str
    state: str
    detail: str | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    result: str | None = None

    def json(self) -> dict[str, Any]:
        out = {"name": self.name, "state": self.state, "detail": self.detail, "attempts": self.attempts,
               "startedAt": _iso(self.started_at), "finishedAt": _iso(self.finished_at)}
        if self.result:
            out["result"] = json.loads(self.result)
        return out


@dataclass
class BundleRow:
    id: str
    name: str | None
    version: str | None
    sequence: int | None
    state: str
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

    def index(self) -> Any:
        from ..bundle.index import BundleIndex

        assert self.index_json is not None
        return BundleIndex.from_bytes(self.index_json)


def disk_full(e: BaseException) -> bool:
    """Is ``e`` "no space left": ENOSPC/EDQUOT from a file write, or SQLITE_FULL from the journal?"""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(e)
    return False


def _preallocate(path: Path, size: int) -> None:
    """Make ``path`` at least ``size`` bytes of allocated blocks (best effort: a full disk leaves it smaller)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < size:
                os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        pass


def _padded_json(data: bytes) -> Any:
    """A JSON value written in place and padded with spaces (or still the zeros of a pre-allocation)."""
    data = data.strip(b"\0 \n")
    return json.loads(data) if data else None


class PipelineLock:
    """``state_dir/pipeline.lock``: one pipeline at a time per state dir (flock, so it is released when the
    process dies however it dies) plus an owner record, the bundle the holder runs now, written in place at the
    start of the (pre-sized) file so it needs no new disk space. :func:`probe` reads both from another process."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / PIPELINE_LOCK
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
            self.owner(None)  # whatever a killed holder left there is not true any more
            try:
                yield
            finally:
                self.owner(None)
                self._fd = None
        finally:
            os.close(fd)

    def owner(self, bundle_id: str | None) -> None:
        """Record which bundle the holder runs now (None: none). Best effort; status copes without it."""
        if self._fd is None:
            return
        rec = json.dumps({"pid": os.getpid(), "bundle": bundle_id}).encode() if bundle_id else b""
        try:
            if os.fstat(self._fd).st_size < _OWNER_BYTES:
                os.posix_fallocate(self._fd, 0, _OWNER_BYTES)
            os.pwrite(self._fd, rec.ljust(_OWNER_BYTES), 0)
        except OSError:
            pass

    @staticmethod
    @contextmanager
    def probe(state_dir: Path) -> Iterator[tuple[bool, str | None]]:
        """Yields (busy, bundle): whether a pipeline runs on ``state_dir`` now and which bundle (None: unknown).
        While not busy it holds a shared lock for the body, so no pipeline can start and change rows meanwhile."""
        try:
            fd = os.open(Path(state_dir) / PIPELINE_LOCK, os.O_RDONLY)
        except OSError:
            yield False, None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                busy = False
            except OSError:
                busy = True
            owner = None
            if busy:
                try:
                    owner = (_padded_json(os.pread(fd, _OWNER_BYTES, 0)) or {}).get("bundle")
                except (OSError, ValueError, AttributeError):
                    owner = None
            yield busy, owner
        finally:
            os.close(fd)  # releases the shared lock


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Database:
    """Thread-local sqlite connections to one file (servers read while the pipeline writes)."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self._schema_current():  # no write when it is: `agent status` must work on a full disk
                self.conn().executescript(_SCHEMA)  # executescript manages its own transaction
                with self.tx() as c:
                    cols = {r["name"] for r in c.execute("PRAGMA table_info(steps)")}
                    if "result" not in cols:  # schema 1 (before apply results)
                        c.execute("ALTER TABLE steps ADD COLUMN result TEXT")
                    c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('schema', ?)",
                              (str(SCHEMA_VERSION),))
            _preallocate(self.fallback_path, FALLBACK_BYTES)

    def _schema_current(self) -> bool:
        try:
            row = self.conn().execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:  # a new database: no meta table yet
            return False
        return row is not None and row[0] == str(SCHEMA_VERSION)

    @property
    def fallback_path(self) -> Path:
        return self.path.with_name(FALLBACK_NAME)

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.readonly:
                c = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            else:
                c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                c.execute("PRAGMA journal_mode=WAL")
                c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            c.row_factory = sqlite3.Row
            self._local.conn = c
        return c

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            # a failed COMMIT (SQLITE_FULL) has usually rolled back already: never hide the error behind
            # "cannot rollback - no transaction is active"
            if c.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    c.execute("ROLLBACK")
            raise

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, args).fetchall()

    def state_counts(self) -> dict[str, int]:
        """Bundles by state as the journal rows say (``/healthz`` and the Prometheus gauge)."""
        return {r["state"]: r["n"] for r in self.query("SELECT state, COUNT(*) AS n FROM bundles GROUP BY state")}

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


class Journal:
    """Bundles, their steps, history and seen drops."""

    def __init__(self, db: Database):
        self.db = db
        self.unrecorded: dict[str, dict[str, Any]] = {}  # failures the journal could not take (this process)

    # ---------------------------------------------------------------- bundles

    def bundle(self, bundle_id: str) -> BundleRow | None:
        rows = self.db.query("SELECT * FROM bundles WHERE id=?", (bundle_id,))
        return BundleRow(**{k: rows[0][k] for k in rows[0].keys()}) if rows else None  # noqa: SIM118

    def bundles(self, states: tuple[str, ...] | None = None) -> list[BundleRow]:
        sql = "SELECT * FROM bundles"
        args: tuple[Any, ...] = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        rows = self.db.query(sql + " ORDER BY received_at, id", args)
        return [BundleRow(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

    def admit(self, bundle_id: str, index: Any, index_bytes: bytes, source: str, signer: str | None,
              steps: list[str]) -> None:
        """Record a verified bundle and its step plan (a re-admitted bundle keeps its finished steps)."""
        now = time.time()
        with self.db.tx() as c:
            prev = c.execute("SELECT state FROM bundles WHERE id=?", (bundle_id,)).fetchone()
            if prev is not None and prev["state"] == QUARANTINED:  # a good copy of a bundle refused before
                c.execute("DELETE FROM steps WHERE bundle_id=?", (bundle_id,))
            c.execute(
                """INSERT INTO bundles(id, name, version, sequence, state, verified, source, signer, size, created,
                   expires, received_at, updated_at, index_json) VALUES(?,?,?,?,?,1,?,?,?,?,?,?,?,?)
                   ON CONFLICT(id) DO UPDATE SET state=excluded.state, verified=1, source=excluded.source,
                   signer=excluded.signer, updated_at=excluded.updated_at, reason=NULL, detail=NULL,
                   index_json=excluded.index_json""",
                (bundle_id, index.name, index.version, index.sequence, RECEIVED, source, signer, index.total_size,
                 index.created, index.expires, now, now, index_bytes))
            self._plan(c, bundle_id, steps)
            self._event(c, bundle_id, index.name, index.version, "received", f"from {source}, signed by {signer}")

    def replan(self, bundle_id: str, steps: list[str]) -> None:
        with self.db.tx() as c:
            self._plan(c, bundle_id, steps)

    @staticmethod
    def _plan(c: sqlite3.Connection, bundle_id: str, steps: list[str]) -> None:
        have = {r["name"]: r["state"] for r in c.execute("SELECT name, state FROM steps WHERE bundle_id=?",
                                                          (bundle_id,))}
        for pos, name in enumerate(steps):
            if name in have:
                c.execute("UPDATE steps SET position=? WHERE bundle_id=? AND name=?", (pos, bundle_id, name))
                if have[name] in (STEP_FAILED, STEP_RUNNING):
                    c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND name=?", (PENDING, bundle_id, name))
            else:
                c.execute("INSERT INTO steps(bundle_id, position, name, state) VALUES(?,?,?,?)",
                          (bundle_id, pos, name, PENDING))
        stale = [n for n in have if n not in steps and have[n] not in (DONE, SKIPPED)]
        for name in stale:  # a step no longer planned (config changed) and never finished
            c.execute("UPDATE steps SET state=?, detail=? WHERE bundle_id=? AND name=?",
                      (SKIPPED, "no longer planned", bundle_id, name))

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
                    (bundle_id, name, version, sequence, QUARANTINED, int(verified), source, now, now, reason,
                     detail, index_bytes if verified else None))
            elif row["state"] != COMPLETE and verified:  # an unverified copy never changes a verified record
                c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=?, source=? WHERE id=?",
                          (QUARANTINED, reason, detail, now, source, bundle_id))
                c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND state IN (?,?)",
                          (SKIPPED, bundle_id, PENDING, STEP_RUNNING))
            self._event(c, bundle_id, name, version, "quarantined", f"{reason}: {detail}")

    def part_done(self, bundle_id: str, part: int, source: str) -> None:
        """A part of a split bundle is ingested (its blobs and segments are in the store, fsynced)."""
        with self.db.tx() as c:
            c.execute("INSERT OR REPLACE INTO parts(bundle_id, part, source, at) VALUES(?,?,?,?)",
                      (bundle_id, part, source, time.time()))

    def parts_done(self, bundle_id: str) -> dict[int, str]:
        return {r["part"]: r["source"] for r in self.db.query("SELECT part, source FROM parts WHERE bundle_id=?",
                                                               (bundle_id,))}

    def set_state(self, bundle_id: str, state: str, reason: str | None = None, detail: str | None = None) -> None:
        now = time.time()
        with self.db.tx() as c:
            c.execute("UPDATE bundles SET state=?, reason=?, detail=?, updated_at=?, "
                      "completed_at=CASE WHEN ?='complete' THEN ? ELSE completed_at END WHERE id=?",
                      (state, reason, detail, now, state, now, bundle_id))
            if state == COMPLETE:
                r = c.execute("SELECT name, version FROM bundles WHERE id=?", (bundle_id,)).fetchone()
                self._event(c, bundle_id, r["name"], r["version"], "complete", None)
        self.unrecorded.pop(bundle_id, None)  # the journal has the bundle's state again

    def superseded_by(self, bundle_id: str) -> BundleRow | None:
        """A bundle of the same name admitted after this one (a newer version, or an allowed rollback)."""
        me = self.bundle(bundle_id)
        if me is None or me.name is None:
            return None
        rows = self.db.query("SELECT * FROM bundles WHERE name=? AND id<>? AND verified=1 AND state<>? AND "
                             "received_at>? ORDER BY received_at DESC LIMIT 1",
                             (me.name, bundle_id, QUARANTINED, me.received_at or 0))
        return BundleRow(**{k: rows[0][k] for k in rows[0].keys()}) if rows else None  # noqa: SIM118

    def max_sequence(self, name: str, exclude: str) -> int | None:
        """Highest sequence of a verified, not refused bundle of this name (rollback protection)."""
        rows = self.db.query("SELECT MAX(sequence) AS s FROM bundles WHERE name=? AND id<>? AND verified=1 "
                             "AND state<>?", (name, exclude, QUARANTINED))
        return rows[0]["s"] if rows and rows[0]["s"] is not None else None

    # ---------------------------------------------------------------- steps

    def steps(self, bundle_id: str) -> list[Step]:
        rows = self.db.query("SELECT * FROM steps WHERE bundle_id=? ORDER BY position", (bundle_id,))
        return [Step(**{k: r[k] for k in r.keys()}) for r in rows]  # noqa: SIM118

    def step_started(self, bundle_id: str, name: str) -> None:
        now = time.time()
        with self.db.tx() as c:
            c.execute("UPDATE steps SET state=?, attempts=attempts+1, started_at=?, finished_at=NULL, detail=NULL "
                      "WHERE bundle_id=? AND name=?", (STEP_RUNNING, now, bundle_id, name))
            c.execute("UPDATE bundles SET state=?, updated_at=?, reason=NULL, detail=? WHERE id=?",
                      (RUNNING, now, f"step {name}", bundle_id))

    def step_finished(self, bundle_id: str, name: str, state: str, detail: str | None,
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
            if state in (PENDING, STEP_FAILED) and last is not None and (last["event"], last["detail"]) == (
                    event, detail):
                return
            r = c.execute("SELECT name, version FROM bundles WHERE id=?", (bundle_id,)).fetchone()
            self._event(c, bundle_id, r["name"], r["version"], event, detail)

    def step_progress(self, bundle_id: str, name: str, detail: str) -> None:
        """What a running step is doing now (shown by ``agent status``; replaced when it finishes)."""
        with self.db.tx() as c:
            c.execute("UPDATE steps SET detail=? WHERE bundle_id=? AND name=? AND state=?",
                      (detail, bundle_id, name, STEP_RUNNING))

    def reset_steps(self, bundle_id: str, names: list[str]) -> int:
        """Make finished steps run again (``agent apply``); returns how many were reset."""
        with self.db.tx() as c:
            n = 0
            for name in names:
                n += c.execute("UPDATE steps SET state=? WHERE bundle_id=? AND name=? AND state<>?",
                               (PENDING, bundle_id, name, STEP_RUNNING)).rowcount
        return n

    def recover(self) -> int:
        """After a crash: steps left ``running`` go back to ``pending`` (they are idempotent)."""
        with self.db.tx() as c:
            n = c.execute("UPDATE steps SET state=? WHERE state=?", (PENDING, STEP_RUNNING)).rowcount
        return n

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
        return [{"at": _iso(r["at"]), "bundle": r["bundle_id"], "name": r["name"], "version": r["version"],
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
        """Keep a failure the journal could not record: in memory and in the pre-allocated ``journal.fallback``
        (module docstring). Never raises; returns whether the file took it."""
        entry = {"at": time.time(), "step": step, "reason": reason, "detail": detail, "stepDetail": step_detail}
        self.unrecorded[bundle_id] = entry
        notes = {k: v for k, v in self.fallback_notes().items() if k != bundle_id}
        notes[bundle_id] = entry
        while True:
            data = json.dumps(dict(list(notes.items())[-_FALLBACK_KEEP:]), ensure_ascii=False).encode()
            if len(data) <= FALLBACK_BYTES or len(notes) <= 1:
                break
            notes.pop(next(iter(notes)))
        if len(data) > FALLBACK_BYTES:
            return False
        try:
            fd = os.open(self.db.fallback_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data.ljust(FALLBACK_BYTES), 0)  # in place: the blocks are allocated already
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def fallback_notes(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.db.fallback_path, "rb") as f:
                notes = _padded_json(f.read())
        except (OSError, ValueError):
            return {}
        return notes if isinstance(notes, dict) else {}

    # ---------------------------------------------------------------- reports

    def status(self) -> list[dict[str, Any]]:
        """What ``agent status`` shows. A ``running`` row is shown running only while a pipeline holds the lock
        for that bundle; otherwise ``failed`` with the reason from ``journal.fallback``, or ``interrupted``."""
        with PipelineLock.probe(self.db.path.parent) as (busy, owner):
            rows = self.bundles()
            steps = {b.id: [s.json() for s in self.steps(b.id)] for b in rows}
        stale = [b for b in rows if b.state == RUNNING]
        if busy and stale:  # the holder's bundle is live (one that could not say which: the latest one)
            live = owner or max(stale, key=lambda b: b.updated_at or 0).id
            stale = [b for b in stale if b.id != live]
        notes = self.fallback_notes() if stale else {}
        shown = {b.id: _unowned(b, steps[b.id], notes.get(b.id)) for b in stale}
        out = []
        for b in rows:
            state, reason, detail = shown.get(b.id, (b.state, b.reason, b.detail))
            comps: list[dict[str, Any]] = []
            extra: dict[str, Any] = {}
            if b.index_json:
                idx = json.loads(b.index_json)
                if idx.get("parts"):
                    n = idx["parts"]["count"]
                    have = sorted(self.parts_done(b.id))
                    extra["parts"] = {"of": n, "received": have,
                                      "missing": missing_parts(n, have)}
                for kind, items in (idx.get("components") or {}).items():
                    for item in items:
                        comps.append({"kind": kind[:-1], "ref": item["ref"], "digest": item["digest"],
                                      **({"name": item["name"]} if "name" in item else {})})
            out.append({
                "id": b.id, "digest": b.id, "name": b.name, "version": b.version, "sequence": b.sequence,
                "state": state, "verified": bool(b.verified), "source": b.source, "signer": b.signer,
                "size": b.size, "created": b.created, "expires": b.expires, "receivedAt": _iso(b.received_at),
                "updatedAt": _iso(b.updated_at), "completedAt": _iso(b.completed_at), "reason": reason,
                "detail": detail, "steps": steps[b.id], "components": comps, **extra,
            })
        return out


def _unowned(b: BundleRow, steps: list[dict[str, Any]], note: dict[str, Any] | None) -> tuple[str, str, str]:
    """(state, reason, detail) to show for a ``running`` row no pipeline runs; fixes up ``steps`` in place."""
    if note is not None and float(note.get("at") or 0) >= (b.updated_at or 0):
        for s in steps:
            if s["name"] == note.get("step") or (note.get("step") is None and s["state"] == STEP_RUNNING):
                s["state"], s["detail"] = STEP_FAILED, note.get("stepDetail")
        return (FAILED, note.get("reason") or "step-failed",
                f"{note.get('detail')} (kept in {FALLBACK_NAME}: the journal could not be written)")
    for s in steps:
        if s["state"] == STEP_RUNNING:
            s["state"] = INTERRUPTED
    return (INTERRUPTED, "interrupted",
            f"{b.detail or 'a step'} was running when the agent stopped or could not write its journal (no reason "
            "recorded: see the agent log); it resumes on the next run")


def missing_parts(count: int, have: Iterable[int]) -> list[int]:
    """Part numbers 1..count not in ``have`` (what a split bundle still waits for)."""
    got = set(have)
    return [k for k in range(1, count + 1) if k not in got]
