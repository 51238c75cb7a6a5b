"""``hydra-bundle agent remove | rollback`` and the previews ``agent plan --remove NAME`` / ``agent plan NAME --to
VERSION``. Listed in the ``agent`` group's table (``agent_cmds``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..states import Outcome
from .agent_common import config_option, load_config, open_journal
from .common import emit_json, handle_errors

if TYPE_CHECKING:
    from ..agent.config import AgentConfig


def _pipeline(cfg: AgentConfig) -> Any:
    from ..agent import log as agent_log
    from ..agent.pipeline import Pipeline

    open_journal(cfg)[0].close()  # UsageError when the agent never ran with this config
    agent_log.setup()
    pipe = Pipeline(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: pipe.stop.set())
    return pipe


def _steps(pipe: Any, bundle_id: str, prefix: str | None) -> list[dict[str, Any]]:
    return [s.json() for s in pipe.journal.steps(bundle_id) if prefix is None or s.name.startswith(prefix)]


def _echo_result(res: Any, what: str, steps: list[dict[str, Any]]) -> None:
    click.echo(f"{res.state}: {what}" + (f" ({res.reason}: {res.detail})" if res.reason and res.detail else ""))
    for s in steps:
        click.echo(f"    {s['name']:<28} {s['state']:<8} {s['detail'] or ''}")
        for c in (s.get("result") or {}).get("changes") or []:
            click.echo(f"    {'':<28} change: {c}")


@click.command("remove")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the bundle's CRDs, Namespaces and SQL rows.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def remove_cmd(name: str, purge: bool, config_path: Path | None, as_json: bool) -> None:
    """Remove what bundle NAME installed: Helm releases uninstalled, labelled objects and Datasets deleted, node
    labels taken off, references no longer served. CRDs, Namespaces and SQL rows stay unless --purge.

    Journaled, resumable steps (`agent status` shows them; run it again after a failure). `agent plan --remove
    NAME` shows first what it would do. Exit 0 when removed (or already), 1 otherwise."""
    from ..agent.journal import REMOVE_PREFIX
    from ..agent.remove import remove

    pipe = _pipeline(load_config(config_path))
    res, sc = remove(pipe, name, purge)
    steps = _steps(pipe, sc.head.id, REMOVE_PREFIX)
    if as_json:
        emit_json({**res.json(), "removed": res.state in (Outcome.COMPLETE, Outcome.DUPLICATE), "purge": purge,
                   "versions": [r.version for r in sc.rows], "steps": steps})
    else:
        _echo_result(res, f"{name} removed" if res.state == Outcome.COMPLETE else f"{name} {sc.head.version}",
                     steps)
    sys.exit(0 if res.state in (Outcome.COMPLETE, Outcome.DUPLICATE) else 1)


@click.command("rollback")
@click.argument("name")
@click.option("--to", "version", required=True, help="The retained version of NAME to go to.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def rollback_cmd(name: str, version: str, config_path: Path | None, as_json: bool) -> None:
    """Go back (or forth) to a retained VERSION of bundle NAME: publish it again and re-run its apply steps.

    An older sequence is accepted under a one-time downgrade permit granted by this command and used up by this
    run (no global allow_downgrade). `agent plan NAME --to VERSION` shows it first; `agent history` shows who went
    where. Exit 0 when the bundle ends complete, 1 otherwise."""
    from ..agent.deploy import PREFIX
    from ..agent.rollback import rollback

    pipe = _pipeline(load_config(config_path))
    res, plan = rollback(pipe, name, version)
    steps = [s for s in _steps(pipe, plan.target.id, None) if s["name"] in plan.rerun]
    if as_json:
        emit_json({**res.json(), "rollback": plan.json(), "steps": steps})
    else:
        click.echo(plan.text())
        _echo_result(res, f"{name} {version}", [s for s in steps if s["name"].startswith(PREFIX)
                                                 or s["name"] == "publish"])
    sys.exit(0 if res.state == Outcome.COMPLETE else 1)


def plan_remove(cfg: AgentConfig, name: str, purge: bool, as_json: bool) -> None:
    """``agent plan --remove NAME``: what ``agent remove`` would do now; nothing is changed."""
    from ..agent.published import Published
    from ..agent.remove import preview, preview_text, scope

    db, j = open_journal(cfg)
    sc = scope(j, cfg, name, purge)
    doc = preview(cfg, j, Published(db), sc)
    if as_json:
        emit_json({"action": "remove", **doc})
        return
    click.echo(preview_text(doc))
    click.echo("(`hydra-bundle agent remove NAME` journals these steps; nothing was done)")


def rollback_target(cfg: AgentConfig, name: str, version: str) -> tuple[str, dict[str, Any], str]:
    """``agent plan NAME --to VERSION``: (the target's digest for the apply plan, the rollback as JSON, as text)."""
    from ..agent.published import Published
    from ..agent.rollback import check
    from ..oci.layout import blob_path

    def has(digest: str, size: int) -> bool:  # read-only: a plan creates no store
        try:
            return blob_path(cfg.store_dir, digest).stat().st_size == size
        except OSError:
            return False

    db, j = open_journal(cfg)
    plan = check(j, has, Published(db), cfg, name, version)
    return plan.target.id, plan.json(), plan.text()
