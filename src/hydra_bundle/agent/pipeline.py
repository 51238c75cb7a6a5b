"""One bundle file through the agent: verify the signature first, admit or refuse, then run its steps.

The steps of every bundle, in order (:func:`step_defs`)::

    ingest    (agent.ingest)    copy every member into the content store, verifying each blob
    upgrade   (agent.upgrade)   a newer agent kit in the bundle: install it beside this agent and restart into it
    publish   (agent.publish)   make refs, blobs and model/file paths visible to the servers
    push      (agent.push)      only with ``push:`` configured: copy every served artifact to the site registry
    preflight (agent.preflight) with apply steps: check what the bundle needs of the site; a fail blocks them
    apply:*   (agent.deploy)    one step per ``deploy`` step of the spec (``apply:<name>``), then ``apply:prune``

Order of checks, before anything is written to the store: signature against ``trusted_keys`` (and the
index's own structure) → already complete? (no-op) → expired (freeze attack) → sequence lower than one
already accepted for the same name (rollback attack, unless ``allow_downgrade``) → size limit. Then the
steps run (ingest verifies every blob while copying). Any VerifyError ⇒ quarantine: the file moves to
``state_dir/quarantine/`` with a reason file, blobs this run added and nothing else references are removed,
nothing is published, and whatever was served before stays served.

Only one pipeline runs at a time per state dir (``state_dir/pipeline.lock``), so ``agent ingest`` and the
daemon can share a site; the lock also says which bundle runs now, so ``agent status`` never shows a bundle
``running`` that no process runs (journal module). A journal write that fails outside the steps (the disk is
full) ends the run with a ``failed`` result, reason ``journal-error``, instead of an exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle.index import BundleIndex
from ..bundle.reader import OpenBundle, open_bundle
from ..digest import sha256_bytes
from ..disk import disk_full
from ..errors import Cancelled, VerifyError
from ..states import FINISHED, LIFECYCLE_ENDED, BundleState, Outcome
from . import changes, deploy, ingest, permits, preflight, publish, push, upgrade
from .config import AgentConfig
from .db import Database
from .journal import Journal, removing
from .lock import PipelineLock
from .published import Published
from .quarantine import quarantine
from .runner import StepContext, StepDef, failure_message, run_steps
from .schema import open_database
from .status import missing_parts
from .store import Store

log = logging.getLogger("hydra_bundle.agent")

RESTART = "agent-restart"   # Result.reason: the agent upgraded itself and must restart (exit UPGRADE_EXIT)

# Reasons that may just mean "the copy is not finished yet": re-check the file before quarantining.
_MAYBE_UNSETTLED = {"truncated", "missing-member", "not-a-tar", "bad-layout", "digest-mismatch"}


@dataclass
class Result:
    state: Outcome
    bundle: str | None = None     # bundle id (sha256 of the signed index)
    name: str | None = None
    version: str | None = None
    reason: str | None = None
    detail: str | None = None

    def json(self) -> dict[str, Any]:
        return {k: str(v) if k == "state" else v for k, v in self.__dict__.items() if v is not None}


def step_defs(index: BundleIndex, config: AgentConfig) -> list[StepDef]:
    """The steps of ``index`` on this agent, in order (module docstring)."""
    out = [StepDef("ingest", ingest.run)]
    if index.components.kits:  # the bundle carries the agent: maybe newer than this one
        out.append(StepDef("upgrade", upgrade.run))
    out.append(StepDef("publish", publish.run))
    if config.push is not None:
        out.append(StepDef("push", push.run))
    applies = deploy.journal_steps(index, config)
    out += preflight.journal_steps(applies)  # before any apply step: a failed check keeps them waiting
    out += applies
    names = [d.name for d in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"step name {dup!r} planned twice")
    return out


def _sig(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


class Pipeline:
    def __init__(self, config: AgentConfig, db: Database | None = None, stop: threading.Event | None = None,
                 progress: Callable[[int], None] | None = None, on_result: Callable[[Result], None] | None = None,
                 status: Callable[[str], None] | None = None, daemon: bool = False):
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.db = db or open_database(config.journal_path)
        self.journal = Journal(self.db)
        self.published = Published(self.db)
        self.store = Store(config.store_dir)
        self.lock = PipelineLock(config.state_dir)
        self.keys = config.public_keys()
        self.stop = stop or threading.Event()
        self.progress = progress or (lambda _n: None)
        self.on_result = on_result or (lambda _r: None)
        self.status = status or (lambda _s: None)
        self.daemon = daemon     # the agent daemon: steps may restart it (a kit upgrade)

    def locked(self, task: str | None = None) -> contextlib.AbstractContextManager[None]:
        return self.lock.held(task=task)

    def _journal_failed(self, e: sqlite3.Error, bid: str | None = None) -> Result:
        """A journal write outside the steps failed (admission, drop records): a result, not an exception."""
        if disk_full(e):
            self.store.release_reserve()
        detail = failure_message(None, e)
        log.error("cannot write the journal", extra={"kv": {"digest": bid, "error": detail}})
        return Result(Outcome.FAILED, bid, reason="journal-error", detail=detail)

    def in_drop_dir(self, path: Path) -> bool:
        return path.resolve().parent == self.config.drop_dir.resolve()

    # ---------------------------------------------------------------- entry points

    def process_file(self, path: Path, force: bool = False) -> Result:
        """Run one settled file through the pipeline. Without ``force`` a file already handled (same path,
        size, mtime, inode) is skipped without being read."""
        with self.locked():
            try:
                res = self._process_file(Path(path), force)
            except sqlite3.Error as e:
                res = self._journal_failed(e)
        self.on_result(res)
        return res

    def resume(self, bundle_id: str) -> Result:
        """Continue an admitted bundle (after a restart or a failed step)."""
        with self.locked():
            row = self.journal.bundle(bundle_id)
            if row is None:
                return Result(Outcome.UNKNOWN, bundle_id)
            if row.state in (BundleState.COMPLETE, BundleState.QUARANTINED):
                return Result(Outcome(row.state), bundle_id)
            if row.state == BundleState.COLLECTED:  # its content is gone: only a new drop of the file brings it back
                return Result(Outcome.UNKNOWN, bundle_id, row.name, row.version, "collected", row.detail)
            if row.state in LIFECYCLE_ENDED or removing(self.journal, bundle_id):  # only `agent remove` goes on
                return Result(Outcome.WAITING, bundle_id, row.name, row.version, str(row.state),
                              "rolled back from: `hydra-bundle agent rollback --to` returns to it"
                              if row.state == BundleState.ROLLED_BACK else
                              "removed or being removed: `hydra-bundle agent remove` finishes it")
            steps = {s.name: s.state for s in self.journal.steps(bundle_id)}
            src = Path(row.source) if row.source else None
            try:
                if steps.get("ingest") not in FINISHED and src is not None and src.is_file():
                    res = self._process_file(src, force=True)
                else:
                    res = self._run(bundle_id, row.index(), None, src)
            except sqlite3.Error as e:
                res = self._journal_failed(e, bundle_id)
        self.on_result(res)
        return res

    def reapply(self, bundle_id: str, everything: bool = True) -> Result:
        """``agent apply``: run the apply steps of an ingested bundle again — all of them (they converge), or
        with ``everything=False`` only the failed and pending ones."""
        with self.locked():
            row = self.journal.bundle(bundle_id)
            if row is None:
                return Result(Outcome.UNKNOWN, bundle_id, detail="not an admitted bundle")
            if row.index_json is None or row.state == BundleState.QUARANTINED:
                return Result(Outcome.QUARANTINED, bundle_id, detail="not an admitted bundle")
            if row.state == BundleState.COLLECTED:
                return Result(Outcome.UNKNOWN, bundle_id, row.name, row.version, "collected", row.detail)
            if row.state in (BundleState.REMOVING, BundleState.REMOVED) or removing(self.journal, bundle_id):
                return Result(Outcome.WAITING, bundle_id, row.name, row.version, str(row.state),
                              "the bundle is removed (or being removed): drop the bundle file to install it again")
            steps = {s.name: s.state for s in self.journal.steps(bundle_id)}
            if steps.get("publish") not in FINISHED:
                return Result(_as_outcome(row.state), bundle_id, row.name, row.version, "not-ingested",
                              "the bundle is not ingested and published yet; drop the bundle file (or `agent "
                              "ingest FILE`) first")
            idx = row.index()
            names = [d.name for d in step_defs(idx, self.config)
                     if d.name.startswith(deploy.PREFIX) or d.name == preflight.STEP]  # checked again first
            try:
                self.journal.reset_steps(bundle_id, names if everything else
                                         [n for n in names if steps.get(n) not in FINISHED])
                self.journal.event(bundle_id, row.name, row.version, "apply",
                                   f"re-run {'all' if everything else 'unfinished'} apply steps")
                res = self._run(bundle_id, idx, None, None, explicit=True)
            except sqlite3.Error as e:
                res = self._journal_failed(e, bundle_id)
        self.on_result(res)
        return res

    def run_admitted(self, bundle_id: str, index: BundleIndex) -> Result:
        """Run the unfinished steps of an admitted bundle as an operator's explicit command (``agent rollback``:
        the caller holds the lock and has reset the steps to run)."""
        return self._run(bundle_id, index, None, None, explicit=True)

    # ---------------------------------------------------------------- internals

    def _process_file(self, path: Path, force: bool) -> Result:
        try:
            st = path.stat()
        except FileNotFoundError:
            return Result(Outcome.UNSETTLED, detail=f"{path} disappeared")
        if not force:
            seen = self.journal.seen_drop(str(path), *_sig(st))
            if seen is not None:
                return Result(Outcome.DUPLICATE, seen[0], detail=f"already handled ({seen[1]})")
        try:
            ob = open_bundle(path, self.keys)  # the signature is checked before anything else is trusted
        except VerifyError as e:
            return self._refuse_unverified(path, st, e)
        with ob:
            bid = ob.digest
            self.lock.owner(bid)
            idx = ob.index
            row = self.journal.bundle(bid)
            if row is not None and row.state == BundleState.COMPLETE:
                self.journal.event(bid, idx.name, idx.version, "duplicate", f"{path}: already complete, nothing to do")
                log.info("duplicate bundle", extra={"kv": {"bundle": idx.name, "version": idx.version,
                                                           "file": str(path)}})
                self._done_with_drop(path, st, bid, Outcome.DUPLICATE)
                return Result(Outcome.DUPLICATE, bid, idx.name, idx.version)
            try:
                self._admission_checks(ob, bid)
            except VerifyError as e:
                return self._refuse(path, st, ob, bid, e, [])
            if row is None or row.state in (BundleState.QUARANTINED, BundleState.REMOVED, BundleState.COLLECTED):
                names = [d.name for d in step_defs(idx, self.config)]
                self.journal.admit(bid, idx, ob.index_bytes, str(path), ob.signer, names)
                log.info("bundle admitted", extra={"kv": {"bundle": idx.name, "version": idx.version,
                                                          "sequence": idx.sequence, "digest": bid, "file": str(path)}})
            if ob.part is not None:
                return self._process_part(path, st, ob, bid)
            return self._run(bid, idx, ob, path, st)

    def _process_part(self, path: Path, st: os.stat_result, ob: OpenBundle, bid: str) -> Result:
        """One part of a split bundle: ingest it alone (verify-first), then run the steps once the set is complete.
        A bad part is quarantined on its own; the parts already in are kept."""
        idx = ob.index
        assert idx.parts is not None and ob.part is not None
        done = self.journal.parts_done(bid)
        if ob.part in done:
            self.journal.event(bid, idx.name, idx.version, "duplicate", f"{path}: part {ob.part} already ingested")
            self.journal.record_drop(str(path), *_sig(st), bid, "part")
        else:
            try:
                detail = ingest.ingest_part(self.store, ob, self.config.limits, self.progress, self._check_stop)
                self.journal.part_done(bid, ob.part, str(path))
            except VerifyError as e:
                return self._refuse_part(path, st, ob, bid, e)
            except Cancelled:  # agent stopping: the part is read again on the next start
                return Result(Outcome.INTERRUPTED, bid, idx.name, idx.version, None, f"part {ob.part} interrupted")
            self.journal.record_drop(str(path), *_sig(st), bid, "part")
            self.journal.event(bid, idx.name, idx.version, "part", f"{path}: {detail}")
            log.info("part ingested", extra={"kv": {"bundle": idx.name, "version": idx.version, "part": ob.part,
                                                    "of": idx.parts.count, "file": str(path)}})
            done = self.journal.parts_done(bid)
        _, bad = ingest.assemble_ready(self.store, bid, idx, set(done), self.progress)
        again = sorted({k for ks in bad.values() for k in ks if k in done})
        if again:  # damaged on disk since its parts were verified: read those parts again when they are dropped
            for k in again:
                self.journal.forget_drop(done[k])
            self.journal.forget_parts(bid, again)
            self.journal.event(bid, idx.name, idx.version, "reassembly-failed",
                               f"{len(bad)} blob(s) did not reassemble to their digest (first {next(iter(bad))}): "
                               f"parts {', '.join(map(str, again))} are needed again")
            done = self.journal.parts_done(bid)
        missing = missing_parts(idx.parts.count, done)
        if missing:
            detail = f"waiting for parts {', '.join(map(str, missing))} of {idx.parts.count}"
            if again:
                detail += f" (parts {', '.join(map(str, again))} again: a reassembled blob did not match)"
            self.journal.set_state(bid, BundleState.WAITING, "parts-missing", detail)
            return Result(Outcome.WAITING, bid, idx.name, idx.version, "parts-missing", detail)
        self.store.drop_assembly(bid)  # every blob of the set is in the store now
        res = self._run(bid, idx, None, path, st)
        if res.state == Outcome.COMPLETE and self.config.drops == "delete":
            for src in done.values():
                p = Path(src)
                if self.in_drop_dir(p):
                    p.unlink(missing_ok=True)
                    self.journal.forget_drop(src)
        return res

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Cancelled("the agent is stopping")

    def _refuse_part(self, path: Path, st: os.stat_result, ob: OpenBundle, bid: str, e: VerifyError) -> Result:
        idx = ob.index
        assert idx.parts is not None
        if e.reason in _MAYBE_UNSETTLED and _changed(path, st):
            return Result(Outcome.UNSETTLED, bid, idx.name, idx.version, e.reason, e.detail)
        info = {"digest": bid, "name": idx.name, "version": idx.version, "sequence": idx.sequence,
                "signatureVerified": True, "part": ob.part, "of": idx.parts.count}
        reason_file = quarantine(self.config.quarantine_dir, path, self.in_drop_dir(path), e.reason, e.detail, info)
        self.journal.forget_drop(str(path))
        missing = missing_parts(idx.parts.count, self.journal.parts_done(bid))
        detail = (f"part {ob.part} quarantined ({e.reason}: {e.detail}); waiting for parts "
                  f"{', '.join(map(str, missing))} of {idx.parts.count}")
        self.journal.set_state(bid, BundleState.WAITING, "parts-missing", detail)
        self.journal.event(bid, idx.name, idx.version, "quarantined", f"part {ob.part}: {e.reason}: {e.detail}")
        log.warning("part quarantined", extra={"kv": {"bundle": idx.name, "version": idx.version, "part": ob.part,
                                                      "reason": e.reason, "detail": e.detail, "file": str(path),
                                                      "reason_file": str(reason_file)}})
        return Result(Outcome.QUARANTINED, bid, idx.name, idx.version, e.reason, f"part {ob.part}: {e.detail}")

    def _admission_checks(self, ob: OpenBundle, bid: str) -> None:
        idx = ob.index
        if idx.expired():
            raise VerifyError("expired", f"bundle expired at {idx.expires} (freeze attack protection)")
        top = self.journal.max_sequence(idx.name, bid)
        if top is not None and idx.sequence < top:
            if not self.config.allow_downgrade and permits.open_permit(self.journal, bid, idx.name) is None:
                raise VerifyError("downgrade", f"sequence {idx.sequence} is lower than {top} already accepted for "
                                  f"{idx.name} (set allow_downgrade: true to accept a rollback)")
            log.warning("downgrade allowed", extra={"kv": {"bundle": idx.name, "sequence": idx.sequence,
                                                           "highest": top}})
        taken = self.published.conflicts(idx.name, publish.refs_of(idx), publish.paths_of(idx))
        if taken:  # checked again inside the publish transaction
            raise VerifyError("name-taken", f"{len(taken)} name(s) belong to another bundle: {'; '.join(taken[:3])}"
                              f"{' …' if len(taken) > 3 else ''} (a bundle may only replace what bundles of its own "
                              "name published)")
        limit = self.config.limits.max_bundle_bytes
        if limit is not None and idx.total_size > limit:
            raise VerifyError("too-large", f"content is {idx.total_size} bytes, limits.max_bundle_bytes is {limit}")

    def _before_publish_checks(self, bid: str, idx: BundleIndex) -> None:
        """Every run of a bundle that has not published yet — the first, and every resume (a delta waiting for a
        blob, parts arriving, a retry after a restart) — checks again what admission checked, against what the
        site serves by then: a bundle that expired while it waited, or whose sequence is now below one already
        published for its name, is refused before it can publish anything."""
        steps = {s.name: s.state for s in self.journal.steps(bid)}
        if steps.get("publish") in FINISHED:
            return  # already served; superseded apply steps are skipped by the deploy steps themselves
        if idx.expired():
            raise VerifyError("expired", f"bundle expired at {idx.expires} before it was published (freeze attack "
                              "protection)")
        top = self.journal.max_published_sequence(idx.name, bid)
        if top is not None and idx.sequence < top and not self.config.allow_downgrade and \
                permits.open_permit(self.journal, bid, idx.name) is None:  # `agent rollback`: one-time permit
            raise VerifyError("downgrade", f"sequence {idx.sequence} is lower than {top}, which the site already "
                              f"serves for {idx.name}: not published (set allow_downgrade: true to accept a rollback)")

    def _run(self, bid: str, idx: BundleIndex, ob: OpenBundle | None, path: Path | None,
             st: os.stat_result | None = None, explicit: bool = False) -> Result:
        self.lock.owner(bid)
        try:
            self._before_publish_checks(bid, idx)
        except VerifyError as e:
            return self._refuse(path, st, ob, bid, e, [])
        ctx = StepContext(self.config, self.journal, self.published, self.store, bid, idx, ob, self.stop,
                          self.progress, log, status=self.status, explicit=explicit, daemon=self.daemon)
        try:
            out = run_steps(ctx, step_defs(idx, self.config))
        except VerifyError as e:
            if path is not None and st is not None and e.reason in _MAYBE_UNSETTLED and _changed(path, st):
                # still being written: not the bundle's fault, try again once it settles
                self.journal.set_state(bid, BundleState.RECEIVED, "unsettled", "file changed while it was read")
                self.journal.replan(bid, [d.name for d in step_defs(idx, self.config)])
                return Result(Outcome.UNSETTLED, bid, idx.name, idx.version, e.reason, e.detail)
            return self._refuse(path, st, ob, bid, e, ctx.added)
        try:  # published: a downgrade permit is used up; a move of the name is recorded (agent history)
            permits.consume_if_published(self.journal, bid)
            changes.after_run(self.journal, bid)
        except sqlite3.Error as e:
            log.warning("cannot record the change", extra={"kv": {"digest": bid, "error": str(e)}})
        try:
            if out.state == Outcome.COMPLETE and path is not None and st is not None:
                self._done_with_drop(path, st, bid, Outcome.COMPLETE)
            elif path is not None and st is not None and out.state in (Outcome.FAILED, Outcome.WAITING):
                self.journal.record_drop(str(path), *_sig(st), bid, Outcome.FAILED)
        except sqlite3.Error as e:  # the bundle's state is recorded; an unrecorded drop is only read again
            log.warning("cannot record the drop file", extra={"kv": {"file": str(path), "error": str(e)}})
        if out.state == Outcome.COMPLETE:
            log.info("bundle complete", extra={"kv": {"bundle": idx.name, "version": idx.version, "digest": bid}})
        if out.restart:
            return Result(out.state, bid, idx.name, idx.version, RESTART, out.detail)
        return Result(out.state, bid, idx.name, idx.version, None if out.state == Outcome.COMPLETE else out.step,
                      out.detail)

    def _done_with_drop(self, path: Path, st: os.stat_result, bid: str, outcome: str) -> None:
        if self.config.drops == "delete" and self.in_drop_dir(path):
            path.unlink(missing_ok=True)
            self.journal.forget_drop(str(path))
        else:
            self.journal.record_drop(str(path), *_sig(st), bid, outcome)

    def _refuse_unverified(self, path: Path, st: os.stat_result, e: VerifyError) -> Result:
        """The signature (or the index) did not check out. Nothing of the file is read further or shown: its
        index is unverified, so its name, version and sequence are claims (a forged "… complete" line in
        ``agent status``), and parsing it would cost memory an attacker chooses. The record is named by the file."""
        bid = sha256_bytes(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        return self._quarantine(path, bid, None, None, None, False, e, None)

    def _refuse(self, path: Path | None, st: os.stat_result | None, ob: OpenBundle | None, bid: str,
                e: VerifyError, added: list[str]) -> Result:
        if added:
            keep = self.published.referenced_blobs()
            self.store.remove([d for d in added if d not in keep])
        self.store.drop_assembly(bid)
        idx: BundleIndex | None = ob.index if ob is not None else None
        if idx is None:
            row = self.journal.bundle(bid)
            idx = row.index() if row and row.index_json else None
        return self._quarantine(path, bid, idx.name if idx is not None else None,
                                idx.version if idx is not None else None, idx.sequence if idx is not None else None,
                                True, e, ob.index_bytes if ob else None)

    def _quarantine(self, path: Path | None, bid: str, name: str | None, version: str | None, seq: int | None,
                    verified: bool, e: VerifyError, index_bytes: bytes | None) -> Result:
        info = {"digest": bid, "name": name, "version": version, "sequence": seq, "signatureVerified": verified}
        reason_file = None
        if path is not None:
            reason_file = quarantine(self.config.quarantine_dir, path, self.in_drop_dir(path), e.reason, e.detail,
                                     info)
            self.journal.forget_drop(str(path))
        self.journal.record_refused(bid, name, version, seq, verified, str(path), e.reason, e.detail, index_bytes)
        log.warning("bundle quarantined", extra={"kv": {"bundle": name, "version": version, "reason": e.reason,
                                                        "detail": e.detail, "file": str(path),
                                                        "reason_file": str(reason_file)}})
        return Result(Outcome.QUARANTINED, bid, name, version, e.reason, e.detail)


def _changed(path: Path, st: os.stat_result) -> bool:
    """Has the file changed (or gone) since ``st`` was taken? (Then a read error may just mean "still copying".)"""
    try:
        return _sig(path.stat()) != _sig(st)
    except FileNotFoundError:
        return True


def _as_outcome(state: BundleState) -> Outcome:
    """A bundle's state as the outcome of a run that did nothing to it."""
    return Outcome(state) if state in Outcome._value2member_map_ else Outcome.WAITING
