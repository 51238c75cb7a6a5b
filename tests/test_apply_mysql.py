"""SQL seed rows against a real MariaDB (Debian mariadb-server, private datadir): idempotent, one transaction,
utf8mb4 round trip of the runbook's vendor names, password from a file, retries while the server is down."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hydra_bundle.apply.runtime import Runtime
from hydra_bundle.apply.site import SiteConfig
from hydra_bundle.apply.step import ProgressEvent
from hydra_bundle.apply.steps import SqlStep
from hydra_bundle.errors import ApplyError, TransientError
from hydra_bundle.k8s.objects import BundleInfo
from hydra_bundle.spec.deploy import SqlSeed

pytestmark = pytest.mark.slow

PASSWORD = "pä$$ w0rd;--"
VENDOR_TABLE = """CREATE TABLE IF NOT EXISTS vendor (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(64) NOT NULL,
  display_name JSON NULL,
  enabled TINYINT(1) NOT NULL DEFAULT 1,
  weight DOUBLE NULL
) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"""

ROWS: list[dict[str, Any]] = [
    {"name": "alibaba", "display_name": {"enUS": "Alibaba", "zhCN": "通义千问"}, "enabled": True},
    {"name": "deepseek", "display_name": {"enUS": "DeepSeek", "zhCN": "深度求索"}, "enabled": True, "weight": 1.5},
]


def prepare(db: Any, tmp_path: Path, database: str) -> SiteConfig:
    db.create_user("hydra", PASSWORD, database)
    db.execute(VENDOR_TABLE, database=database)
    pw = tmp_path / "mysql.password"
    pw.write_text(PASSWORD + "\n", encoding="utf-8")
    return SiteConfig.model_validate({
        "cluster_name": "c", "domain": "cn-sh-a1", "registry": "10.0.0.5:5000", "file_server": "http://10.0.0.5:81",
        "mysql": {"dsn": f"mysql://hydra@127.0.0.1:{db.port}/{database}", "password_file": str(pw),
                  "connect_timeout": 2}})


def seed_step(rows: list[dict[str, Any]] = ROWS, timeout: float = 30) -> SqlStep:
    return SqlStep("sql", SqlSeed.model_validate({"tables": [{"table": "vendor", "key": ["name"], "rows": rows}]}),
                   timeout=timeout)


def table(db: Any, database: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT name, display_name, enabled, weight FROM vendor ORDER BY id", database=database)


def test_seed_is_idempotent_and_chinese_names_round_trip(mariadb_server: Any, tmp_path: Path) -> None:
    site = prepare(mariadb_server, tmp_path, "hydra_idem")
    rt = Runtime(site, BundleInfo("hydra-ws", "1.0.0"))
    events: list[ProgressEvent] = []
    first = seed_step().run(rt, events.append)
    assert first.state == "done"
    assert first.changes == ["inserted hydra_idem.vendor name='alibaba'", "inserted hydra_idem.vendor name='deepseek'"]
    assert [(e.done, e.total) for e in events] == [(1, 2), (2, 2)]
    rows = table(mariadb_server, "hydra_idem")
    assert len(rows) == 2
    assert json.loads(rows[0][1]) == {"enUS": "Alibaba", "zhCN": "通义千问"}
    assert rows[0][1] == '{"enUS": "Alibaba", "zhCN": "通义千问"}'  # stored as written in the runbook, not \\u escapes
    assert rows[1][3] == 1.5
    raw = mariadb_server.execute("SELECT HEX(JSON_VALUE(display_name, '$.zhCN')) FROM vendor WHERE name='alibaba'",
                                 database="hydra_idem")[0][0]
    assert bytes.fromhex(raw).decode("utf-8") == "通义千问"  # real UTF-8 in the server, not mojibake

    second = seed_step().run(rt)
    assert second.changes == [] and second.summary == "2 row(s): 0 written, 2 already up to date (one transaction)"
    assert table(mariadb_server, "hydra_idem") == rows

    changed = [dict(ROWS[0], display_name={"enUS": "Alibaba Cloud", "zhCN": "通义千问"}), ROWS[1]]
    third = seed_step(changed).run(rt)
    assert third.changes == ["updated hydra_idem.vendor name='alibaba': display_name"]
    assert len(table(mariadb_server, "hydra_idem")) == 2


def test_one_transaction_interrupted_leaves_nothing_and_rerun_writes_each_row_once(mariadb_server: Any,
                                                                                   tmp_path: Path) -> None:
    site = prepare(mariadb_server, tmp_path, "hydra_crash")
    rt = Runtime(site, BundleInfo("hydra-ws", "1.0.0"))

    class Crash(Exception):
        pass

    def crash_after_first_row(e: ProgressEvent) -> None:
        if e.done == 1:
            raise Crash()

    with pytest.raises(Crash):
        seed_step().run(rt, crash_after_first_row)
    assert table(mariadb_server, "hydra_crash") == []
    assert seed_step().run(rt).changes == ["inserted hydra_crash.vendor name='alibaba'",
                                           "inserted hydra_crash.vendor name='deepseek'"]
    assert seed_step().run(rt).changes == []
    assert [r[0] for r in table(mariadb_server, "hydra_crash")] == ["alibaba", "deepseek"]


def test_errors_are_clear_and_never_show_the_password(mariadb_server: Any, tmp_path: Path) -> None:
    site = prepare(mariadb_server, tmp_path, "hydra_err")
    rt = Runtime(site, BundleInfo("hydra-ws", "1.0.0"))
    mariadb_server.execute("INSERT INTO vendor (name) VALUES ('dup'), ('dup')", database="hydra_err")
    with pytest.raises(ApplyError, match=r"2 rows match name='dup'; the declared key does not identify one row"):
        seed_step([{"name": "dup", "enabled": False}]).run(rt)
    missing = SqlStep("sql", SqlSeed.model_validate({"tables": [{"table": "vendors", "key": ["name"],
                                                                 "rows": [{"name": "x"}]}]}))
    with pytest.raises(ApplyError, match=r"MySQL error 1146: .*vendors.* doesn't exist \(does the table exist"):
        missing.run(rt)
    assert site.mysql is not None and site.mysql.password_file is not None
    site.mysql.password_file.write_text("wrong")
    log: list[str] = []
    with pytest.raises(ApplyError) as ei:
        seed_step().run(Runtime(site, BundleInfo("x", "1"), log=log.append))
    assert "1045" in str(ei.value) and "Access denied for user 'hydra'" in str(ei.value)
    assert PASSWORD not in str(ei.value) and "wrong" not in str(ei.value) and not any("wrong" in m for m in log)
    assert PASSWORD not in repr(site) and PASSWORD not in site.model_dump_json()


def test_database_down_at_start_is_retried_and_converges(mariadb_factory: Any, tmp_path: Path) -> None:
    db = mariadb_factory()
    db.create_user("hydra", PASSWORD, "hydra")
    db.execute(VENDOR_TABLE, database="hydra")
    db.stop()  # down when the agent starts the step
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    site = SiteConfig.model_validate({
        "cluster_name": "c", "domain": "cn-sh-a1", "registry": "10.0.0.5:5000", "file_server": "http://10.0.0.5:81",
        "mysql": {"dsn": f"mysql://hydra@127.0.0.1:{db.port}/hydra", "password_file": str(pw), "connect_timeout": 2}})
    log: list[str] = []
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=seed_step(timeout=60).run(
        Runtime(site, BundleInfo("hydra-ws", "1.0.0"), log=log.append))), daemon=True)
    t.start()
    time.sleep(2.0)
    assert t.is_alive() and any("MySQL" in m or "Can't connect" in m for m in log), log
    assert all(PASSWORD not in m for m in log)
    db.start()
    t.join(60)
    assert out["r"].state == "done" and len(out["r"].changes) == 2
    assert [r[0] for r in table(db, "hydra")] == ["alibaba", "deepseek"]

    db.stop()
    t0 = time.monotonic()
    with pytest.raises(TransientError, match=r"sql: mysql://hydra@127.0.0.1:\d+/hydra: not reachable after"):
        seed_step(timeout=2).run(Runtime(site, BundleInfo("hydra-ws", "1.0.0")))
    assert time.monotonic() - t0 < 15
