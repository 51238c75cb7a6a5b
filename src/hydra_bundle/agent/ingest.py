"""The ``ingest`` step: copy every member of a signature-verified bundle into the content store.

Each member is checked against the signed index while it streams (name, size from the tar header equal to
the index, sha256 of the bytes) — the same rules as ``hydra-bundle verify`` because it is the same reader.
Each byte is read once from the drop dir; blobs the store already holds (from earlier bundles or an
interrupted run of this one) are skipped without being read. The step's blobs are made durable as one batch
(:meth:`Store.batch`) before it returns, so the journal never records a step whose blobs a crash could lose.
A mismatch raises VerifyError: the caller quarantines the bundle and removes the blobs this run added.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..bundle import INSTALLER_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME
from ..bundle.index import BundleIndex
from ..bundle.reader import OpenBundle
from ..disk import human_bytes
from ..errors import HydraError, VerifyError
from .config import Limits
from .runner import Blocked, StepContext
from .store import Store


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
    """Stream an unsplit bundle into the store; for a split bundle the parts were ingested as they landed
    (:func:`ingest_part`), so only the final check runs. Either way every blob the index lists — including
    the ones a delta bundle left out — must be in the store, else the bundle waits naming the missing blob."""
    ob = ctx.opened
    idx = ctx.index
    store = ctx.store
    n_added = n_present = bytes_added = 0
    if idx.parts is None and ob is not None:
        n_added, n_present, bytes_added = _stream(ctx, ob)
    elif idx.parts is None and any(not b.omitted and not store.has(b.digest, b.size) for b in idx.blobs):
        raise HydraError("the bundle file is gone and its content is not in the store yet; drop it again")
    missing = [b for b in idx.blobs if not store.has(b.digest, b.size)]
    carried = [b for b in missing if not b.omitted]
    if carried:  # cannot happen with a verified stream unless the store was changed underneath us
        raise VerifyError("missing-member", f"{len(carried)} blob(s) not in the store after ingest")
    if missing:
        b = missing[0]
        raise Blocked(f"missing blob {b.digest} ({human_bytes(b.size)}, {b.mediaType}) and {len(missing) - 1} "
                      "more: this delta bundle leaves them out and the site does not hold them; drop a bundle "
                      "that carries them (or the full bundle), then it completes on the next retry")
    om = len(idx.omitted())
    return (f"{n_added} blobs stored ({human_bytes(bytes_added)}), {n_present} already present"
            + (f", {om} left out by the delta and present" if om else "")
            + (f", {idx.parts.count} parts" if idx.parts else ""))


def _stream(ctx: StepContext, ob: OpenBundle) -> tuple[int, int, int]:
    idx, store = ctx.index, ctx.store
    need = sum(b.size for b in idx.blobs if not b.omitted and not store.has(b.digest, b.size))
    store.ensure_space(need, ctx.config.limits.min_free_bytes, f"ingesting {idx.name} {idx.version}")
    throttle = Throttle(ctx.config.limits.ingest_bytes_per_second)
    added = ctx.added
    n_added = n_present = bytes_added = 0

    def progress(n: int) -> None:
        throttle(n)
        ctx.progress(n)

    with store.batch():  # durable at the end, before the runner journals the step done
        for m in ob.members():
            ctx.check_stop()
            if m.name in (LAYOUT_NAME, LAYOUT_INDEX_NAME, INSTALLER_NAME):
                m.read_into(None, progress)  # verified; the store keeps its own layout files
                continue
            if store.put_member(m, progress):
                added.append(m.digest)
                n_added += 1
                bytes_added += m.size
            else:
                n_present += 1
        ob.finish()
    return n_added, n_present, bytes_added


def ingest_part(store: Store, ob: OpenBundle, limits: Limits, progress: Callable[[int], None],
                check_stop: Callable[[], None]) -> str:
    """Copy one verified-first part into the store: whole blobs as usual, segments written at their offset
    into the blob's assembly file. Raises VerifyError on any mismatch (the part is then quarantined)."""
    idx = ob.index
    assert idx.parts is not None and ob.part is not None
    plan = idx.parts.parts[ob.part - 1]
    sizes = {b.digest: b.size for b in idx.blobs}
    segs = {sg.member: sg for sg in plan.segments}
    need = sum(sizes[d] for d in plan.blobs if not store.has(d)) + sum(
        sg.size for sg in plan.segments if not store.has(sg.blob))
    store.ensure_space(need, limits.min_free_bytes, f"ingesting part {ob.part} of {idx.name} {idx.version}")
    throttle = Throttle(limits.ingest_bytes_per_second)
    n = 0

    def prog(k: int) -> None:
        throttle(k)
        progress(k)

    with store.batch():  # durable at the end, before the caller journals the part ingested
        for m in ob.members():
            check_stop()
            if m.name in (LAYOUT_NAME, LAYOUT_INDEX_NAME, INSTALLER_NAME):
                m.read_into(None, prog)
            elif m.name in segs:
                n += store.put_segment(ob.digest, segs[m.name].blob, segs[m.name].offset, m, prog)
            else:
                n += store.put_member(m, prog)
        ob.finish()
    return f"part {ob.part} of {idx.parts.count}: {n} blobs/segments stored"


def assemble_ready(store: Store, bundle: str, idx: BundleIndex, done: set[int],
                   progress: Callable[[int], None]) -> tuple[list[str], dict[str, list[int]]]:
    """Rename every blob whose segments are all in (their parts are done) into the store. Returns the blobs
    stored and, for each blob that did not reassemble to its digest, the parts to read again."""
    out, bad = [], {}
    for b in idx.blobs:
        segs = idx.segments_of(b.digest)
        if segs and not store.has(b.digest) and all(k in done for k, _ in segs):
            if store.finish_assembly(bundle, b.digest, b.size, progress):
                out.append(b.digest)
            else:
                bad[b.digest] = sorted({k for k, _ in segs})
    return out, bad
