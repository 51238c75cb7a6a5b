"""Garbage collection and retention (``agent gc``, ``retention:``): three versions of one bundle name, gc keeps
exactly the retained ones, a dry run changes nothing, the registry and file server stop serving what only the
collected version had, ``/metrics`` shows what is reclaimable, and a delta built from the inventory exported
after gc still completes. Bundles are built from local files by the real builder."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from hydra_bundle.builder.delta import INVENTORY_FORMAT
from tests.support.agent import AgentProc, wait_for
from tests.support.agent_fixtures import store_files
from tests.support.bundles import digest_of, keypair, read_index, run_cli, write_spec

pytestmark = pytest.mark.slow

SHARED = random.Random(11).randbytes(40_000)   # in every version
ONLY1 = random.Random(12).randbytes(30_000)    # only in v1 (and again in the delta after gc)
V2 = random.Random(13).randbytes(20_000)
V3 = random.Random(14).randbytes(25_000)
V4 = random.Random(15).randbytes(10_000)


def _build(d: Path, key: Path, name: str, version: str, sequence: int, files: dict[str, bytes],
           *extra: object) -> Path:
    src = d / f"src-{name}-{version}"
    src.mkdir(parents=True)
    for fname, data in files.items():
        (src / fname).write_bytes(data)
    spec = write_spec(src / "spec.yaml", name=name, version=version, sequence=sequence,
                      files=[{"name": n.split(".")[0], "path": n} for n in files])
    out = d / f"{name}-{version}.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "--cache-dir", d / "cache", "-q",
                   *extra])
    assert res.exit_code == 0, res.output
    return out


def _versions(d: Path, key: Path) -> list[Path]:
    return [_build(d, key, "demo", "1.0.0", 1, {"shared.bin": SHARED, "only1.bin": ONLY1}),
            _build(d, key, "demo", "2.0.0", 2, {"shared.bin": SHARED, "v2.bin": V2}),
            _build(d, key, "demo", "3.0.0", 3, {"shared.bin": SHARED, "v3.bin": V3})]


def _blobs(bundle: Path) -> set[str]:
    return {b["digest"] for b in read_index(bundle)["blobs"]}


def _reclaimable(agent: AgentProc) -> float:
    text = httpx.get(f"{agent.metrics_url}/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("hydra_agent_reclaimable_bytes "))
    return float(line.split()[1])


def _gc(agent: AgentProc, *args: str) -> dict[str, Any]:
    return json.loads(agent.cli("gc", *args, "--json").stdout)  # type: ignore[no-any-return]


def _on_disk(agent: AgentProc) -> dict[str, int]:
    return {k: v for k, v in store_files(agent.state).items() if not k.startswith("tmp/")}


def test_gc_keeps_the_retained_versions_and_a_delta_from_the_new_inventory_completes(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "k")
    v1, v2, v3 = _versions(tmp_path, key)
    only_v1 = _blobs(v1) - _blobs(v2) - _blobs(v3)
    kept = _blobs(v2) | _blobs(v3)
    assert digest_of(ONLY1) in only_v1 and digest_of(SHARED) in kept & _blobs(v1)
    with AgentProc(tmp_path / "a", [pub], retention={"keep": 2, "after_run": False}) as agent:
        agent.start()
        for f, version in ((v1, "1.0.0"), (v2, "2.0.0"), (v3, "3.0.0")):
            agent.drop_file(f)
            agent.wait_state("demo", version, "complete")
        files, reg = agent.files_url, f"http://{agent.registry}"
        assert httpx.get(f"{files}/files/only1/only1.bin").content == ONLY1
        v1_manifest = f"{reg}/v2/hydra-bundle/files/only1/manifests/1.0.0"
        assert httpx.get(v1_manifest).status_code == 200
        before = _on_disk(agent)
        assert {f"sha256:{k}" for k in before} == _blobs(v1) | kept
        inv_before = tmp_path / "inv-before.json"
        agent.cli("inventory", "-o", str(inv_before))
        v1_bytes = sum(v for k, v in before.items() if f"sha256:{k}" in only_v1)
        assert v1_bytes > len(ONLY1)

        # /metrics: what gc with retention.keep would free
        assert wait_for(lambda: _reclaimable(agent) == v1_bytes, 10, "reclaimable bytes before gc")

        # a dry run says what would go and changes nothing
        dry = _gc(agent, "--dry-run")
        assert dry["dryRun"] is True and dry["bytes"] == v1_bytes and dry["blobs"] == len(only_v1)
        assert [(b["name"], b["version"]) for b in dry["bundles"]] == [("demo", "1.0.0")]
        assert dry["references"] > 0 and dry["paths"] == 1
        assert _on_disk(agent) == before
        assert agent.bundle("demo", "1.0.0")["state"] == "complete"
        assert httpx.get(v1_manifest).status_code == 200
        text = agent.cli("gc", "--dry-run").stdout
        assert "would collect demo 1.0.0" in text and "demo 1.0.0 would be collected" in text
        assert f"{dry['blobs']} blob(s) and 0 assembly area(s) would be removed" in text

        # the real gc (keep from the config): exactly the retained versions stay
        done = _gc(agent)
        assert done["dryRun"] is False and done["bytes"] == v1_bytes
        assert done["references"] == dry["references"] and done["paths"] == 1
        after = _on_disk(agent)
        assert {f"sha256:{k}" for k in after} == kept           # shared blobs stay, v1-only blobs are gone
        assert sum(before.values()) - sum(after.values()) == v1_bytes
        states = {b["version"]: b["state"] for b in agent.status()}
        assert states == {"1.0.0": "collected", "2.0.0": "complete", "3.0.0": "complete"}
        v1_row = agent.bundle("demo", "1.0.0")
        assert v1_row["reason"] == "gc" and "not among the latest 2 version(s) of demo" in v1_row["detail"]

        # the registry and the file server no longer serve what only v1 had; the rest is served
        assert httpx.get(v1_manifest).status_code == 404
        assert "hydra-bundle/files/only1" not in httpx.get(f"{reg}/v2/_catalog").json()["repositories"]
        assert httpx.get(f"{files}/files/only1/only1.bin").status_code == 404
        assert httpx.get(f"{files}/files/shared/shared.bin").content == SHARED
        assert httpx.get(f"{files}/files/v2/v2.bin").content == V2
        assert httpx.get(f"{reg}/v2/hydra-bundle/files/v3/manifests/3.0.0").status_code == 200
        store_index = json.loads((agent.state / "store" / "index.json").read_text())
        assert store_index["manifests"] and all(m["digest"] in kept for m in store_index["manifests"])

        assert wait_for(lambda: _reclaimable(agent) == 0, 10, "reclaimable bytes after gc")
        again = _gc(agent)
        assert again["bundles"] == [] and again["bytes"] == 0
        events = [e["event"] for e in json.loads(agent.cli("history", "--json").stdout)["events"]]
        assert "collected" in events and events.count("gc") == 1

        # the inventory no longer lists v1's blobs: a delta built from it carries them
        inv = tmp_path / "inv-after.json"
        agent.cli("inventory", "-o", str(inv))
        data = json.loads(inv.read_text())
        assert data["format"] == INVENTORY_FORMAT
        assert {b["digest"] for b in data["blobs"]} == kept
        assert [b["version"] for b in data["bundles"]] == ["2.0.0", "3.0.0"]
        four = {"shared.bin": SHARED, "only1.bin": ONLY1, "v4.bin": V4}
        stale = _build(tmp_path / "stale", key, "demo", "4.0.0", 4, four, "--site-inventory", inv_before)
        delta = _build(tmp_path, key, "demo", "4.0.0", 4, four, "--site-inventory", inv)
        omitted = {b["digest"] for b in read_index(stale)["blobs"] if b.get("omitted")}
        assert digest_of(ONLY1) in omitted  # the inventory from before gc would have left out a deleted blob
        omitted = {b["digest"] for b in read_index(delta)["blobs"] if b.get("omitted")}
        assert digest_of(SHARED) in omitted and digest_of(ONLY1) not in omitted
        agent.drop_file(delta)
        agent.wait_state("demo", "4.0.0", "complete")
        assert httpx.get(f"{files}/files/only1/only1.bin").content == ONLY1
        assert httpx.get(f"{files}/files/v4/v4.bin").content == V4


def test_retention_after_run_and_what_gc_never_takes(tmp_path: Path) -> None:
    """The daemon collects after a run with retention configured; a delta waiting for a blob and an incomplete
    part set keep every blob (and assembly area) they need, even ones only a collected version brought."""
    key, pub = keypair(tmp_path, "k")
    v1, v2, v3 = _versions(tmp_path, key)
    # a delta of another name that relies on ONLY1 (present) and on a blob the site lacks: it waits
    lacking = random.Random(21).randbytes(5_000)
    inv = tmp_path / "claims.json"
    inv.write_text(json.dumps({"format": INVENTORY_FORMAT, "bundles": [], "blobs": [
        {"digest": digest_of(b), "size": len(b)} for b in (ONLY1, lacking)]}))
    waiting = _build(tmp_path, key, "late", "1.0.0", 1, {"keepme.bin": ONLY1, "lack.bin": lacking},
                     "--site-inventory", inv)
    # a split bundle of which only the first part arrives
    big = random.Random(22).randbytes(250_000)
    _build(tmp_path / "split", key, "parted", "1.0.0", 1, {"big.bin": big, "small.bin": b"x" * 1000},
           "--split", "100000")
    parts = sorted((tmp_path / "split").glob("*.part-*-of-*.tar"))
    assert len(parts) >= 3
    with AgentProc(tmp_path / "a", [pub], retention={"keep": 1}) as agent:
        agent.start()
        agent.drop_file(waiting)
        agent.wait_state("late", "1.0.0", "waiting")
        agent.drop_file(parts[0])
        agent.wait_state("parted", "1.0.0", "waiting")
        assembling = sorted((agent.state / "store" / "assembling").iterdir())
        assert len(assembling) == 1 and any(assembling[0].iterdir())
        for f, version in ((v1, "1.0.0"), (v2, "2.0.0")):
            agent.drop_file(f)
            agent.wait_state("demo", version, "complete")
        # after v2 completed the daemon collected v1 by itself (keep: 1)
        agent.wait_state("demo", "1.0.0", "collected")
        on_disk = {f"sha256:{k}" for k in _on_disk(agent)}
        assert digest_of(ONLY1) in on_disk          # the waiting delta lists it
        assert digest_of(SHARED) in on_disk
        assert sorted((agent.state / "store" / "assembling").iterdir()) == assembling
        assert httpx.get(f"{agent.files_url}/files/only1/only1.bin").status_code == 404  # unpublished all the same
        agent.drop_file(v3)
        agent.wait_state("demo", "3.0.0", "complete")
        agent.wait_state("demo", "2.0.0", "collected")
        assert digest_of(V2) not in {f"sha256:{k}" for k in _on_disk(agent)}
        assert _gc(agent)["bytes"] == 0  # nothing left to take
        # the rest of the set arrives: it completes (its blobs and segments were kept)
        for p in parts[1:]:
            agent.drop_file(p)
        agent.wait_state("parted", "1.0.0", "complete")
        assert httpx.get(f"{agent.files_url}/files/big/big.bin").content == big


def test_the_version_published_last_stays_and_a_collected_one_can_come_back(tmp_path: Path) -> None:
    """After a rollback (an older sequence published last) gc keeps what the site serves besides the latest N;
    a collected bundle's file dropped again (here with allow_downgrade) is ingested afresh and served again."""
    key, pub = keypair(tmp_path, "k")
    v1, v2, v3 = _versions(tmp_path, key)
    back = _build(tmp_path, key, "demo", "2.0.1", 2, {"shared.bin": SHARED, "v2.bin": V2})
    agent = AgentProc(tmp_path / "a", [pub], allow_downgrade=True)  # one-shot runs only
    for f in (v1, v2, v3, back):
        assert json.loads(agent.cli("ingest", str(f), "--json").stdout)["state"] == "complete"
    done = _gc(agent, "--keep", "1")
    assert sorted(b["version"] for b in done["bundles"]) == ["1.0.0", "2.0.0"]
    states = {b["version"]: b["state"] for b in agent.status()}
    assert states == {"1.0.0": "collected", "2.0.0": "collected", "2.0.1": "complete", "3.0.0": "complete"}
    res = agent.cli("apply", "demo", "--version", "1.0.0", check=False)
    assert res.returncode == 1 and "collected" in res.stdout

    inv = tmp_path / "inv.json"
    agent.cli("inventory", "-o", str(inv))
    assert digest_of(ONLY1) not in {b["digest"] for b in json.loads(inv.read_text())["blobs"]}
    again = json.loads(agent.cli("ingest", str(v1), "--json").stdout)
    assert again["state"] == "complete", again
    row = agent.bundle("demo", "1.0.0")
    assert row["state"] == "complete" and {s["state"] for s in row["steps"]} == {"done"}
    agent.cli("inventory", "-o", str(inv))
    assert digest_of(ONLY1) in {b["digest"] for b in json.loads(inv.read_text())["blobs"]}
    assert (agent.state / "store" / "blobs" / "sha256" / digest_of(ONLY1).removeprefix("sha256:")).is_file()


def test_bad_retention_input_is_refused(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path, "k")
    agent = AgentProc(tmp_path / "a", [pub], retention={"keep": 0})
    res = agent.cli("gc", check=False)
    assert res.returncode == 2 and "retention.keep" in res.stderr, res.stderr
    agent = AgentProc(tmp_path / "b", [pub])
    res = agent.cli("gc", check=False)
    assert res.returncode == 2 and "no state yet" in res.stderr, res.stderr
    res = agent.cli("gc", "--keep", "0", check=False)
    assert res.returncode == 2 and "--keep" in res.stderr, res.stderr
