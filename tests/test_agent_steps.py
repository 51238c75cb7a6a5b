"""The step runner's rules (agent/runner.py) and the apply planner's offline parts (agent/deploy.py), in-process."""

from __future__ import annotations

import errno
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from hydra_bundle.agent import deploy
from hydra_bundle.agent.config import AgentConfig
from hydra_bundle.agent.db import Database
from hydra_bundle.agent.fallback import FALLBACK_BYTES
from hydra_bundle.agent.journal import Journal
from hydra_bundle.agent.lock import PipelineLock
from hydra_bundle.agent.published import Published
from hydra_bundle.agent.runner import SkipStep, StepContext, StepDef, StepPending, run_steps
from hydra_bundle.agent.schema import open_database
from hydra_bundle.agent.status import bundle_status
from hydra_bundle.agent.store import Store
from hydra_bundle.apply.step import ProgressEvent, StepResult
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.errors import Cancelled, HydraError, PipelineBusy
from tests.support.applyindex import synthetic_index

DEPLOY = {"steps": [
    {"manifests": ["ns"]},
    {"name": "simulate-gpu", "when": "no-gpu", "label_nodes": {"labels": {"run.ai/simulated-gpu-node-pool": "x"}}},
    {"sql": {"tables": [{"table": "vendor", "key": ["name"], "rows": [{"name": "alibaba"}]}]}},
]}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    pub = keygen(tmp_path / "k")[1]
    cfg = AgentConfig(drop_dir=tmp_path / "drop", state_dir=tmp_path / "state", trusted_keys=[pub])
    db = open_database(cfg.journal_path)
    idx, _ = synthetic_index(tmp_path, {"deploy": DEPLOY}, {"ns": "apiVersion: v1\nkind: Namespace\n"
                                                                  "metadata: {name: x}\n"})
    return {"cfg": cfg, "db": db, "j": Journal(db), "idx": idx}


def _ctx(env: dict[str, Any], bid: str = "sha256:" + "a" * 64) -> StepContext:
    return StepContext(env["cfg"], env["j"], Published(env["db"]), Store(env["cfg"].store_dir), bid, env["idx"])


def _admit(env: dict[str, Any], defs: list[StepDef], bid: str = "sha256:" + "a" * 64) -> None:
    env["j"].admit(bid, env["idx"], b"{}", "test", "key", [d.name for d in defs])


def test_pending_does_not_block_later_steps_and_the_bundle_waits_with_the_commands(env: dict[str, Any]) -> None:
    ran: list[str] = []
    closed: list[str] = []

    def ok(name: str) -> StepDef:
        return StepDef(name, lambda ctx: ran.append(name) or f"{name} done")

    def pending(ctx: StepContext) -> str:
        ran.append("chart")
        ctx.cleanups.append(lambda: closed.append("runtime"))
        ctx.result = {"state": "pending", "summary": "no helm", "command": ["helm", "upgrade", "--install", "x"]}
        raise StepPending("no helm: helm upgrade --install x")

    def skipped(ctx: StepContext) -> str:
        raise SkipStep("the cluster has GPUs")

    defs = [ok("ingest"), StepDef("apply:chart", pending), StepDef("apply:gpu", skipped), ok("apply:sql")]
    _admit(env, defs)
    out = run_steps(_ctx(env), defs)
    assert out.state == "waiting" and out.step == "apply:chart"
    assert ran == ["ingest", "chart", "apply:sql"] and closed == ["runtime"]
    row = env["j"].bundle("sha256:" + "a" * 64)
    assert row.state == "waiting" and row.reason == "step-pending"
    assert row.detail == "1 step(s) pending: apply:chart: no helm: helm upgrade --install x"
    steps = {s.name: s.json() for s in env["j"].steps(row.id)}
    assert [steps[n]["state"] for n in ("ingest", "apply:chart", "apply:gpu", "apply:sql")] == [
        "done", "pending", "skipped", "done"]
    assert steps["apply:chart"]["result"]["command"] == ["helm", "upgrade", "--install", "x"]

    # a retry runs only the pending step again; an identical outcome adds no history event
    ran.clear()
    n_events = len(env["j"].history(1000))
    assert run_steps(_ctx(env), defs).state == "waiting"
    assert ran == ["chart"] and len(env["j"].history(1000)) == n_events

    # once it is done, the bundle completes
    defs[1] = ok("apply:chart")
    assert run_steps(_ctx(env), defs).state == "complete"
    assert env["j"].bundle(row.id).state == "complete"


def test_a_failure_ends_the_run_and_wins_over_pending(env: dict[str, Any]) -> None:
    ran: list[str] = []

    def pending(ctx: StepContext) -> str:
        raise StepPending("operator")

    def fail(ctx: StepContext) -> str:
        raise HydraError("the Dataset API is not installed")

    defs = [StepDef("a", pending), StepDef("b", fail), StepDef("c", lambda ctx: ran.append("c") or "")]
    _admit(env, defs)
    out = run_steps(_ctx(env), defs)
    assert out.state == "failed" and out.step == "b" and ran == []
    row = env["j"].bundle("sha256:" + "a" * 64)
    assert row.state == "failed" and row.detail == "b: the Dataset API is not installed"


