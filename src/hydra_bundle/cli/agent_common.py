"""Helpers shared by the ``agent`` commands: the --config option, loading the config, the journal, finding a
bundle by name. Light at import: the config schema (pydantic) and the journal load when a command runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..agent.configpath import CONFIG_ENV, DEFAULT_CONFIG
from ..errors import UnknownBundle, UsageError
from ..states import LIFECYCLE_ENDED, BundleState

if TYPE_CHECKING:
    from ..agent.config import AgentConfig
    from ..agent.db import Database
    from ..agent.journal import BundleRow, Journal

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"Agent config [default: ${CONFIG_ENV} or {DEFAULT_CONFIG}].")


def load_config(path: Path | None) -> AgentConfig:
    from ..agent.config import load_config as load

    return load(path)


def open_journal(cfg: AgentConfig) -> tuple[Database, Journal]:
    if not cfg.journal_path.exists():
        raise UsageError(f"{cfg.journal_path}: no state yet (has the agent run with this config?)")
    from ..agent.journal import Journal
    from ..agent.schema import open_database

    db = open_database(cfg.journal_path, readonly=not os.access(cfg.journal_path, os.W_OK))
    return db, Journal(db)


def find_bundle(j: Journal, ref: str, version: str | None = None) -> BundleRow:
    """A bundle by name (the highest sequence not refused, preferring what the site runs over versions removed or
    rolled back from; ``version`` picks one), or by digest (prefix)."""
    rows = [r for r in j.bundles() if r.index_json is not None]
    hexref = ref.removeprefix("sha256:").lower()
    if len(hexref) >= 7 and all(c in "0123456789abcdef" for c in hexref):
        by_digest = [r for r in rows if r.id.removeprefix("sha256:").startswith(hexref)]
        if len(by_digest) == 1:
            return by_digest[0]
    named = [r for r in rows if r.name == ref and r.state != BundleState.QUARANTINED
             and (version is None or r.version == version)]
    if not named:
        known = sorted({f"{r.name} {r.version}" for r in rows if r.state != BundleState.QUARANTINED})
        what = f"{ref} {version}" if version else ref
        raise UnknownBundle(f"no bundle {what!r} on this site" + (f" (known: {', '.join(known)})" if known else ""))
    return max(named, key=lambda r: (r.state not in LIFECYCLE_ENDED, r.sequence or 0, r.received_at or 0))
