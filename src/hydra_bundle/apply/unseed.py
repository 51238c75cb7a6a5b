"""``agent remove --purge``: delete the rows a bundle's ``sql`` steps seeded, by their declared key columns, in one
transaction. Only rows matching a declared key are touched (the same NULL-safe match the seed uses), so rows an
application added itself stay; a second run finds nothing and changes nothing. Tables are never dropped (Hydra
creates them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pymysql.err

from ..errors import ApplyError
from ..retry import Deadline
from ..spec.deploy import SqlSeed
from .mysql import _msg, in_transaction, q, target_database, to_db
from .site import MySQLSite


def declared_rows(m: MySQLSite | None, seeds: list[SqlSeed]) -> list[tuple[str, str, dict[str, object]]]:
    """(database, table, {key column: value}) of every seeded row, without duplicates, in seed order."""
    out: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, object]] = {}
    for s in seeds:
        db = (target_database(m, s) if m is not None else s.database) or "(site.mysql database)"
        for t in s.tables:
            for row in t.rows:
                key = {k: row[k] for k in t.key}
                out.setdefault((db, t.table, tuple((k, repr(v)) for k, v in key.items())), key)
    return [(db, table, key) for (db, table, _), key in out.items()]


def describe(db: str, table: str, key: dict[str, object]) -> str:
    return f"{db}.{table} " + ", ".join(f"{k}={v!r}" for k, v in key.items())


def delete_rows(m: MySQLSite, seeds: list[SqlSeed], deadline: Deadline, sleep: Callable[[float], None],
                log: Callable[[str], None]) -> list[str]:
    """Delete every declared row (one transaction; connection failures retried until ``deadline``). Returns what
    was deleted."""
    rows = declared_rows(m, seeds)

    def body(cur: Any) -> list[str]:
        done = []
        for db, table, key in rows:
            where = " AND ".join(f"{q(k)} <=> %s" for k in key)
            try:
                n = cur.execute(f"DELETE FROM {q(db)}.{q(table)} WHERE {where}", [to_db(v) for v in key.values()])
            except pymysql.err.ProgrammingError as e:
                if e.args and e.args[0] == 1146:  # the table is gone: so are its rows
                    continue
                raise
            if n:
                done.append(f"deleted {describe(db, table, key)}" + (f" ({n} rows)" if n > 1 else ""))
        return done

    try:
        return in_transaction(m, None, body, deadline, sleep, log)
    except pymysql.err.MySQLError as e:
        code = e.args[0] if e.args else "?"
        raise ApplyError(f"sql: {m.safe_dsn}: MySQL error {code}: {_msg(e)}") from None
