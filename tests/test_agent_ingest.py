"""The agent's pipeline with real processes: settle, verify-first refusal, kill -9 resume, duplicates, rollback."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import yaml

from hydra_bundle.agent.store import Store
from hydra_bundle.bundle import INDEX_NAME
from hydra_bundle.bundle.reader import open_bundle
from hydra_bundle.bundle.sign import load_public_key
from hydra_bundle.bundle.tarreader import TarReader
from hydra_bundle.errors import VerifyError
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, run_cli, wait_for
from tests.support.agent_fixtures import Built, Keys, Site, sha256_file, store_files

agent_keys, agent_site, agent_bundles = (agent_fixtures.agent_keys, agent_fixtures.agent_site,
                                       agent_fixtures.agent_bundles)  # fixtures

pytestmark = pytest.mark.slow


def db_states(agent: AgentProc) -> dict[str, str]:
    """(name version) → state, read straight from the journal (fast enough to poll between writes)."""
    db = agent.state / "journal.db"
    if not db.exists():
        return {}
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {f"{n} {v}": s for n, v, s in c.execute("SELECT name, version, state FROM bundles")}
    finally:
        c.close()


def catalog(agent: AgentProc) -> list[str]:
    return httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"]


def tampered_copy(src: Path, dest: Path) -> None:
    """Flip one byte in the middle of the largest blob."""
    shutil.copyfile(src, dest)
    with open(dest, "rb") as f:
        entries = list(TarReader(f))
    big = max(entries, key=lambda e: e.size)
    with open(dest, "r+b") as f:
        f.seek(big.offset + big.size // 2)
        b = f.read(1)
        f.seek(big.offset + big.size // 2)
        f.write(bytes([b[0] ^ 0xFF]))


def resigned_copy(src: Path, dest: Path) -> None:
    """Change the signed index in place (same length): the signature no longer matches."""
    shutil.copyfile(src, dest)
    with open(dest, "rb") as f:
        entries = list(TarReader(f))
    idx = next(e for e in entries if e.name == INDEX_NAME)
    with open(dest, "r+b") as f:
        f.seek(idx.offset)
        data = f.read(idx.size)
        assert b'"version":"1.0.0"' in data
        f.seek(idx.offset)
        f.write(data.replace(b'"version":"1.0.0"', b'"version":"6.6.6"'))


def test_slow_copy_is_not_ingested_before_complete(tmp_path: Path, agent_keys: Keys,
                                                   agent_bundles: dict[str, Built]) -> None:
    with AgentProc(tmp_path / "a", [agent_keys.release_pub]) as agent:
        agent.start()
        # 1. the .part → rename convention: nothing happens while NAME.part grows
        data = agent_bundles["demo1"].path.read_bytes()
        part = agent.drop / "demo1.tar.part"
        with open(part, "wb") as f:
            for i in range(0, len(data), len(data) // 8 + 1):
                f.write(data[i:i + len(data) // 8 + 1])
                f.flush()
                time.sleep(0.3)
                assert db_states(agent) == {}
        time.sleep(1.5)  # longer than settle_seconds: a *.part file is never touched
        assert db_states(agent) == {}
        part.rename(agent.drop / "demo1.tar")
        agent.wait_state("demo", "1.0.0", "complete")

        # 2. a plain copy that grows slowly (pauses shorter than settle_seconds) is read only once complete
        data = agent_bundles["demo2"].path.read_bytes()
        dest = agent.drop / "demo2.tar"
        step = len(data) // 12 + 1
        with open(dest, "wb") as f:
            for i in range(0, len(data), step):
                f.write(data[i:i + step])
                f.flush()
                time.sleep(0.2)
                assert "demo 2.0.0" not in db_states(agent), "ingested while still being copied"
        b = agent.wait_state("demo", "2.0.0", "complete")
        assert b["steps"][0]["attempts"] == 1
        assert agent.quarantined() == []
        assert "unsettled" not in agent.log.read_text()


def test_plain_copy_is_picked_up_when_it_settles_not_at_the_next_rescan(tmp_path: Path, agent_keys: Keys,
                                                                       agent_bundles: dict[str, Built]) -> None:
    """A copy that is not renamed from *.part is handled settle_seconds after it stops changing, even with a
    long rescan interval (the settle timer wakes the loop; it used to wait for the next rescan)."""
    with AgentProc(tmp_path / "a", [agent_keys.release_pub], poll_interval=120.0, settle_seconds=0.5) as agent:
        agent.start()
        time.sleep(1.0)  # past the first scan
        shutil.copyfile(agent_bundles["demo1"].path, agent.drop / "demo1.tar")
        agent.wait_state("demo", "1.0.0", "complete", timeout=30)  # not the 120 s rescan


def test_refused_bundles_are_quarantined_and_nothing_is_served(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                                                agent_bundles: dict[str, Built]) -> None:
    app = agent_site.served("agent/app")
    demo1 = agent_bundles["demo1"]
    work = tmp_path / "w"
    work.mkdir()
    tampered_copy(demo1.path, work / "tampered.tar")
    resigned_copy(demo1.path, work / "resigned.tar")
    data = demo1.path.read_bytes()
    (work / "truncated.tar").write_bytes(data[: len(data) * 2 // 3])
    expected = {"tampered.tar": {"digest-mismatch"}, "resigned.tar": {"bad-signature"},
                "foreign.tar": {"bad-signature"}, "truncated.tar": {"truncated", "missing-member"},
                "stale.tar": {"expired"}}
    with AgentProc(tmp_path / "a", [agent_keys.release_pub]) as agent:
        agent.start()
        agent.drop_file(agent_bundles["foreign"].path, "foreign.tar")
        agent.drop_file(agent_bundles["stale"].path, "stale.tar")
        for name in ("tampered.tar", "resigned.tar", "truncated.tar"):
            agent.drop_file(work / name)
        wait_for(lambda: len(agent.quarantined()) == len(expected), 30, f"quarantine\n{agent.log_tail()}")
        reasons = {Path(q["file"]).name: q for q in agent.quarantined()}
        for name, allowed in expected.items():
            q = reasons[name]
            assert q["reason"] in allowed, (name, q)
            assert q["detail"]
            assert Path(q["quarantined"]).is_file()
            assert q["bundle"]["digest"].startswith("sha256:")
        assert reasons["tampered.tar"]["bundle"]["signatureVerified"] is True
        assert reasons["foreign.tar"]["bundle"]["signatureVerified"] is False
        assert sorted(p.name for p in agent.drop.iterdir()) == []
        # nothing of them is served, and no blob was left in the store
        assert catalog(agent) == []
        r = httpx.get(f"http://{agent.registry}/v2/{app}/manifests/1.0")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        assert httpx.get(f"{agent.files_url}/model/tiny/config.json").status_code == 404
        assert [k for k in store_files(agent.state) if not k.startswith("tmp/")] == []
        states = {b["name"]: b["state"] for b in agent.status()}
        assert set(states.values()) == {"quarantined"}

        # the genuine bundle (same index digest as the tampered copy) is still accepted afterwards
        agent.drop_file(demo1.path, "demo1.tar")
        b = agent.wait_state("demo", "1.0.0", "complete")
        assert b["digest"] == demo1.digest
        assert app in catalog(agent)
        # and a refused bundle dropped later does not disturb what is served
        agent.drop_file(work / "resigned.tar", "resigned-again.tar")
        wait_for(lambda: len(agent.quarantined()) == len(expected) + 1, 30, "second quarantine")
        assert httpx.get(f"http://{agent.registry}/v2/{app}/manifests/1.0").status_code == 200
        out = json.loads(agent.cli("status", "--json").stdout)["bundles"]
        by_state = {(b["name"], b["state"]) for b in out}
        assert ("demo", "complete") in by_state and ("stale", "quarantined") in by_state


def test_kill9_during_ingest_then_restart_converges(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                                     agent_bundles: dict[str, Built]) -> None:
    big = agent_bundles["big"]
    root = tmp_path / "a"
    agent = AgentProc(root, [agent_keys.release_pub], limits={"ingest_bytes_per_second": 1_500_000})
    agent.start()
    try:
        agent.drop_file(big.path)

        def mid_ingest() -> bool:  # blobs are made durable in one batch at the end of the step: until then
            # the finished ones wait in tmp/ beside the one being written, none under its digest name
            return len([k for k in store_files(agent.state) if k.startswith("tmp/")]) >= 2

        wait_for(mid_ingest, 30, "an ingest in progress", interval=0.02)
        agent.kill9()
    finally:
        agent.stop()
    st = db_states(agent)
    assert st == {"big 1.0.0": "running"}
    # whatever is under a digest name is complete and correct; partial data only ever lives in tmp/
    for name in store_files(agent.state):
        if not name.startswith("tmp/"):
            assert sha256_file(agent.state / "store/blobs/sha256" / name) == name
    assert catalog_or_none(agent) is None  # not running

    cfg = yaml.safe_load(agent.config.read_text())
    cfg.pop("limits")
    agent.config.write_text(yaml.safe_dump(cfg))
    with agent:
        agent.start()
        b = agent.wait_state("big", "1.0.0", "complete")
        assert [s["state"] for s in b["steps"]] == ["done", "done"]
        files = store_files(agent.state)
        assert not [k for k in files if k.startswith("tmp/")]
        assert {f"sha256:{k}" for k in files} == {x.digest for x in big.index.blobs}
        r = httpx.get(f"http://{agent.registry}/v2/{agent_site.served('agent/big')}/manifests/1.0",
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.status_code == 200 and r.headers["docker-content-digest"] == big.index.components.images[0].digest
        assert "recovered after an unclean stop" in agent.log.read_text()


def catalog_or_none(agent: AgentProc) -> list[str] | None:
    try:
        return catalog(agent)
    except httpx.HTTPError:
        return None


def test_a_batch_names_blobs_by_digest_only_once_durable(tmp_path: Path, agent_keys: Keys,
                                                         agent_bundles: dict[str, Built]) -> None:
    """Blobs of a batch wait in tmp/ (not present, not served) until the batch is synced; then all are in. A
    refused member in the middle keeps what was verified before it and leaves no temp file."""
    big = agent_bundles["big"]
    keys = [load_public_key(agent_keys.release_pub)]
    store = Store(tmp_path / "store")
    put: list[str] = []
    with open_bundle(big.path, keys) as ob, store.batch():
        for m in ob.members():
            if store.put_member(m):
                put.append(m.digest)
                assert not store.has(m.digest) and len(list(store.tmp.iterdir())) == len(put)
        ob.finish()
    assert put and all(store.has(d) for d in put), [d for d in put if not store.has(d)]
    assert all(f"sha256:{sha256_file(store.path(d))}" == d for d in put)
    assert not list(store.tmp.iterdir())

    bad = tmp_path / "tampered.tar"
    tampered_copy(big.path, bad)
    store2 = Store(tmp_path / "store2")
    before: list[str] = []
    with pytest.raises(VerifyError), open_bundle(bad, keys) as ob, store2.batch():
        for m in ob.members():
            store2.put_member(m)
            before.append(m.digest)
    refused = {b.digest for b in big.index.blobs} - set(before)
    assert before and all(store2.has(d) and f"sha256:{sha256_file(store2.path(d))}" == d for d in before)
    assert not any(store2.has(d) for d in refused)
    assert not list(store2.tmp.iterdir())


def test_duplicate_is_a_noop_and_downgrade_is_refused(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                                       agent_bundles: dict[str, Built]) -> None:
    with AgentProc(tmp_path / "a", [agent_keys.release_pub], drops="delete") as agent:
        agent.start()
        agent.drop_file(agent_bundles["demo1"].path, "demo1.tar")
        agent.wait_state("demo", "1.0.0", "complete")
        wait_for(lambda: not (agent.drop / "demo1.tar").exists(), 10, "drop deleted (drops: delete)")
        before = store_files(agent.state)
        agent.drop_file(agent_bundles["demo1"].path, "again.tar")
        wait_for(lambda: any(e["event"] == "duplicate" for e in
                             json.loads(agent.cli("history", "--json").stdout)["events"]), 20, "duplicate event")
        b = agent.bundle("demo", "1.0.0")
        assert b is not None and b["state"] == "complete"
        assert [s["attempts"] for s in b["steps"]] == [1, 1]
        assert len(agent.status()) == 1
        assert store_files(agent.state) == before

        agent.drop_file(agent_bundles["demo2"].path, "demo2.tar")
        b2 = agent.wait_state("demo", "2.0.0", "complete")
        detail = b2["steps"][0]["detail"]
        assert detail.endswith("already present") and not detail.endswith(" 0 already present")  # model deduped

        agent.drop_file(agent_bundles["demo0"].path, "demo0.tar")
        wait_for(lambda: agent.quarantined(), 20, "downgrade quarantined")
        q = agent.quarantined()[0]
        assert q["reason"] == "downgrade" and "allow_downgrade" in q["detail"]
        assert agent.bundle("demo", "0.9.0")["state"] == "quarantined"  # type: ignore[index]
        # served content is still v2's
        tags = httpx.get(f"http://{agent.registry}/v2/{agent_site.served('agent/app')}/tags/list").json()["tags"]
        assert tags == ["1.0", "2.0"]

    with AgentProc(tmp_path / "b", [agent_keys.release_pub], allow_downgrade=True) as agent:
        agent.start()
        agent.drop_file(agent_bundles["demo2"].path)
        agent.wait_state("demo", "2.0.0", "complete")
        agent.drop_file(agent_bundles["demo0"].path)
        agent.wait_state("demo", "0.9.0", "complete")
        assert "downgrade allowed" in agent.log.read_text()


def test_one_shot_ingest_status_history_inventory(tmp_path: Path, agent_keys: Keys,
                                                  agent_bundles: dict[str, Built]) -> None:
    agent = AgentProc(tmp_path / "a", [agent_keys.release_pub])  # never started: one-shot only
    demo1 = agent_bundles["demo1"]
    res = agent.cli("ingest", str(demo1.path), "--json")
    out = json.loads(res.stdout)
    assert out["state"] == "complete" and out["bundle"] == demo1.digest
    assert json.loads(agent.cli("ingest", str(demo1.path), "--json").stdout)["state"] == "duplicate"
    bad = agent.cli("ingest", str(agent_bundles["foreign"].path), check=False)
    assert bad.returncode == 1 and bad.stdout.startswith("quarantined")
    assert agent_bundles["foreign"].path.exists()  # an operator's file outside the drop dir is not moved
    assert agent.quarantined()[0]["quarantined"] is None

    text = agent.cli("status").stdout
    assert "demo 1.0.0  sequence 1  complete" in text and "step ingest" in text
    js = json.loads(agent.cli("status", "--json").stdout)["bundles"]
    demo = next(b for b in js if b["name"] == "demo")
    assert {c["kind"] for c in demo["components"]} == {"image", "chart", "model", "file"}
    assert demo["digest"] == demo1.digest and demo["completedAt"]
    events = [e["event"] for e in json.loads(agent.cli("history", "--json").stdout)["events"]]
    assert events[:4] == ["received", "step ingest done", "step publish done", "complete"]
    assert "quarantined" in events and "duplicate" in events
    inv = tmp_path / "inventory.json"
    agent.cli("inventory", "-o", str(inv))
    data = json.loads(inv.read_text())
    assert {b["digest"] for b in data["blobs"]} == {b.digest for b in demo1.index.blobs}
    assert data["bundles"] == [{"name": "demo", "version": "1.0.0", "sequence": 1, "digest": demo1.digest}]


def test_status_without_state_is_a_usage_error(tmp_path: Path, agent_keys: Keys) -> None:
    agent = AgentProc(tmp_path / "a", [agent_keys.release_pub])
    res = run_cli("agent", "status", "--config", str(agent.config))
    assert res.returncode == 2 and "no state yet" in res.stderr
