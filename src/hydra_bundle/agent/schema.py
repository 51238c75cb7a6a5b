"""The state database's schema, put together from the modules that own its tables, and its migrations.

The version lives in ``meta(key='schema')``. :func:`open_database` brings an older file up to date in one
transaction per migration (tables are only ever added to: an older agent can still read a newer file), and
writes nothing when the file is current, so ``agent status`` works on a full disk. A few migrations do not need a
framework (alembic and yoyo want their own tables and a migration directory on the stick); a new one is a
function appended to :data:`MIGRATIONS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from . import changes, journal, permits, published
from .db import Database

Migration = Callable[[sqlite3.Connection], None]


def _tables(c: sqlite3.Connection) -> None:
    c.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT)")
    for ddl in (journal.SCHEMA, published.SCHEMA):
        for statement in filter(str.strip, ddl.split(";")):
            c.execute(statement)


MIGRATIONS: list[Migration] = [
    _tables,                       # 1: the journal's and the published view's tables
    journal.add_step_results,      # 2: steps.result
    published.rename_to_site_names,  # 3: repositories keep their upstream host
    permits.add_permits,           # 4: one-time downgrade permits (agent rollback)
    changes.add_changes,           # 5: who moved a bundle name where (agent history)
]
VERSION = len(MIGRATIONS)


def version(db: Database) -> int:
    try:
        row = db.query("SELECT value FROM meta WHERE key='schema'")
    except sqlite3.OperationalError:  # a new database: no meta table yet
        return 0
    return int(row[0][0]) if row else 0


def migrate(db: Database) -> int:
    """Apply the migrations this file lacks; returns how many ran."""
    have = version(db)
    for n, step in enumerate(MIGRATIONS[have:], have + 1):
        with db.tx() as c:
            step(c)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('schema', ?)", (str(n),))
    return max(VERSION - have, 0)


def open_database(path: Path, readonly: bool = False) -> Database:
    """The state database at ``path``, migrated (unless ``readonly``), with its fallback file pre-allocated."""
    db = Database(path, readonly)
    if not readonly:
        migrate(db)
        journal.Journal(db).fallback.prepare()
    return db
