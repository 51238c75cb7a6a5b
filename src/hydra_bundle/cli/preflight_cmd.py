"""``hydra-bundle agent preflight BUNDLE``: the preflight checks of a bundle against this site, alone (nothing is
applied, nothing journaled), as a table or ``--json``; exit 1 when a check fails. Also what ``agent plan`` shows
as the planned ``preflight`` step."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..agent.config import AgentConfig, load_config
from ..agent.deploy import NO_SITE_SHORT
from ..agent.preflight import STEP, chart_reader, store_info
from ..apply.needs import Needs, needs_of, needs_offline
from ..apply.plan import ApplyPlan, build_plan
from ..apply.preflight import Report, run_checks
from ..bundle.index import BundleIndex
from ..k8s.objects import BundleInfo
from .agent_common import config_option
from .bundle_source import from_file, from_journal, store_reader
from .common import emit_json, handle_errors

ReadBlob = Callable[[str], bytes]


def check_bundle(cfg: AgentConfig, idx: BundleIndex, digest: str, plan: ApplyPlan | None, *,
                 ask: bool = True) -> Report:
    """Run the checks (``ask=False``: only those that need neither the cluster nor MySQL). Without a plan (the
    manifests are not in the store yet) the index and the requirements say what is needed."""
    from ..apply.runtime import Runtime

    store = store_info(cfg.store_dir, idx, cfg.limits.min_free_bytes)
    site = cfg.site
    needs: Needs = needs_of(plan, idx, chart_reader(cfg.store_dir)) if plan is not None else needs_offline(idx)
    if site is None or not ask:
        return run_checks(needs, None, None, store, NO_SITE_SHORT if site is None else "not asked (--offline)")
    rt = Runtime(site, BundleInfo(idx.name, idx.version, digest))
    try:
        return run_checks(needs, site, rt, store)
    finally:
        rt.close()


def plan_entry(cfg: AgentConfig, idx: BundleIndex, plan: ApplyPlan, offline: bool) -> dict[str, Any]:
    """The ``preflight`` step as ``agent plan`` shows it: the checks, asked of the site unless ``--offline``."""
    report = check_bundle(cfg, idx, plan.bundle.digest, plan, ask=not offline)
    return {"journalStep": STEP, "before": "every apply step; a fail keeps them waiting", **report.json()}


def plan_text(entry: dict[str, Any]) -> str:
    lines = [f" 0. {STEP} (checks, before every apply step: a fail keeps them waiting)"]
    for c in entry["checks"]:
        lines.append(f"      {c['status']:<11} {c['name']}: {c['detail']}")
        if c.get("hint") and c["status"] != "pass":
            lines.append(f"      {'':<11} fix: {c['hint']}")
    return "\n".join(lines)


def _load(cfg: AgentConfig, bundle: str, version: str | None
          ) -> tuple[BundleIndex, str, dict[str, Any], ReadBlob | None]:
    """(index, digest, info, manifest reader) of a bundle file (verified) or of an admitted bundle; the reader is
    None when the bundle's manifests are not in the store yet (not ingested)."""
    path = Path(bundle)
    if path.is_file():
        return from_file(cfg, path)
    idx, bid, info, read = from_journal(cfg, bundle, version)
    stored = store_reader(cfg)
    if any(stored(m.file.digest) is None for m in idx.components.manifests):
        return idx, bid, info, None
    return idx, bid, info, read


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
    cfg = load_config(config_path)
    idx, bid, info, read = _load(cfg, bundle, version)
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
