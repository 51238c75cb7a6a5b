"""kill -9 of ``agent gc`` at every point of its sweep (tests/faults/killhook.py ``GC_POINTS``, plus the rewrite of
store/index.json inside its transaction): after every kill the store is consistent — every published blob and
reference can be served, index.json is whole and lists only manifests on disk, and the journal shows either
nothing collected or everything (one transaction) — and the next gc converges to exactly the state of an
uninterrupted one (blobs left behind by a kill after COMMIT are what it removes)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Keys
from tests.faults.killhook import GC_POINTS
from tests.faults.support import (
    SEED,
    TIMEOUT,
    Tally,
    check_store,
    copied_site,
    killhook_cli,
    leftovers,
    published_snapshot,
    rng,
)
from tests.support.agent import AgentProc, run_cli
from tests.support.bundles import run_cli as build_cli
from tests.support.bundles import write_spec

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]



def _build(d: Path, key: Path, version: str, sequence: int, files: dict[str, bytes]) -> Path:
    src = d / f"src-{version}"
    src.mkdir(parents=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    spec = write_spec(src / "spec.yaml", name="gcdemo", version=version, sequence=sequence,
                      files=[{"name": n.split(".")[0], "path": n} for n in files])
    out = d / f"gcdemo-{version}.tar"
    res = build_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "--cache-dir", d / "cache", "-q"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def pristine(fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dir holding three versions of one bundle name (each with blobs of its own, one file shared)."""
    d = tmp_path_factory.mktemp("gc-kill")
    r = random.Random(961)
    shared = r.randbytes(20_000)
    agent = AgentProc(d / "site", [fault_keys.pub])
    for v in (1, 2, 3):
        own = {f"own{v}-{k}.bin": r.randbytes(5_000 + 1000 * k) for k in range(3)}
        b = _build(d, fault_keys.key, f"{v}.0.0", v, {"shared.bin": shared, **own})
        res = agent.cli("ingest", str(b), "--json")
        assert json.loads(res.stdout)["state"] == "complete", res.stdout
    return agent.state


def _gc(agent: AgentProc, fault: str | None) -> subprocess.CompletedProcess[str]:
    return killhook_cli(agent, ["gc", "--keep", "1", "--json"], fault)


def _consistent(state: Path, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    bad = check_store(state)
    now = published_snapshot(state)
    if now["index"] not in (before["index"], after["index"]):  # rewritten inside the transaction, before COMMIT
        bad.append("store/index.json is neither the published view before gc nor after it")
    missing = [m["digest"] for m in now["index"]["manifests"] if m["digest"] not in now["files"]]
    if missing:
        bad.append(f"store/index.json lists {len(missing)} manifest(s) not in the store")
    for key in ("states", "refs", "paths"):
        if now[key] not in (before[key], after[key]):
            bad.append(f"{key}: neither as before gc nor as after it (not one transaction)")
    collected = {i for i, s in now["states"] if s == "collected"}
    if any(r[3] in collected for r in now["refs"]) or any(p[4] in collected for p in now["paths"]):
        bad.append("a collected bundle still has published references or paths")
    return bad


def test_kill9_during_gc_leaves_a_consistent_store(pristine: Path, fault_keys: Keys, tmp_path: Path) -> None:
    before = published_snapshot(pristine)
    ref_site = copied_site(tmp_path / "reference", pristine, fault_keys.pub)
    res = _gc(ref_site, None)
    assert res.returncode == 0, res.stderr
    ref = json.loads(res.stdout)
    after = published_snapshot(ref_site.state)
    assert len(ref["bundles"]) == 2 and ref["blobs"] >= 6 and ref["bytes"] > 0
    assert after["files"] != before["files"] and after["refs"] != before["refs"]

    r = rng("gc-kill")
    points = [*GC_POINTS, "index-tmp-written", f"gc-mid-sweep@{r.randint(2, ref['blobs'] - 1)}",
              f"gc-mid-sweep@{ref['blobs']}"]
    tally = Tally("kill -9 during agent gc (then gc again)", na=("refused",))
    for k, point in enumerate(points):
        site = copied_site(tmp_path / f"trial-{k:02d}", pristine, fault_keys.pub)
        got = _gc(site, point)
        assert got.returncode == -9, f"gc at {point} exited {got.returncode} (seed {SEED}): {got.stderr}"
        bad = _consistent(site.state, before, after)
        assert not bad, f"after a kill at {point} (seed {SEED}): {bad}"
        again = _gc(site, None)
        assert again.returncode == 0, again.stderr
        assert published_snapshot(site.state) == after, f"gc after a kill at {point} did not converge (seed {SEED})"
        assert leftovers(site.state) == []
        assert run_cli("agent", "status", "--config", str(site.config)).returncode == 0
        tally.trials += 1
        tally.converged += 1
    tally.notes.append(f"points: {', '.join(points)}")
    tally.save()
