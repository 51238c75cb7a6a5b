"""The step runner's rules (agent/steps.py) and the apply planner's offline parts (agent/deploy.py), in-process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hydra_bundle.agent import deploy
from hydra_bundle.agent.config import AgentConfig
from hydra_bundle.agent.journal import Database, Journal
from hydra_bundle.agent.published import Published
from hydra_bundle.agent.steps import Interrupted, SkipStep, StepContext, StepDef, StepPending, run_steps
from hydra_bundle.agent.store import Store
from hydra_bundle.apply.base import ProgressEvent, StepResult
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.errors import HydraError
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
    db = Database(cfg.journal_path)
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
            raise Interrupted()
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
    names = [d.name for d in deploy.plan(env["idx"], env["cfg"])]
    assert names == ["apply:manifests-ns", "apply:simulate-gpu", "apply:sql", "apply:prune"]


def test_without_site_every_apply_step_is_pending_with_the_reason(env: dict[str, Any]) -> None:
    defs = deploy.plan(env["idx"], env["cfg"])
    _admit(env, defs)
    out = run_steps(_ctx(env), defs)
    assert out.state == "waiting"
    steps = env["j"].steps("sha256:" + "a" * 64)
    assert {s.state for s in steps} == {"pending"}
    assert all(s.detail and s.detail.startswith("no site: section in the agent config") for s in steps)


def test_a_superseded_bundle_skips_its_unfinished_apply_steps(env: dict[str, Any]) -> None:
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    defs = deploy.plan(env["idx"], env["cfg"])
    _admit(env, defs, old)
    assert run_steps(_ctx(env, old), defs).state == "waiting"  # no site: pending
    _admit(env, defs, new)                                     # the same name, admitted later
    assert run_steps(_ctx(env, old), defs).state == "complete"
    steps = env["j"].steps(old)
    assert {s.state for s in steps} == {"skipped"}
    assert steps[0].detail.startswith("superseded by demo 1.0.0 (received later)")
    explicit = _ctx(env, old)
    explicit.scratch["explicit"] = True                        # `agent apply` on exactly this bundle
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
