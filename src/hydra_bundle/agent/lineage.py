"""The bundles of one name on this site, for ``agent remove`` and ``agent rollback``: which are retained (admitted,
verified, not refused), and which one the site runs now (``live``: the latest to publish of those not removed or
rolled back from)."""

from __future__ import annotations

from ..errors import UnknownBundle
from ..states import FINISHED, LIFECYCLE_ENDED, BundleState
from .journal import BundleRow, Journal


def retained(j: Journal, name: str) -> list[BundleRow]:
    """Every admitted bundle of ``name`` (oldest sequence first); UnknownBundle when there is none."""
    rows = [r for r in j.bundles() if r.name == name and r.verified and r.index_json is not None
            and r.state != BundleState.QUARANTINED]
    if not rows:
        known = sorted({r.name for r in j.bundles() if r.name and r.verified and r.state != BundleState.QUARANTINED})
        raise UnknownBundle(f"no bundle {name!r} on this site" + (f" (known: {', '.join(known)})" if known else ""))
    return sorted(rows, key=lambda r: (r.sequence or 0, r.received_at or 0))


def published_at(j: Journal, bundle_id: str) -> float | None:
    """When the bundle's publish step finished (None: it has not)."""
    rows = j.db.query("SELECT state, finished_at FROM steps WHERE bundle_id=? AND name='publish'", (bundle_id,))
    if not rows or rows[0]["state"] not in FINISHED:
        return None
    return float(rows[0]["finished_at"] or 0)


def live(j: Journal, rows: list[BundleRow]) -> BundleRow | None:
    """The bundle of these the site runs now, or None (all removed, or none published yet)."""
    cands = [(t, r) for r in rows if r.state not in LIFECYCLE_ENDED
             for t in [published_at(j, r.id)] if t is not None]
    return max(cands, key=lambda c: c[0])[1] if cands else None
