"""Trust rules hold on every path, not only at the first admission: a bundle that resumes is checked again
against what the site serves (sequence, expiry), a served name belongs to the bundle name that published it, an
unverified file shows nothing it claims, and keys anyone could replace are refused."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hydra_bundle.agent.config import load_config
from hydra_bundle.builder.delta import INVENTORY_FORMAT
from hydra_bundle.errors import SpecError
from tests.support.agent import AgentProc, wait_for
from tests.support.bundles import keypair, run_cli, write_spec

pytestmark = pytest.mark.slow


def _build(d: Path, key: Path, spec: Path, out: Path, *extra: object) -> Path:
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "--cache-dir", d / "cache", "-q",
                   *extra])
    assert res.exit_code == 0, res.output
    return out


def _files_spec(d: Path, name: str, version: str, sequence: int, files: dict[str, bytes]) -> Path:
    src = d / f"src-{name}-{version}"
    src.mkdir(parents=True)
    for fname, data in files.items():
        (src / fname).write_bytes(data)
    return write_spec(src / "spec.yaml", name=name, version=version, sequence=sequence,
                      files=[{"name": n.split(".")[0], "path": n} for n in files])


def _state(agent: AgentProc, name: str, version: str) -> str | None:
    b = agent.bundle(name, version)
    return None if b is None else str(b["state"])


def test_a_resumed_bundle_is_checked_again_against_what_the_site_serves(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "k")
    old, new, carried = (random.Random(s).randbytes(50_000) for s in (1, 2, 3))
    # the site has the carrier's blob only later; a sequence-1 delta that needs it waits for it
    inv = tmp_path / "inventory.json"
    blob = {"digest": "sha256:" + hashlib.sha256(carried).hexdigest(), "size": len(carried)}
    inv.write_text(json.dumps({"format": INVENTORY_FORMAT, "blobs": [blob], "bundles": []}))
    delta1 = _build(tmp_path, key, _files_spec(tmp_path, "demo", "1.0.0", 1, {"big.bin": old, "x.bin": carried}),
                    tmp_path / "demo-1-delta.tar", "--site-inventory", inv)
    full2 = _build(tmp_path, key, _files_spec(tmp_path, "demo", "2.0.0", 2, {"big.bin": new}),
                   tmp_path / "demo-2.tar")
    carrier = _build(tmp_path, key, _files_spec(tmp_path, "carrier", "1.0.0", 1, {"x.bin": carried}),
                     tmp_path / "carrier.tar")
    soon = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expiring = _build(tmp_path, key, _files_spec(tmp_path, "exp", "1.0.0", 1, {"big2.bin": old, "x.bin": carried}),
                      tmp_path / "exp-delta.tar", "--site-inventory", inv, "--expires", soon)

    with AgentProc(tmp_path / "a", [pub]) as agent:
        agent.start()
        for f, name in ((delta1, "demo"), (expiring, "exp")):
            dropped = agent.drop_file(f)
            agent.wait_state(name, "1.0.0", "waiting")  # for the blob the site does not have yet
            dropped.unlink()  # the operator takes the file away; the journal still has the bundle
        agent.drop_file(full2)
        agent.wait_state("demo", "2.0.0", "complete")
        assert httpx.get(f"{agent.files_url}/files/big/big.bin").content == new
        remaining = datetime.strptime(soon, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)
        time.sleep(max(0.0, remaining.total_seconds()) + 1)  # the second delta expires while it waits
        agent.drop_file(carrier)
        agent.wait_state("carrier", "1.0.0", "complete")
        # the blob is there now: both resume on the next retry, and both are refused before publishing
        first = agent.wait_state("demo", "1.0.0", "quarantined")
        assert first["reason"] == "downgrade" and "already serves" in first["detail"], first
        second = agent.wait_state("exp", "1.0.0", "quarantined")
        assert second["reason"] == "expired" and "before it was published" in second["detail"], second
        # what the site serves is still sequence 2's, and nothing of the expired delta
        assert httpx.get(f"{agent.files_url}/files/big/big.bin").content == new
        assert httpx.get(f"{agent.files_url}/files/big2/big2.bin").status_code == 404


def test_a_served_name_belongs_to_the_bundle_name_that_published_it(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "k")
    mine, theirs = random.Random(5).randbytes(20_000), random.Random(6).randbytes(20_000)
    a = _build(tmp_path, key, _files_spec(tmp_path, "hydra", "1.0.0", 1, {"tool.bin": mine}), tmp_path / "a.tar")
    # another bundle name, validly signed, with the same served name and other bytes: a side-door rollback
    b = _build(tmp_path, key, _files_spec(tmp_path, "other", "9.0.0", 9, {"tool.bin": theirs}), tmp_path / "b.tar")
    # the same bytes under the same name are no conflict
    c = _build(tmp_path, key, _files_spec(tmp_path, "again", "1.0.0", 1, {"tool.bin": mine}), tmp_path / "c.tar")
    with AgentProc(tmp_path / "a", [pub]) as agent:
        agent.start()
        agent.drop_file(a)
        agent.wait_state("hydra", "1.0.0", "complete")
        agent.drop_file(b)
        refused = agent.wait_state("other", "9.0.0", "quarantined")
        assert refused["reason"] == "name-taken", refused
        assert "/files/tool/ is served for bundle 'hydra'" in refused["detail"]
        assert httpx.get(f"{agent.files_url}/files/tool/tool.bin").content == mine
        agent.drop_file(c)
        agent.wait_state("again", "1.0.0", "complete")


def test_an_unverified_file_shows_nothing_it_claims(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path, "k")
    fkey, _ = keypair(tmp_path, "foreign")
    forged = _build(tmp_path, fkey, _files_spec(tmp_path, "forged", "6.6.6", 99, {"a.bin": b"x" * 100}),
                    tmp_path / "forged.tar")
    with AgentProc(tmp_path / "a", [pub]) as agent:
        agent.start()
        evil = agent.drop / "evil\x1b[2J\x1b[31mcomplete\r.tar"
        evil.write_bytes(forged.read_bytes())
        wait_for(lambda: agent.quarantined(), 30, "refused")
        st = agent.status()
        assert len(st) == 1 and st[0]["name"] is None and st[0]["version"] is None and st[0]["components"] == []
        text = agent.cli("status").stdout
        assert "forged" not in text and "6.6.6" not in text and "unverified file" in text
        assert "\x1b" not in text and "\r" not in text and "\\x1b[2J" in text
        assert "\x1b" not in agent.log.read_text()
        hist = agent.cli("history").stdout
        assert "\x1b" not in hist and "forged" not in hist


def test_a_key_anyone_can_replace_is_refused(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path, "k")
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(json.dumps({"drop_dir": str(tmp_path / "drop"), "state_dir": str(tmp_path / "state"),
                               "trusted_keys": [str(pub)]}))
    load_config(cfg)
    os.chmod(pub, 0o666)
    with pytest.raises(SpecError, match="world-writable: anyone on this host could replace the key"):
        load_config(cfg)
    os.chmod(pub, 0o644)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(SpecError, match=f"its directory {tmp_path} is world-writable"):
            load_config(cfg)
    finally:
        os.chmod(tmp_path, 0o755)
