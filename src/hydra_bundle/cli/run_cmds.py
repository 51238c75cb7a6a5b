"""``hydra-bundle agent run`` and ``agent ingest``: the daemon, and one file through its pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..states import Outcome
from .agent_common import config_option, load_config
from .common import emit_json, handle_errors


@click.command("run")
@config_option
@handle_errors
def run_cmd(config_path: Path | None) -> None:
    """Run the agent in the foreground (systemd: Type=notify)."""
    from ..agent import log as agent_log
    from ..agent.daemon import Agent

    cfg = load_config(config_path)
    agent_log.setup()
    sys.exit(Agent(cfg).run())


@click.command("ingest")
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
    sys.exit(0 if res.state in (Outcome.COMPLETE, Outcome.DUPLICATE) else 1)
