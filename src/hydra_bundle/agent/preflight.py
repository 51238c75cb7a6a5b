"""The ``preflight`` step: before any ``apply:*`` step, check what the bundle needs of this site
(:mod:`hydra_bundle.apply.preflight`) and keep the result — every check with pass/warn/fail/skip and its fix hint —
with the step (``agent status``, ``--json``: ``steps[].result.checks``).

A ``fail`` blocks the apply steps (:class:`~.runner.Blocked`): the step stays ``pending``, the bundle ``waiting``
with the failed checks in its detail, and nothing is applied. The agent retries it every ``retry_interval``, and
``agent apply NAME`` runs it again at once, so fixing the site is all an operator does. Warnings do not block.
Without ``site:`` the cluster and MySQL checks are ``skip`` and the step is ``pending`` like the apply steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..apply.needs import needs_of, needs_offline
from ..apply.preflight import Report, StoreInfo, run_checks
from ..bundle.index import BundleIndex
from ..oci.layout import blob_path
from ..states import StepState
from . import deploy
from .runner import Blocked, SkipStep, StepContext, StepDef, StepPending

STEP = "preflight"


def journal_steps(apply_steps: list[StepDef]) -> list[StepDef]:
    """The preflight step, when the bundle has apply steps (and its deploy section validates)."""
    if not apply_steps or [d.name for d in apply_steps] == [deploy.PREFIX + "deploy"]:
        return []
    return [StepDef(STEP, run)]


def store_info(root: Path, index: BundleIndex, min_free: int) -> StoreInfo:
    """How much of the bundle the store at ``root`` lacks (read-only: the CLI uses it too)."""
    sizes = {b.digest: b.size for b in index.blobs}
    missing = sum(size for digest, size in sizes.items() if not blob_path(root, digest).is_file())
    return StoreInfo(root, missing, sum(sizes.values()), min_free)


def chart_reader(root: Path) -> Callable[[str], bytes | None]:
    """Chart archives from the store at ``root`` (None when not there)."""
    def read(digest: str) -> bytes | None:
        try:
            return blob_path(root, digest).read_bytes()
        except OSError:
            return None
    return read


def run(ctx: StepContext) -> str:
    newer = None if ctx.explicit else ctx.journal.superseded_by(ctx.bundle_id)
    if newer is not None:
        raise SkipStep(f"superseded by {newer.name} {newer.version} (received later): its own preflight checks the "
                       "site")
    if not ctx.config.apply:
        raise SkipStep(deploy.APPLY_ELSEWHERE)
    cfg = ctx.config
    store = store_info(cfg.store_dir, ctx.index, cfg.limits.min_free_bytes)
    if cfg.site is None:
        report = run_checks(needs_offline(ctx.index), None, None, store, deploy.NO_SITE_SHORT)
    else:
        s = deploy.session(ctx)   # the plan and runtime the apply steps of this run share
        report = run_checks(needs_of(s.plan, ctx.index, chart_reader(cfg.store_dir)), cfg.site, s.runtime, store)
    ctx.result = result(report, cfg.site is None)
    if report.failed:
        raise Blocked(f"{report.summary}; nothing is applied until the site is fixed (the agent retries; "
                      "`hydra-bundle agent apply NAME` re-checks now)")
    if cfg.site is None:
        raise StepPending(f"{deploy.NO_SITE}; {report.summary}")
    return report.summary


def result(report: Report, pending: bool) -> dict[str, object]:
    state = StepState.PENDING if report.failed or pending else StepState.DONE
    out: dict[str, object] = {"state": str(state), **report.json()}
    notes = report.notes()
    if notes:
        out["notes"] = notes
    return out