def test_interrupted_step_stays_pending_and_resumes(env: dict[str, Any]) -> None:
    calls = {"n": 0}

    def slow(ctx: StepContext) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Cancelled()
        return "finished"

    defs = [StepDef("apply:warmup", slow)]
    _admit(env, defs)
    assert run_steps(_ctx(env), defs).state == "interrupted"
    assert env["j"].steps("sha256:" + "a" * 64)[0].state == "pending"
    assert run_steps(_ctx(env), defs).state == "complete"


def test_running_detail_is_replaced_when_the_step_finishes(env: dict[str, Any]) -> None:
    def step(ctx: StepContext) -> str:
        ctx.journal.step_progress(ctx.bundle_id, "apply:x", "Dataset public/m: phase PROCESSING")
        seen.append(ctx.journal.steps(ctx.bundle_id)[0].detail)
        return "READY"

    seen: list[str | None] = []
    defs = [StepDef("apply:x", step)]
    _admit(env, defs)
    run_steps(_ctx(env), defs)
    assert seen == ["Dataset public/m: phase PROCESSING"]
    assert env["j"].steps("sha256:" + "a" * 64)[0].detail == "READY"


def test_planner_names_apply_steps_from_the_index_alone(env: dict[str, Any]) -> None:
    names = [d.name for d in deploy.journal_steps(env["idx"], env["cfg"])]
    assert names == ["apply:manifests-ns", "apply:simulate-gpu", "apply:sql", "apply:prune"]


def test_without_site_every_apply_step_is_pending_with_the_reason(env: dict[str, Any]) -> None:
    defs = deploy.journal_steps(env["idx"], env["cfg"])
    _admit(env, defs)
    out = run_steps(_ctx(env), defs)
    assert out.state == "waiting"
    steps = env["j"].steps("sha256:" + "a" * 64)
    assert {s.state for s in steps} == {"pending"}
    assert all(s.detail and s.detail.startswith("no site: section in the agent config") for s in steps)


def test_a_superseded_bundle_skips_its_unfinished_apply_steps(env: dict[str, Any]) -> None:
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    defs = deploy.journal_steps(env["idx"], env["cfg"])
    _admit(env, defs, old)
    assert run_steps(_ctx(env, old), defs).state == "waiting"  # no site: pending
    _admit(env, defs, new)                                     # the same name, admitted later
    assert run_steps(_ctx(env, old), defs).state == "complete"
    steps = env["j"].steps(old)
    assert {s.state for s in steps} == {"skipped"}
    assert steps[0].detail.startswith("superseded by demo 1.0.0 (received later)")
    explicit = _ctx(env, old)
    explicit.explicit = True                        # `agent apply` on exactly this bundle
    env["j"].reset_steps(old, [d.name for d in defs])
    assert run_steps(explicit, defs).state == "waiting"


def test_load_balancer_addresses_become_etc_hosts_lines() -> None:
    res = StepResult("done", "1 ready", outputs={"Service default/gateway-istio": {"addresses": ["10.64.24.211"]},
                                                   "Deployment x/y": {}})
    assert deploy.etc_hosts(res, "cn-sh-a1") == ["10.64.24.211 cn-sh-a1"]


def test_monitor_writes_the_latest_progress_and_feeds_the_watchdog_until_the_limit(env: dict[str, Any]) -> None:
    fed: list[int] = []
    defs = [StepDef("apply:x", lambda ctx: "")]
    _admit(env, defs)
    bid = "sha256:" + "a" * 64
    env["j"].step_started(bid, "apply:x")
    ctx = _ctx(env)
    ctx.progress = fed.append  # type: ignore[assignment]
    old = deploy.KEEPALIVE, deploy.DETAIL_EVERY
    deploy.KEEPALIVE, deploy.DETAIL_EVERY = 0.1, 0.05
    try:
        with deploy.Monitor(ctx, "apply:x", limit=0.7) as m:
            m(ProgressEvent("x", "apply Namespace x", 0, 2))
            m(ProgressEvent("x", "Dataset public/m: phase PENDING"))   # within the throttle: written by the thread
            time.sleep(0.3)
            assert env["j"].steps(bid)[0].detail == "Dataset public/m: phase PENDING"
            n = len(fed)
            time.sleep(0.8)
            assert len(fed) > n >= 2     # fed while blocked …
            n = len(fed)
            time.sleep(0.3)
            assert len(fed) == n         # … but not beyond the step's limit
    finally:
        deploy.KEEPALIVE, deploy.DETAIL_EVERY = old


# ---------------------------------------------------------------- the journal cannot be written (disk full)

FULL = sqlite3.OperationalError("database or disk is full")


