"""kill -9 of ``agent remove`` at every point of its unpublish (tests/faults/killhook.py ``REMOVE_POINTS``): after
every kill the store is consistent — index.json is whole and lists only manifests on disk, the published view is
either all there or all gone (one transaction), no store file is deleted (only gc frees them) and no bundle is marked
removed while it is still served — and running ``agent remove`` again ends exactly like an uninterrupted remove;
the bundle file ingested again then installs afresh."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Keys
from tests.faults.killhook import REMOVE_POINTS
from tests.faults.support import (
    SEED,
    TIMEOUT,
    Tally,
    check_store,
    copied_site,
    killhook_cli,
    leftovers,
    published_snapshot,
)
from tests.support.agent import AgentProc, run_cli
from tests.support.bundles import run_cli as build_cli
from tests.support.bundles import write_spec

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

NAME = "rmdemo"


@pytest.fixture(scope="module")
def pristine(fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A state dir holding two versions of one bundle name (files of their own, one shared), and the files."""
    d = tmp_path_factory.mktemp("remove-kill")
    r = random.Random(977)
    shared = r.randbytes(20_000)
    agent = AgentProc(d / "site", [fault_keys.pub])
    built = []
    for v in (1, 2):
        src = d / f"src-{v}"
        src.mkdir()
        files = {"shared.bin": shared, **{f"own{v}-{k}.bin": r.randbytes(4_000 + 1000 * k) for k in range(2)}}
        for n, data in files.items():
            (src / n).write_bytes(data)
        spec = write_spec(src / "spec.yaml", name=NAME, version=f"{v}.0.0", sequence=v,
                          files=[{"name": n.split(".")[0], "path": n} for n in files])
        out = d / f"{NAME}-{v}.tar"
        res = build_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", fault_keys.key, "--cache-dir",
                         d / "cache", "-q"])
        assert res.exit_code == 0, res.output
        res2 = agent.cli("ingest", str(out), "--json")
        assert json.loads(res2.stdout)["state"] == "complete", res2.stdout
        built.append(out)
    return agent.state, built


def _remove(agent: AgentProc, fault: str | None) -> subprocess.CompletedProcess[str]:
    return killhook_cli(agent, ["remove", NAME, "--json"], fault)


def _consistent(state: Path, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    bad = check_store(state)
    now = published_snapshot(state)
    if now["index"] not in (before["index"], after["index"]):
        bad.append("store/index.json is neither the published view before remove nor after it")
    missing = [m["digest"] for m in now["index"]["manifests"] if m["digest"] not in now["files"]]
    if missing:
        bad.append(f"store/index.json lists {len(missing)} manifest(s) not in the store")
    for key in ("refs", "paths", "blobs"):
        if now[key] not in (before[key], after[key]):
            bad.append(f"{key}: neither as before remove nor as after it (not one transaction)")
    if (now["refs"] == before["refs"]) != (now["paths"] == before["paths"]):
        bad.append("references and paths unpublished apart")
    if now["files"] != before["files"]:
        bad.append("remove deleted store files (only gc may)")
    removed = {i for i, s in now["states"] if s == "removed"}
    if any(r[3] in removed for r in now["refs"]) or any(p[4] in removed for p in now["paths"]):
        bad.append("a removed bundle still has published references or paths")
    return bad


def test_kill9_during_remove_leaves_a_consistent_store(pristine: tuple[Path, list[Path]], fault_keys: Keys,
                                                        tmp_path: Path) -> None:
    state, files = pristine
    before = published_snapshot(state)
    ref_site = copied_site(tmp_path / "reference", state, fault_keys.pub)
    res = _remove(ref_site, None)
    assert res.returncode == 0, res.stdout + res.stderr
    after = published_snapshot(ref_site.state)
    assert after["refs"] == [] and after["paths"] == [] and {s for _, s in after["states"]} == {"removed"}
    assert before["refs"] and before["paths"]

    points = list(REMOVE_POINTS)
    tally = Tally("kill -9 during agent remove (then remove again)", na=("refused",))
    for k, point in enumerate(points):
        site = copied_site(tmp_path / f"trial-{k:02d}", state, fault_keys.pub)
        got = _remove(site, point)
        assert got.returncode == -9, f"remove at {point} exited {got.returncode} (seed {SEED}): {got.stderr}"
        bad = _consistent(site.state, before, after)
        assert not bad, f"after a kill at {point} (seed {SEED}): {bad}"
        st = run_cli("agent", "status", "--config", str(site.config))
        assert st.returncode == 0, st.stderr
        again = _remove(site, None)
        assert again.returncode == 0, again.stdout + again.stderr
        assert published_snapshot(site.state) == after, f"remove after a kill at {point} did not converge (seed {SEED})"
        assert leftovers(site.state) == []
        tally.trials += 1
        tally.converged += 1
    # a removed site takes the bundle again: the last trial's store, the newest file re-ingested
    res = site.cli("ingest", str(files[-1]), "--json")
    again_id = json.loads(res.stdout)
    assert again_id["state"] == "complete", res.stdout
    assert published_snapshot(site.state)["refs"] == [r for r in before["refs"] if r[3] == again_id["bundle"]]
    tally.notes.append(f"points: {', '.join(points)}")
    tally.save()
