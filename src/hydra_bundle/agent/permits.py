"""One-time downgrade permits: how ``agent rollback`` lets one older bundle publish again without the global
``allow_downgrade: true`` switch.

A permit names one bundle (by digest) and who granted it. The pipeline's rollback protection
(``Pipeline._admission_checks``, ``_before_publish_checks``) accepts that bundle's lower sequence while the
permit is **open**: not consumed, and no other bundle of the name has published since it was granted (a newer
version that arrived meanwhile voids it, so a rollback that never finished cannot later publish old content over
new). It is consumed once the bundle's ``publish`` step is done; every grant and use is in the history.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..states import FINISHED
from .journal import Journal, iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS permits(
  id INTEGER PRIMARY KEY AUTOINCREMENT, bundle_id TEXT NOT NULL, name TEXT NOT NULL, from_version TEXT,
  to_version TEXT, from_sequence INTEGER, to_sequence INTEGER, granted_by TEXT, granted_at REAL NOT NULL,
  consumed_at REAL);
CREATE INDEX IF NOT EXISTS permits_bundle ON permits(bundle_id);
"""


def add_permits(c: sqlite3.Connection) -> None:
    """Migration: the ``permits`` table."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        c.execute(statement)


@dataclass
class Permit:
    id: int
    bundle_id: str
    name: str
    from_version: str | None
    to_version: str | None
    from_sequence: int | None
    to_sequence: int | None
    granted_by: str | None
    granted_at: float
    consumed_at: float | None

    def json(self) -> dict[str, Any]:
        return {"bundle": self.bundle_id, "name": self.name, "from": self.from_version, "to": self.to_version,
                "fromSequence": self.from_sequence, "toSequence": self.to_sequence, "grantedBy": self.granted_by,
                "grantedAt": iso(self.granted_at), "consumedAt": iso(self.consumed_at)}


def _permit(r: sqlite3.Row) -> Permit:
    return Permit(**{k: r[k] for k in r.keys()})  # noqa: SIM118 - sqlite3.Row


def grant(j: Journal, bundle_id: str, name: str, from_version: str | None, to_version: str | None,
          from_sequence: int | None, to_sequence: int | None, user: str) -> Permit:
    now = time.time()
    with j.db.tx() as c:
        cur = c.execute("INSERT INTO permits(bundle_id, name, from_version, to_version, from_sequence, to_sequence, "
                        "granted_by, granted_at) VALUES(?,?,?,?,?,?,?,?)",
                        (bundle_id, name, from_version, to_version, from_sequence, to_sequence, user, now))
        pid = int(cur.lastrowid or 0)
        c.execute("INSERT INTO history(at, bundle_id, name, version, event, detail) VALUES(?,?,?,?,?,?)",
                  (now, bundle_id, name, to_version, "downgrade-permit",
                   f"one-time permit for sequence {to_sequence} below {from_sequence}, granted by {user}"))
    return Permit(pid, bundle_id, name, from_version, to_version, from_sequence, to_sequence, user, now, None)


def _latest_publish(j: Journal, name: str, exclude: str) -> float:
    """When another bundle of ``name`` last finished its publish step (0: never)."""
    rows = j.db.query("SELECT MAX(s.finished_at) AS t FROM steps s JOIN bundles b ON b.id = s.bundle_id "
                      "WHERE b.name=? AND b.id<>? AND s.name='publish' "
                      f"AND s.state IN ({','.join('?' * len(FINISHED))})", (name, exclude, *FINISHED))
    return float(rows[0]["t"] or 0) if rows else 0.0


def open_permit(j: Journal, bundle_id: str, name: str) -> Permit | None:
    """The bundle's open permit (module docstring), or None."""
    rows = j.db.query("SELECT * FROM permits WHERE bundle_id=? AND consumed_at IS NULL ORDER BY id DESC LIMIT 1",
                      (bundle_id,))
    if not rows:
        return None
    p = _permit(rows[0])
    return p if p.granted_at > _latest_publish(j, name, bundle_id) else None


def consume_if_published(j: Journal, bundle_id: str) -> Permit | None:
    """Close the bundle's open permits once its publish step is done (called after every run)."""
    rows = j.db.query("SELECT 1 FROM permits WHERE bundle_id=? AND consumed_at IS NULL LIMIT 1", (bundle_id,))
    if not rows:
        return None
    step = j.db.query("SELECT state FROM steps WHERE bundle_id=? AND name='publish'", (bundle_id,))
    if not step or step[0]["state"] not in FINISHED:
        return None
    now = time.time()
    with j.db.tx() as c:
        c.execute("UPDATE permits SET consumed_at=? WHERE bundle_id=? AND consumed_at IS NULL", (now, bundle_id))
        r = c.execute("SELECT name, version FROM bundles WHERE id=?", (bundle_id,)).fetchone()
        c.execute("INSERT INTO history(at, bundle_id, name, version, event, detail) VALUES(?,?,?,?,?,?)",
                  (now, bundle_id, r["name"] if r else None, r["version"] if r else None, "downgrade-permit-used",
                   "published under the one-time permit; the permit is closed"))
    return latest(j, bundle_id)


def latest(j: Journal, bundle_id: str) -> Permit | None:
    rows = j.db.query("SELECT * FROM permits WHERE bundle_id=? ORDER BY id DESC LIMIT 1", (bundle_id,))
    return _permit(rows[0]) if rows else None