def test_a_journal_write_that_fails_between_steps_fails_the_step_with_a_reason(env: dict[str, Any]) -> None:
    """SQLITE_FULL from the runner's own journal write (here: starting the second step) is a failure of that step
    with "disk full while …", not an exception that leaves the bundle running; the store's journal reserve is
    released for the record and made again before the next step."""
    bid = "sha256:" + "a" * 64
    defs = [StepDef("ingest", lambda ctx: "stored"), StepDef("publish", lambda ctx: "published")]
    _admit(env, defs)
    ctx = _ctx(env)
    j = env["j"]
    orig = j.step_started

    def step_started(b: str, name: str) -> None:
        if name == "publish":
            raise FULL
        orig(b, name)

    j.step_started = step_started
    out = run_steps(ctx, defs)
    assert (out.state, out.step) == ("failed", "publish")
    row = j.bundle(bid)
    assert row.state == "failed"
    assert row.detail == "publish: disk full while publishing: journal: database or disk is full"
    assert {s.name: s.state for s in j.steps(bid)} == {"ingest": "done", "publish": "failed"}
    assert not ctx.store.reserve.exists()
    del j.step_started
    assert run_steps(_ctx(env), defs).state == "complete"
    assert ctx.store.reserve.exists()


def test_when_not_even_the_failure_can_be_recorded_status_still_shows_it(env: dict[str, Any]) -> None:
    """The journal refuses every write once publish runs: the failure goes to journal.fallback (pre-allocated) and
    memory, and status shows the bundle failed with that reason although its row still says running."""
    bid = "sha256:" + "a" * 64
    j = env["j"]

    def publish(ctx: StepContext) -> str:
        if ran:
            return "published"
        ran.append(1)
        for name in ("step_finished", "set_state", "step_progress"):
            setattr(j, name, lambda *a, **kw: (_ for _ in ()).throw(FULL))
        raise OSError(errno.ENOSPC, "No space left on device", "store/tmp/index.json")

    ran: list[int] = []

    defs = [StepDef("ingest", lambda ctx: "stored"), StepDef("publish", publish)]
    _admit(env, defs)
    assert env["j"].fallback.path.stat().st_size == FALLBACK_BYTES  # pre-allocated when the journal opened
    assert run_steps(_ctx(env), defs).state == "failed"
    assert j.bundle(bid).state == "running"                          # the journal could not take it
    assert "disk full while publishing" in j.unrecorded[bid]["detail"]
    st = bundle_status(Journal(Database(env["cfg"].journal_path, readonly=True)))[0]  # what `agent status` shows
    assert st["state"] == "failed" and st["reason"] == "step-failed", st
    assert st["detail"].startswith("publish: disk full while publishing: [Errno 28] No space left on device")
    assert "journal.fallback" in st["detail"]
    steps = {s["name"]: s for s in st["steps"]}
    assert steps["publish"]["state"] == "failed" and "disk full" in steps["publish"]["detail"]
    assert env["j"].fallback.path.stat().st_size == FALLBACK_BYTES  # written in place, never grown
    for name in ("step_finished", "set_state", "step_progress"):
        delattr(j, name)
    assert run_steps(_ctx(env), defs).state == "complete"           # space again: the next run goes on
    assert j.unrecorded == {} and bundle_status(j)[0]["state"] == "complete"


def test_status_never_shows_running_for_a_bundle_no_pipeline_runs(env: dict[str, Any]) -> None:
    """A ``running`` row is running only while a pipeline holds pipeline.lock for it; otherwise (the agent was
    killed, or could not record how the step ended) status says interrupted."""
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    defs = [StepDef("ingest", lambda ctx: "")]
    j = env["j"]
    for bid in (a, b):
        _admit(env, defs, bid)
        j.step_started(bid, "ingest")  # ... and the process died here
    st = {s["id"]: s for s in bundle_status(j)}
    assert st[a]["state"] == st[b]["state"] == "interrupted"
    assert "no reason recorded: see the agent log" in st[a]["detail"]
    assert st[a]["steps"][0]["state"] == "interrupted"
    lock = PipelineLock(env["cfg"].state_dir)  # another pipeline runs b
    with lock.held():
        lock.owner(b)
        st = {s["id"]: s for s in bundle_status(j)}
        assert (st[a]["state"], st[b]["state"]) == ("interrupted", "running")
        assert st[b]["steps"][0]["state"] == "running"
    st = {s["id"]: s for s in bundle_status(j)}
    assert st[b]["state"] == "interrupted"
    with lock.held(task="gc"):  # agent gc holds the pipeline: it runs no bundle, so every running row is stale
        st = {s["id"]: s for s in bundle_status(j)}
        assert (st[a]["state"], st[b]["state"]) == ("interrupted", "interrupted")
        other = PipelineLock(lock.path.parent)
        with pytest.raises(PipelineBusy, match=r"agent gc \(pid \d+\)"), other.held(wait=False):
            pass
