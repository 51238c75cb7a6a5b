"""``agent rollback NAME --to VERSION``: run a retained version of NAME again — publish it and re-run its apply
steps (explicitly: superseded or not), as the journaled steps of that bundle.

Going to a lower sequence is what rollback protection refuses; instead of the global ``allow_downgrade`` switch
the command grants a **one-time permit** for exactly that bundle (``permits``), journaled with who granted it; the
pipeline's checks accept the bundle while the permit is open, and the run that publishes it uses it up. Any later
downgrade needs a new ``agent rollback``. Once the target is published, what the bundle left behind no longer
serves (its references the target does not have), its prune step deletes the objects and releases of the newer
version it does not have, and the version rolled back from is ``rolled-back`` (retained: ``agent rollback --to``
it returns). ``agent plan NAME --to VERSION`` shows all of this first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NotRetained, UsageError
from ..states import FINISHED, BundleState
from . import changes, lineage, permits, preflight
from .config import AgentConfig
from .deploy import PREFIX
from .journal import BundleRow, Journal
from .pipeline import Pipeline, Result, step_defs
from .published import Published
from .unpublish import unpublish


@dataclass
class RollbackPlan:
    name: str
    target: BundleRow
    current: BundleRow | None         # what the site runs now (None: nothing, e.g. after `agent remove`)
    downgrade: bool                   # a lower sequence than one the site published: needs a one-time permit
    rerun: list[str]                  # the target's journal steps that run again
    leaving: list[BundleRow]          # bundles of the name served now that the target replaces

    def json(self) -> dict[str, Any]:
        def ref(r: BundleRow | None) -> dict[str, Any] | None:
            return None if r is None else {"version": r.version, "sequence": r.sequence, "digest": r.id,
                                           "state": str(r.state)}
        return {"name": self.name, "from": ref(self.current), "to": ref(self.target),
                "downgradePermit": "granted for this run" if self.downgrade else "not needed",
                "rerun": self.rerun, "unpublish": [r.version for r in self.leaving]}

    def text(self) -> str:
        frm = f"{self.current.version} (sequence {self.current.sequence})" if self.current else "nothing"
        permit = ("a one-time downgrade permit is granted for this run and used up by it" if self.downgrade
                  else "no downgrade permit needed")
        return (f"rollback {self.name}: {frm} → {self.target.version} (sequence {self.target.sequence}); {permit}; "
                f"re-runs {', '.join(self.rerun)}")


def check(j: Journal, has: Callable[[str, int], bool], published: Published, config: AgentConfig, name: str,
          version: str) -> RollbackPlan:
    """What ``agent rollback`` would do; typed errors for everything that stops it. ``has(digest, size)``: is the
    blob in the content store?"""
    rows = lineage.retained(j, name)
    matches = [r for r in rows if r.version == version]
    if not matches:
        raise NotRetained(f"{name} {version} is not retained on this site (retained: "
                          f"{', '.join(str(r.version) for r in rows)})")
    target = max(matches, key=lambda r: r.received_at or 0)
    steps = {s.name: s.state for s in j.steps(target.id)}
    idx = target.index()
    missing = [b.digest for b in idx.blobs if not has(b.digest, b.size)]
    if steps.get("ingest") not in FINISHED or missing:
        raise NotRetained(f"{name} {version} is not fully in the content store ({len(missing)} blob(s) missing"
                          f"{', first ' + missing[0] if missing else ''}): drop its bundle file again instead")
    current = lineage.live(j, rows)
    if current is not None and current.id == target.id:
        raise UsageError(f"{name} {version} is what the site runs now (`hydra-bundle agent apply {name}` re-applies "
                         "it)")
    top = j.max_published_sequence(name, target.id)
    downgrade = top is not None and (target.sequence or 0) < top and not config.allow_downgrade
    rerun = [d.name for d in step_defs(idx, config)
             if d.name in ("publish", "push", preflight.STEP) or d.name.startswith(PREFIX)]
    serving = published.serving()
    leaving = [r for r in rows if r.id != target.id and r.id in serving]
    return RollbackPlan(name, target, current, downgrade, rerun, leaving)


def rollback(pipe: Pipeline, name: str, version: str, user: str | None = None) -> tuple[Result, RollbackPlan]:
    """Run the rollback (module docstring); PipelineBusy when another run holds the lock."""
    user = user or changes.operator()
    j = pipe.journal
    with pipe.lock.held(wait=False):
        plan = check(j, pipe.store.has, pipe.published, pipe.config, name, version)
        t = plan.target
        cur = plan.current
        if plan.downgrade:
            permits.grant(j, t.id, name, cur.version if cur else None, t.version,
                          cur.sequence if cur else j.max_published_sequence(name, t.id), t.sequence, user)
        j.reset_steps(t.id, plan.rerun)
        j.event(t.id, name, t.version, "rollback", f"to {t.version} from {cur.version if cur else 'nothing'} by "
                                                   f"{user}")
        res = pipe.run_admitted(t.id, t.index())
        if lineage.published_at(j, t.id) is not None and (pub := j.bundle(t.id)) is not None \
                and pub.state != BundleState.QUARANTINED:
            if plan.leaving:
                unpublish(j, pipe.published, pipe.store, [r.id for r in plan.leaving])
            for r in lineage.retained(j, name):
                if r.id != t.id and r.state not in (BundleState.REMOVED, BundleState.ROLLED_BACK):
                    j.set_state(r.id, BundleState.ROLLED_BACK, "rolled-back",
                                f"{user} went to {t.version}; `hydra-bundle agent rollback {name} --to {r.version}` "
                                "returns")
        return res, plan
