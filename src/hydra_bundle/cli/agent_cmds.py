"""``hydra-bundle agent …``: run the on-site agent and ask it what is on this site."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from ..agent.config import CONFIG_ENV, DEFAULT_CONFIG, AgentConfig, load_config
from ..agent.journal import Database, Journal
from ..agent.published import Published
from ..digest import human_bytes
from ..errors import UsageError
from .common import emit_json, handle_errors

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"Agent config [default: ${CONFIG_ENV} or {DEFAULT_CONFIG}].")


def _journal(cfg: AgentConfig) -> tuple[Database, Journal]:
    if not cfg.journal_path.exists():
        raise UsageError(f"{cfg.journal_path}: no state yet (has the agent run with this config?)")
    db = Database(cfg.journal_path, readonly=not os.access(cfg.journal_path, os.W_OK))
    return db, Journal(db)


@click.group("agent")
def agent_group() -> None:
    """The on-site agent: drop-dir daemon, embedded registry and file server."""


@agent_group.command("run")
@config_option
@handle_errors
def run_cmd(config_path: Path | None) -> None:
    """Run the agent in the foreground (systemd: Type=notify)."""
    from ..agent import log as agent_log
    from ..agent.daemon import Agent

    cfg = load_config(config_path)
    agent_log.setup()
    sys.exit(Agent(cfg).run())


@agent_group.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def ingest_cmd(file: Path, config_path: Path | None, as_json: bool) -> None:
    """One-shot: run FILE through the same pipeline as the daemon (verify, ingest, publish, push).

    Exit 0 when the bundle is complete (or already was), 1 otherwise."""
    from ..agent import log as agent_log
    from ..agent.pipeline import Pipeline

    cfg = load_config(config_path)
    agent_log.setup()
    res = Pipeline(cfg).process_file(file.resolve(), force=True)
    if as_json:
        emit_json(res.json())
    else:
        what = f"{res.name} {res.version}" if res.name else str(file)
        extra = f" ({res.reason}: {res.detail})" if res.reason or res.detail else ""
        click.echo(f"{res.state}: {what}{extra}")
    sys.exit(0 if res.state in ("complete", "duplicate") else 1)


@agent_group.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def status_cmd(config_path: Path | None, as_json: bool) -> None:
    """What is on this site: bundles with version, sequence, digest, state and components."""
    cfg = load_config(config_path)
    _, j = _journal(cfg)
    bundles = j.status()
    if as_json:
        emit_json({"bundles": bundles})
        return
    if not bundles:
        click.echo("no bundles yet")
    for b in bundles:
        when = b["completedAt"] or b["updatedAt"]
        click.echo(f"{b['name'] or '?'} {b['version'] or '?'}  sequence {b['sequence']}  {b['state']}  {when}  "
                   f"{b['digest'][:19]}" + (f"  ({b['reason']}: {b['detail']})" if b["reason"] else ""))
        for s in b["steps"]:
            click.echo(f"    step {s['name']:<10} {s['state']:<8} {s['detail'] or ''}")
        for c in b["components"]:
            click.echo(f"    {c['kind']:<8} {c['ref']}  {c['digest'][:19]}")


@agent_group.command("history")
@config_option
@click.option("--limit", "-n", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def history_cmd(config_path: Path | None, limit: int, as_json: bool) -> None:
    """Recent events: received, steps, quarantined, complete, duplicates."""
    cfg = load_config(config_path)
    _, j = _journal(cfg)
    events = j.history(limit)
    if as_json:
        emit_json({"events": events})
        return
    for e in events:
        who = f"{e['name'] or '?'} {e['version'] or ''}".strip()
        click.echo(f"{e['at']}  {who:<30} {e['event']}" + (f"  {e['detail']}" if e["detail"] else ""))


@agent_group.command("inventory")
@config_option
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON file to write ('-' for stdout).")
@handle_errors
def inventory_cmd(config_path: Path | None, out: Path) -> None:
    """Every blob digest this site holds (published), with the bundles: the input for delta bundles."""
    cfg = load_config(config_path)
    db, j = _journal(cfg)
    blobs = Published(db).inventory()
    data = {
        "format": "hydra-bundle-inventory/v1",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundles": [{"name": b.name, "version": b.version, "sequence": b.sequence, "digest": b.id}
                    for b in j.bundles(("complete",))],
        "blobs": [{"digest": d, "size": s} for d, s in blobs],
    }
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if str(out) == "-":
        click.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    click.echo(f"wrote {out}: {len(blobs)} blobs, {human_bytes(sum(s for _, s in blobs))}", err=True)
