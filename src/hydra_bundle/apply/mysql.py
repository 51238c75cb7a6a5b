"""Seed rows into MySQL/MariaDB with pymysql: idempotent, one transaction, utf8mb4, retried connections.

For every declared row we ``SELECT … FOR UPDATE`` by its key columns (NULL-safe ``<=>``), then INSERT when
absent, UPDATE only the differing declared columns when present, nothing when equal. No unique index is
needed, a second run changes nothing, and a crash before COMMIT leaves the database untouched. dict/list
values are stored as JSON text (``ensure_ascii=False``: ``{"enUS": "Alibaba", "zhCN": "通义千问"}``).
The password comes from ``site.mysql.password_file`` and never appears in messages.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pymysql
import pymysql.cursors
import pymysql.err

from .. import retry
from ..errors import ApplyError, TransientError, brief
from ..retry import Deadline
from ..spec.deploy import SeedTable, SqlSeed
from .runtime import Runtime
from .site import MySQLSite

T = TypeVar("T")

# connection-level failures worth retrying: can't connect, gone away, lost, too many connections, lock timeouts
TRANSIENT_CODES = {1040, 1205, 1213, 2002, 2003, 2006, 2013, 2055}


def q(ident: str) -> str:
    """Backtick-quote an identifier (already validated as plain by the schema)."""
    return "`" + ident.replace("`", "``") + "`"


def to_db(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False)
    return v


def same(db_value: Any, declared: Any) -> bool:
    """Is the stored value equal to the declared one (JSON compared as data, bools as 0/1)?"""
    if declared is None or db_value is None:
        return declared is None and db_value is None
    if isinstance(declared, dict | list):
        if isinstance(db_value, bytes):
            db_value = db_value.decode("utf-8", "replace")
        try:
            return bool(json.loads(db_value) == declared)
        except (TypeError, ValueError):
            return False
    if isinstance(declared, bool):
        return str(db_value) in (("1", "True") if declared else ("0", "False"))
    if isinstance(declared, int | float) and not isinstance(db_value, str | bytes):
        try:
            return float(db_value) == float(declared)
        except (TypeError, ValueError):
            return False
    if isinstance(db_value, bytes):
        db_value = db_value.decode("utf-8", "replace")
    return str(db_value) == str(declared)


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, pymysql.err.OperationalError | pymysql.err.InternalError):
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        return code in TRANSIENT_CODES
    return isinstance(e, pymysql.err.InterfaceError | ConnectionError | TimeoutError)


def connect(m: MySQLSite, database: str | None) -> pymysql.connections.Connection:
    # bytes: pymysql would encode a str password as latin-1, the server hashed the UTF-8 bytes
    return pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password().encode("utf-8"),
                           database=database,
                           charset="utf8mb4", autocommit=False, connect_timeout=m.connect_timeout,
                           read_timeout=60, write_timeout=60)


def target_database(m: MySQLSite, seed: SqlSeed) -> str:
    db = seed.database or m.database
    if not db:
        raise ApplyError("sql: no database: set `database` in the sql step or in site.mysql.dsn")
    return db


def _seed_table(cur: pymysql.cursors.Cursor, db: str, t: SeedTable,
                progress: Callable[[str], None]) -> tuple[list[str], int]:
    changes: list[str] = []
    unchanged = 0
    table = f"{q(db)}.{q(t.table)}"
    for row in t.rows:
        cols = list(row)
        key_desc = ", ".join(f"{k}={row[k]!r}" for k in t.key)
        where = " AND ".join(f"{q(k)} <=> %s" for k in t.key)
        cur.execute(f"SELECT {', '.join(q(c) for c in cols)} FROM {table} WHERE {where} FOR UPDATE",
                    [to_db(row[k]) for k in t.key])
        found = cur.fetchall()
        if len(found) > 1:
            raise ApplyError(f"sql: {db}.{t.table}: {len(found)} rows match {key_desc}; the declared key does "
                             f"not identify one row")
        if not found:
            cur.execute(f"INSERT INTO {table} ({', '.join(q(c) for c in cols)}) VALUES "
                        f"({', '.join(['%s'] * len(cols))})", [to_db(row[c]) for c in cols])
            changes.append(f"inserted {db}.{t.table} {key_desc}")
        else:
            have = dict(zip(cols, found[0], strict=True))
            diff = [c for c in cols if c not in t.key and not same(have[c], row[c])]
            if diff:
                cur.execute(f"UPDATE {table} SET {', '.join(f'{q(c)} = %s' for c in diff)} WHERE {where}",
                            [to_db(row[c]) for c in diff] + [to_db(row[k]) for k in t.key])
                changes.append(f"updated {db}.{t.table} {key_desc}: {', '.join(diff)}")
            else:
                unchanged += 1
        progress(f"{db}.{t.table} {key_desc}")
    return changes, unchanged


def seed(m: MySQLSite, s: SqlSeed, deadline: Deadline, rt: Runtime,
         progress: Callable[[str, int, int], None]) -> tuple[list[str], int]:
    """Write every declared row in one transaction; retry connection failures with the shared backoff until
    ``deadline``. Returns (changes, number of rows already up to date)."""
    db = target_database(m, s)
    total = sum(len(t.rows) for t in s.tables)

    def body(cur: Any) -> tuple[list[str], int]:
        done = 0
        changes: list[str] = []
        unchanged = 0
        for t in s.tables:
            def tick(msg: str) -> None:
                nonlocal done
                done += 1
                progress(msg, done, total)
            c, u = _seed_table(cur, db, t, tick)
            changes += c
            unchanged += u
        return changes, unchanged

    def on_retry(note: str) -> None:
        rt.log(note)
        progress(note, 0, total)

    try:
        return in_transaction(m, db, body, deadline, rt.sleep, on_retry)
    except pymysql.err.MySQLError as e:  # not transient
        code = e.args[0] if e.args else "?"
        hint = " (does the table exist? Hydra creates it)" if code == 1146 else ""
        raise ApplyError(f"sql: {m.safe_dsn}: MySQL error {code}: {_msg(e)}{hint}") from None


def in_transaction(m: MySQLSite, database: str | None, body: Callable[[Any], T], deadline: Deadline,
                   sleep: Callable[[float], None], on_retry: Callable[[str], None]) -> T:
    """``body(cursor)`` in one transaction on a fresh connection: committed when it returns, rolled back when it
    raises. Connection failures are retried with the shared backoff until ``deadline`` (each retry announced
    through ``on_retry``), then a :class:`TransientError`; other MySQL errors reach the caller."""
    def attempt() -> T:
        conn = None
        try:
            conn = connect(m, database)
            with conn.cursor() as cur:
                out = body(cur)
            conn.commit()
            return out
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.rollback()
            raise
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def retrying(e: BaseException, seconds: float) -> None:
        on_retry(f"sql: {m.safe_dsn}: {_msg(e)}; retrying in {seconds:.1f}s")

    def give_up(e: BaseException, attempts: int) -> Exception:
        return TransientError(f"sql: {m.safe_dsn}: not reachable after {attempts} attempts: {_msg(e)}")

    return retry.call(attempt, transient=_is_transient, deadline=deadline, sleep=sleep, on_retry=retrying,
                      give_up=give_up)


def _msg(e: BaseException) -> str:
    if isinstance(e, pymysql.err.MySQLError) and len(e.args) >= 2:
        return brief(Exception(e.args[1]))
    return brief(e)
