"""``hydra-bundle agent preflight BUNDLE``: the preflight checks of a bundle against this site, alone (nothing is
applied, nothing journaled), as a table or ``--json``; exit 1 when a check fails. The checks and their views are
in ``preflight_view.py`` (also what ``agent plan`` shows as the planned ``preflight`` step)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .agent_common import config_option, load_config
from .common import emit_json, handle_errors


@click.command("preflight")
@click.argument("bundle")
@click.option("--version", "version", default=None, help="Pick this version of NAME (default: the highest sequence).")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON ({bundle, ok, summary, checks: [{name, status, "
                                                      "detail, hint}]}).")
@handle_errors
def preflight_cmd(bundle: str, version: str | None, config_path: Path | None, as_json: bool) -> None:
    """Check what BUNDLE needs of this site, alone: Kubernetes version, APIs/CRDs, storage classes, MetalLB
    addresses, MySQL credentials, image architectures, node memory, free space. Nothing is applied.

    BUNDLE is the name (or digest) of an admitted bundle, or a bundle file (verified first). Exit 1 when a check
    fails, 0 otherwise (warnings and skipped checks are printed)."""
    from ..apply.plan import build_plan
    from .preflight_view import check_bundle, load

    cfg = load_config(config_path)
    idx, bid, info, read = load(cfg, bundle, version)
    plan = build_plan(idx, cfg.site, read, digest=bid) if cfg.site is not None and read is not None else None
    if cfg.site is not None and read is None:
        click.echo("note: the bundle's manifests are not in the store yet (not ingested): only what its index and "
                   "requirements say is checked; give the bundle file to check everything", err=True)
    report = check_bundle(cfg, idx, bid, plan)
    head = {"name": idx.name, "version": idx.version, "sequence": idx.sequence,
            **{k: v for k, v in info.items() if k != "steps"}}
    if as_json:
        emit_json({"bundle": head, **report.json()})
    else:
        click.echo(f"preflight for {idx.name} {idx.version} {bid[:19]} on this site")
        click.echo(report.table())
        click.echo(("FAILED: " if report.failed else "ok: ") + report.summary)
    sys.exit(1 if report.failed else 0)
