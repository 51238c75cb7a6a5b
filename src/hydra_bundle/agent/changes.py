"""Who moved a bundle name where, and when: one row per install, upgrade, rollback and remove (``agent history``).

The journal's ``history`` table says what each run did step by step; this table answers the operator's question
"which version of NAME runs here, since when, and who put it there". A row is written when a run has published a
bundle that is not what the name ran before (:func:`after_run`, called by the pipeline after every run: a drop
picked up by the daemon, ``agent ingest``, ``agent rollback``), and by ``agent remove``. The operator is the user
running the command (behind ``sudo``: the user who ran sudo); for the daemon, the agent's service user.
"""

from __future__ import annotations

import getpass
import os
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..states import FINISHED
from .journal import Journal, iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS changes(
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, name TEXT NOT NULL, action TEXT NOT NULL,
  from_bundle TEXT, from_version TEXT, to_bundle TEXT, to_version TEXT, operator TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS changes_name ON changes(name, id);
"""


class Action(StrEnum):
    INSTALL = "install"      # the name ran nothing before (or was removed)
    UPGRADE = "upgrade"      # to a higher sequence
    ROLLBACK = "rollback"    # to a lower sequence (a one-time permit, or allow_downgrade)
    REMOVE = "remove"        # `agent remove`: nothing of the name runs any more


def add_changes(c: sqlite3.Connection) -> None:
    """Migration: the ``changes`` table."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        c.execute(statement)


def operator() -> str:
    """Who runs this command: the user behind sudo if any, else the login name."""
    for var in ("SUDO_USER", "USER", "LOGNAME"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass
class Change:
    id: int
    at: float
    name: str
    action: Action
    from_bundle: str | None
    from_version: str | None
    to_bundle: str | None
    to_version: str | None
    operator: str | None
    detail: str | None

    def json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "name": self.name, "action": str(self.action), "from": self.from_version,
                "to": self.to_version, "fromBundle": self.from_bundle, "toBundle": self.to_bundle,
                "operator": self.operator, "detail": self.detail}

    def text(self) -> str:
        where = f"{self.from_version or '-'} → {self.to_version or '-'}"
        return f"{iso(self.at)}  {self.name:<20} {self.action:<8} {where:<24} by {self.operator or '?'}" + (
            f"  ({self.detail})" if self.detail else "")


def _change(r: sqlite3.Row) -> Change:
    d = {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row
    d["action"] = Action(d["action"])
    return Change(**d)


def changes(j: Journal, name: str | None = None, limit: int = 100) -> list[Change]:
    """The latest ``limit`` changes (of ``name``), oldest first."""
    where, args = ("WHERE name=? ", (name,)) if name else ("", ())
    rows = j.db.query(f"SELECT * FROM changes {where}ORDER BY id DESC LIMIT ?", (*args, limit))
    return [_change(r) for r in reversed(rows)]


def last(j: Journal, name: str) -> Change | None:
    rows = j.db.query("SELECT * FROM changes WHERE name=? ORDER BY id DESC LIMIT 1", (name,))
    return _change(rows[0]) if rows else None


def record(j: Journal, name: str, action: Action, frm: tuple[str | None, str | None],
           to: tuple[str | None, str | None], detail: str | None = None, user: str | None = None) -> Change:
    """Append a change (and the same as a history event, so ``agent history`` shows it in order)."""
    now, user = time.time(), user or operator()
    with j.db.tx() as c:
        cur = c.execute("INSERT INTO changes(at, name, action, from_bundle, from_version, to_bundle, to_version, "
                        "operator, detail) VALUES(?,?,?,?,?,?,?,?,?)", (now, name, action, *frm, *to, user, detail))
        c.execute("INSERT INTO history(at, bundle_id, name, version, event, detail) VALUES(?,?,?,?,?,?)",
                  (now, to[0] or frm[0], name, to[1] or frm[1], str(action),
                   f"{frm[1] or '-'} → {to[1] or '-'} by {user}" + (f": {detail}" if detail else "")))
        rid = int(cur.lastrowid or 0)
    return Change(rid, now, name, action, *frm, *to, user, detail)


def after_run(j: Journal, bundle_id: str, detail: str | None = None) -> Change | None:
    """Record the move to ``bundle_id`` once its publish step is done, unless it is already what the name runs."""
    me = j.bundle(bundle_id)
    if me is None or me.name is None:
        return None
    step = j.db.query("SELECT state FROM steps WHERE bundle_id=? AND name='publish'", (bundle_id,))
    if not step or step[0]["state"] not in FINISHED:
        return None
    prev = last(j, me.name)
    if prev is not None and prev.action != Action.REMOVE and prev.to_bundle == bundle_id:
        return None
    before = j.bundle(prev.to_bundle) if prev is not None and prev.to_bundle else None
    if prev is None or prev.action == Action.REMOVE or before is None:
        action = Action.INSTALL
    elif (me.sequence or 0) >= (before.sequence or 0):
        action = Action.UPGRADE
    else:
        action = Action.ROLLBACK
    frm = (before.id, before.version) if before is not None and action != Action.INSTALL else (None, None)
    return record(j, me.name, action, frm, (bundle_id, me.version), detail)
