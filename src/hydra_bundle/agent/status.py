"""What ``agent status`` shows: every bundle with its steps, components and part set, from the journal.

A ``running`` row is shown running only while a pipeline holds ``pipeline.lock`` for that bundle; otherwise it
is shown ``failed`` with the reason from ``journal.fallback`` when there is one newer than the row (the journal
could not be written), else ``interrupted`` ("no reason recorded: see the agent log"). The agent resumes such
rows like failed ones once the disk has room again."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..states import BundleState, StepState
from .fallback import FALLBACK_NAME
from .journal import BundleRow, Journal, iso
from .lock import PipelineLock


def missing_parts(count: int, have: Iterable[int]) -> list[int]:
    """Part numbers 1..count not in ``have`` (what a split bundle still waits for)."""
    got = set(have)
    return [k for k in range(1, count + 1) if k not in got]


def bundle_status(j: Journal) -> list[dict[str, Any]]:
    """Every bundle the journal knows, as ``agent status --json`` prints it."""
    with PipelineLock.probe(j.db.path.parent) as holder:
        rows = j.bundles()
        steps = {b.id: [s.json() for s in j.steps(b.id)] for b in rows}
    stale = [b for b in rows if b.state == BundleState.RUNNING]
    if holder.busy and holder.task is None and stale:
        # the holder's bundle is live (one that could not say which: the latest one); gc runs none of them
        live = holder.bundle or max(stale, key=lambda b: b.updated_at or 0).id
        stale = [b for b in stale if b.id != live]
    notes = j.fallback.read() if stale else {}
    shown = {b.id: _unowned(b, steps[b.id], notes.get(b.id)) for b in stale}
    out = []
    for b in rows:
        state, reason, detail = shown.get(b.id, (b.state, b.reason, b.detail))
        comps: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        if b.index_json and b.verified:  # an unverified index is never shown (older journals kept some)
            idx = json.loads(b.index_json)
            if idx.get("parts"):
                n = idx["parts"]["count"]
                have = sorted(j.parts_done(b.id))
                extra["parts"] = {"of": n, "received": have, "missing": missing_parts(n, have)}
            for kind, items in (idx.get("components") or {}).items():
                for item in items:
                    comps.append({"kind": kind[:-1], "ref": item["ref"], "digest": item["digest"],
                                  **({"name": item["name"]} if "name" in item else {})})
        out.append({
            "id": b.id, "digest": b.id, **({"name": b.name, "version": b.version, "sequence": b.sequence}
                                           if b.verified else {"name": None, "version": None, "sequence": None}),
            "state": str(state), "verified": bool(b.verified), "source": b.source, "signer": b.signer,
            "size": b.size, "created": b.created, "expires": b.expires, "receivedAt": iso(b.received_at),
            "updatedAt": iso(b.updated_at), "completedAt": iso(b.completed_at), "reason": reason,
            "detail": detail, "steps": steps[b.id], "components": comps, **extra,
        })
    return out


def _unowned(b: BundleRow, steps: list[dict[str, Any]], note: dict[str, Any] | None
             ) -> tuple[BundleState, str, str]:
    """(state, reason, detail) to show for a ``running`` row no pipeline runs; fixes up ``steps`` in place."""
    if note is not None and float(note.get("at") or 0) >= (b.updated_at or 0):
        for s in steps:
            if s["name"] == note.get("step") or (note.get("step") is None and s["state"] == StepState.RUNNING):
                s["state"], s["detail"] = str(StepState.FAILED), note.get("stepDetail")
        return (BundleState.FAILED, note.get("reason") or "step-failed",
                f"{note.get('detail')} (kept in {FALLBACK_NAME}: the journal could not be written)")
    for s in steps:
        if s["state"] == StepState.RUNNING:
            s["state"] = str(StepState.INTERRUPTED)
    return (BundleState.INTERRUPTED, "interrupted",
            f"{b.detail or 'a step'} was running when the agent stopped or could not write its journal (no reason "
            "recorded: see the agent log); it resumes on the next run")
