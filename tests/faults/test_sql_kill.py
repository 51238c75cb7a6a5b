"""kill -9 of the agent inside the ``apply:sql`` step (between two INSERTs, before COMMIT, after COMMIT before the
journal knows) against a real MariaDB: after every kill the database holds all of the bundle's rows or none
(one transaction) and never a duplicate; after a restart the rows are exactly the declared ones, once.
(Kills in the kube steps are covered by tests/test_agent_apply.py.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Keys
from tests.faults.support import (
    SEED,
    TIMEOUT,
    FaultAgent,
    Tally,
    bundle_states,
    journal_status,
    rng,
    trials,
    wait_until,
)
from tests.support.agent import build_bundle

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

DB, USER, PASSWORD = "hydra_faults", "hydra_faults", "f4ults pw"
VENDORS = [{"name": f"vendor-{i:02d}", "display_name": {"enUS": f"Vendor {i}", "zhCN": f"厂商{i}"}, "rank": i}
           for i in range(30)]
MODELS = [{"vendor": f"vendor-{i % 30:02d}", "model": f"model-{i:02d}", "ctx": 1024 * (i + 1)} for i in range(30)]
ROWS = len(VENDORS) + len(MODELS)
POINTS = ["sql-mid-rows", "sql-before-commit", "sql-after-commit"]


def tables(db: Any) -> None:
    db.execute(f"DROP DATABASE IF EXISTS `{DB}`")
    db.create_user(USER, PASSWORD, DB)
    db.execute("CREATE TABLE vendor (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
               "display_name JSON NULL, `rank` INT) CHARACTER SET utf8mb4", database=DB)
    db.execute("CREATE TABLE model (id INT AUTO_INCREMENT PRIMARY KEY, vendor VARCHAR(64) NOT NULL, "
               "model VARCHAR(64) NOT NULL, ctx INT)", database=DB)


def rows_state(db: Any) -> tuple[int, int]:
    """(rows, duplicated keys) over both tables."""
    n = sum(db.execute(f"SELECT COUNT(*) FROM {t}", database=DB)[0][0] for t in ("vendor", "model"))
    dup = db.execute("SELECT COUNT(*) FROM (SELECT name FROM vendor GROUP BY name HAVING COUNT(*) > 1) d",
                     database=DB)[0][0]
    dup += db.execute("SELECT COUNT(*) FROM (SELECT vendor, model FROM model GROUP BY vendor, model "
                      "HAVING COUNT(*) > 1) d", database=DB)[0][0]
    return n, dup


@pytest.fixture(scope="module")
def sql_bundle(fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sql-bundle")
    (d / "notes.txt").write_text("rows for the vendor and model tables\n")
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "sqlkill", "version": "1.0.0", "sequence": 1},
            "files": [{"name": "notes", "path": "notes.txt"}],
            "deploy": {"steps": [{"sql": {"tables": [{"table": "vendor", "key": ["name"], "rows": VENDORS},
                                                     {"table": "model", "key": ["vendor", "model"],
                                                      "rows": MODELS}]}}]}}
    out = d / "sqlkill.tar"
    build_bundle(d, spec, fault_keys.key, out, set())
    return out


def sql_trial(root: Path, bundle: Path, keys: Keys, db: Any, site: dict[str, Any], r: Any, tally: Tally,
              kills: Counter[str]) -> None:
    """Kill once or twice inside the sql step, then let it finish; check the rows after each kill and at the end."""
    tables(db)
    agent = FaultAgent(root, [keys.pub], site=site)
    done = lambda: bundle_states(agent.state).get("sqlkill 1.0.0") == "complete"  # noqa: E731
    try:
        for k in range(r.choice([1, 2])):
            point = r.choice(POINTS)
            fault = f"{point}@{r.randint(1, ROWS)}" if point == "sql-mid-rows" else point
            agent.start_armed(fault)
            if k == 0:
                agent.wait_healthy()
                agent.drop_file(bundle)
            wait_until(lambda: agent.exited() is not None or done(), 60, f"kill at {fault}\n{agent.log_tail()}")
            rc = agent.reap()
            if rc is None:  # not reached (the step was already done)
                agent.stop()
                break
            assert rc == -9, agent.log_tail()
            kills[point] += 1
            tally.trials += 1
            n, dup = rows_state(db)
            assert dup == 0 and n in (0, ROWS), f"after kill at {fault}: {n} rows, {dup} duplicated (seed {SEED})"
            tally.refused += n == 0  # rolled back as a whole (else: committed as a whole); reported in the notes
        agent.start_armed(None)
        agent.wait_healthy()
        wait_until(done, 60, f"converged\n{agent.log_tail()}")
        steps = {s["name"]: s["state"] for s in journal_status(agent.state)[0]["steps"]}
        assert steps["apply:sql"] == "done", steps
    finally:
        agent.stop()
    assert rows_state(db) == (ROWS, 0)
    got = {n: (json.loads(dn), rank) for n, dn, rank in
           db.execute("SELECT name, display_name, `rank` FROM vendor", database=DB)}
    assert got == {v["name"]: (v["display_name"], v["rank"]) for v in VENDORS}
    tally.converged += 1


def test_kill9_inside_the_sql_step(sql_bundle: Path, fault_keys: Keys, mariadb_server: Any, tmp_path: Path) -> None:
    r = rng("sql-kill")
    want = trials(6)
    tally = Tally("kill -9 inside apply:sql (MariaDB: all rows or none, no duplicates)", na=("refused",))
    kills: Counter[str] = Counter()
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    site = {"cluster_name": "c1", "domain": "faults.local", "registry": "127.0.0.1:5000",
            "file_server": "http://127.0.0.1:81",
            "mysql": {"dsn": f"mysql://{USER}@127.0.0.1:{mariadb_server.port}/{DB}", "password_file": str(pw)}}
    runs = 0
    while tally.trials < want:
        runs += 1
        assert runs <= want * 3, f"only {tally.trials} kills in {runs} runs"
        sql_trial(tmp_path / f"t{runs}", sql_bundle, fault_keys, mariadb_server, site, r, tally, kills)
    tally.notes.append(f"{runs} runs; kills by point: " + ", ".join(f"{k} {v}" for k, v in sorted(kills.items())) +
                       f"; after {tally.refused} kills the transaction was rolled back as a whole, after the others "
                       f"committed as a whole ({ROWS} rows per bundle)")
    tally.save()
