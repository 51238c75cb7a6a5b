"""The preflight checks of a bundle against this site, as ``agent preflight`` and ``agent plan`` show them (the
planned ``preflight`` step): imported when one of them runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent.config import AgentConfig
from ..agent.deploy import NO_SITE_SHORT
from ..agent.preflight import STEP, chart_reader, store_info
from ..apply.needs import Needs, needs_of, needs_offline
from ..apply.plan import ApplyPlan
from ..apply.preflight import Report, run_checks
from ..bundle.index import BundleIndex
from ..k8s.objects import BundleInfo
from .bundle_source import from_file, from_journal, store_reader

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


def load(cfg: AgentConfig, bundle: str, version: str | None
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
