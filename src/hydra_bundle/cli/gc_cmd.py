"""``hydra-bundle agent gc [--keep N] [--dry-run] [--json]``: retention for the content store (agent/gc.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from ..errors import HydraError, UsageError
from .agent_common import config_option, load_config
from .common import emit_json, handle_errors


@click.command("gc")
@config_option
@click.option("--keep", type=click.IntRange(1), default=None,
              help="Published versions of each bundle name to keep [default: retention.keep of the config; "
                   "without it every version is kept and only blobs nothing references are removed].")
@click.option("--dry-run", is_flag=True, help="Only say what would be collected and freed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def gc_cmd(config_path: Path | None, keep: int | None, dry_run: bool, as_json: bool) -> None:
    """Remove older bundle versions and unreferenced blobs from the store, under the pipeline lock: unpublish
    first (one transaction), then delete the blobs; report the bytes freed."""
    from ..agent import gc
    from ..agent.journal import Journal
    from ..agent.lock import PipelineLock
    from ..agent.published import Published
    from ..agent.schema import open_database
    from ..agent.store import Store

    cfg = load_config(config_path)
    if not cfg.journal_path.exists():
        raise UsageError(f"{cfg.journal_path}: no state yet (has the agent run with this config?)")
    if keep is None and cfg.retention is not None:
        keep = cfg.retention.keep
    db = open_database(cfg.journal_path)
    j = Journal(db)
    store = Store(cfg.store_dir)
    try:
        with PipelineLock(cfg.state_dir).held(task="gc"):
            rep = gc.collect(j, Published(db), store, keep, dry_run=dry_run)
    except sqlite3.Error as e:  # e.g. the disk is full: nothing was deleted unless the journal committed first
        raise HydraError(f"gc: the journal could not be written: {e}") from None
    if as_json:
        emit_json(rep.json())
        return
    verb = "would collect" if dry_run else "collected"
    for b in rep.plan.bundles:
        click.echo(f"{verb} {b.name} {b.version} (sequence {b.sequence}, {b.id[:19]})")
    click.echo(rep.summary())
