"""The ``ingest`` step: copy every member of a signature-verified bundle into the content store.

Each member is checked against the signed index while it streams (name, size from the tar header equal to
the index, sha256 of the bytes) — the same rules as ``hydra-bundle verify`` because it is the same reader.
Each byte is read once from the drop dir; blobs the store already holds (from earlier bundles or an
interrupted run of this one) are skipped without being read. A mismatch raises VerifyError: the caller
quarantines the bundle and removes the blobs this run added.
"""

from __future__ import annotations

import time

from ..bundle import LAYOUT_INDEX_NAME, LAYOUT_NAME
from ..digest import human_bytes
from ..errors import HydraError, VerifyError
from .steps import StepContext, StepDef


def plan(index: object, config: object) -> list[StepDef]:
    return [StepDef("ingest", run)]


class Throttle:
    """Sleeps so reads stay under ``rate`` bytes/s (limits.ingest_bytes_per_second)."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self.t0 = time.monotonic()
        self.n = 0

    def __call__(self, n: int) -> None:
        if not self.rate:
            return
        self.n += n
        ahead = self.n / self.rate - (time.monotonic() - self.t0)
        if ahead > 0:
            time.sleep(ahead)


def run(ctx: StepContext) -> str:
    ob = ctx.opened
    if ob is None:
        raise HydraError("the bundle file is gone and its content is not in the store yet; drop it again")
    idx = ctx.index
    store = ctx.store
    need = sum(b.size for b in idx.blobs if not store.has(b.digest, b.size))
    store.ensure_space(need, ctx.config.limits.min_free_bytes, f"ingesting {idx.name} {idx.version}")
    throttle = Throttle(ctx.config.limits.ingest_bytes_per_second)
    added: list[str] = ctx.scratch.setdefault("added", [])
    n_added = n_present = 0
    bytes_added = 0

    def progress(n: int) -> None:
        throttle(n)
        ctx.progress(n)

    for m in ob.members():
        ctx.check_stop()
        if m.name in (LAYOUT_NAME, LAYOUT_INDEX_NAME):
            m.read_into(None, progress)  # verified; the store keeps its own layout files
            continue
        if store.put_member(m, progress):
            added.append(m.digest)
            n_added += 1
            bytes_added += m.size
        else:
            n_present += 1
    ob.finish()
    store.sync()
    missing = [b.digest for b in idx.blobs if not store.has(b.digest, b.size)]
    if missing:  # cannot happen with a verified stream unless the store was changed underneath us
        raise VerifyError("missing-member", f"{len(missing)} blob(s) not in the store after ingest")
    return f"{n_added} blobs stored ({human_bytes(bytes_added)}), {n_present} already present"
