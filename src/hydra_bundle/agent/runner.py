"""The step runner: every admitted bundle has an ordered list of named steps (``pipeline.step_defs``), each a
:class:`StepDef` with a unique, stable name and a ``run`` function; this module runs them and journals each.

Runner rules (:func:`run_steps`): steps run in order; ``done``/``skipped`` steps are never run again; a step
found ``running`` after a crash is run again, so every step must be idempotent (check, then act). A step
returns a short detail string (shown by ``agent status``) and may set ``ctx.result`` (JSON kept with the step).
It raises :class:`SkipStep` to record ``skipped``; :class:`StepPending` to record ``pending`` — **the runner
then goes on with the next step** (a pending step waits for an operator, e.g. a helm command; it must not hold
back independent steps; a later step that really needs it fails with its own message); it is cancelled
(:class:`~hydra_bundle.errors.Cancelled`) when the agent stops (the step stays pending and the run ends); a
:class:`~hydra_bundle.errors.VerifyError`
to refuse the bundle (quarantine); any other :class:`~hydra_bundle.errors.HydraError`/``OSError``/``sqlite3.Error``
marks the step ``failed`` and ends the run with the bundle ``failed``. At the end: any failure → ``failed``; else
any pending step → ``waiting`` (the bundle detail lists each pending step with its command); else ``complete``.
``failed`` and ``waiting`` bundles are retried every ``retry_interval``: the runner re-runs their failed and
pending steps (in order, same rules).

Failures of the runner's own journal writes (``step_started``, ``step_finished``, ``set_state``) are failures of
the step they are about, handled the same way (:func:`_failed`) — never an exception that leaves the bundle
``running``. A disk-full error anywhere (:func:`~hydra_bundle.disk.disk_full`: ENOSPC or SQLITE_FULL)
releases the store's journal reserve first and reads ``disk full while publishing: …``; before each step the
reserve is made again, and while it cannot be the step fails up front (``Store.keep_reserve``), so a full disk
keeps the bundle ``failed`` with that reason until space exists, then the next retry goes on. If even recording
the failure fails, it goes to ``journal.fallback`` and the log (see the journal module).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..disk import disk_full
from ..errors import Cancelled, HydraError, VerifyError
from ..states import FINISHED, BundleState, Outcome, StepState
from .journal import Journal

if TYPE_CHECKING:
    from ..bundle.index import BundleIndex
    from ..bundle.reader import OpenBundle
    from .config import AgentConfig
    from .published import Published
    from .store import Store


class SkipStep(Exception):
    """Raised by a step that has nothing to do for this bundle; ``str(e)`` is recorded as detail."""


class StepPending(Exception):
    """Raised by a step that cannot finish yet (e.g. an operator must run a command shown in the detail): the
    step stays ``pending`` with that detail, the bundle is ``waiting`` and the step is retried later."""


class Restart(Exception):
    """Raised by a step that is done but needs the agent restarted before anything else runs (it installed a
    newer agent): the step is recorded ``done`` with this detail, the run ends, the daemon exits for systemd to
    start the new version, which resumes the bundle."""


class Blocked(StepPending):
    """Like StepPending, but the steps after it must not run (e.g. ingest lacks a blob a delta bundle left
    out): the step stays ``pending``, the bundle ``waiting`` with this detail, and the run ends here."""


@dataclass
class StepContext:
    """What a step gets. ``opened`` is the bundle file, verified up to its signature (None when the agent
    resumes a bundle whose file is gone: only steps before ``publish`` need it)."""

    config: AgentConfig
    journal: Journal
    published: Published
    store: Store
    bundle_id: str
    index: BundleIndex
    opened: OpenBundle | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[int], None] = lambda _n: None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("hydra_bundle.agent"))
    explicit: bool = False     # an operator's `agent apply`: even a superseded bundle is applied
    daemon: bool = False       # run by `agent run` (which may restart itself), not a one-shot command
    added: list[str] = field(default_factory=list)          # blobs this run added to the store (removed on refusal)
    scratch: dict[str, object] = field(default_factory=dict)  # a step's own state kept for later steps of the run
    status: Callable[[str], None] = lambda _s: None         # what the agent is doing (systemd STATUS=)
    result: dict[str, Any] | None = None                    # set by a step: structured result kept in the journal
    cleanups: list[Callable[[], None]] = field(default_factory=list)   # run when the run ends
    step: str | None = None    # the step being run (or whose journal record is being written)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Cancelled("the agent is stopping")

    def close(self) -> None:
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except Exception:
                self.log.exception("cleanup failed")


@dataclass(frozen=True)
class StepDef:
    name: str                                   # unique within a bundle, stable across restarts
    run: Callable[[StepContext], str | None]


@dataclass
class RunResult:
    state: Outcome             # COMPLETE | FAILED | WAITING | INTERRUPTED
    step: str | None = None
    detail: str | None = None
    restart: bool = False      # a step asked for the agent to restart (Restart)


def run_steps(ctx: StepContext, defs: list[StepDef]) -> RunResult:
    """Run the unfinished steps of a bundle in order (module docstring). VerifyError propagates (the caller
    quarantines)."""
    try:
        return _run_steps(ctx, defs)
    except VerifyError:
        raise
    except (HydraError, OSError, sqlite3.Error) as e:  # a journal write around a step failed (e.g. disk full)
        return _failed(ctx, ctx.step, e)
    finally:
        ctx.close()


_DOING = {"ingest": "ingesting", "publish": "publishing", "push": "pushing"}


def doing(step: str | None) -> str:
    if step is None:
        return "recording the bundle's state"
    if step.startswith("apply:"):
        return f"applying {step.removeprefix('apply:')}"
    return _DOING.get(step, f"running step {step}")


def failure_message(step: str | None, e: BaseException) -> str:
    """The step detail for a failure: disk-full and journal errors say what was being done."""
    msg = str(e) or type(e).__name__
    journal = "journal: " if isinstance(e, sqlite3.Error) else ""
    if disk_full(e):
        return f"disk full while {doing(step)}: {journal}{msg}"
    if journal:
        return f"journal error while {doing(step)}: {msg}"
    return msg


def _failed(ctx: StepContext, step: str | None, e: BaseException) -> RunResult:
    """Record that ``step`` failed (``None``: a journal write after the last step) and end the run ``failed``.
    When the journal cannot take even this, keep it in ``journal.fallback`` and memory and say so in the log."""
    if disk_full(e):
        ctx.store.release_reserve()
    msg = failure_message(step, e)
    detail = f"{step}: {msg}" if step else msg
    ctx.log.error("step failed", extra=_kv(ctx, step=step, error=msg))
    try:
        if step is not None:
            ctx.journal.step_finished(ctx.bundle_id, step, StepState.FAILED, msg, ctx.result)
        ctx.journal.set_state(ctx.bundle_id, BundleState.FAILED, "step-failed", detail)
    except (sqlite3.Error, OSError) as je:
        kept = ctx.journal.note_failure(ctx.bundle_id, step, "step-failed", detail, msg)
        ctx.log.error("cannot record the failure in the journal", extra=_kv(
            ctx, step=step, error=msg, journal_error=str(je),
            kept_in=str(ctx.journal.fallback.path) if kept else "memory only (see this log)"))
    return RunResult(Outcome.FAILED, step, msg)


def _kv(ctx: StepContext, **kv: Any) -> dict[str, Any]:
    return {"kv": {"bundle": ctx.index.name, "version": ctx.index.version, **kv}}


def _run_steps(ctx: StepContext, defs: list[StepDef]) -> RunResult:
    j = ctx.journal
    ctx.step = None
    j.replan(ctx.bundle_id, [d.name for d in defs])
    states = {s.name: s.state for s in j.steps(ctx.bundle_id)}
    pending: list[tuple[str, str]] = []
    for d in defs:
        if states.get(d.name) in FINISHED:
            continue
        if ctx.stop.is_set():
            return RunResult(Outcome.INTERRUPTED, d.name)
        ctx.step, ctx.result = d.name, None
        ctx.store.keep_reserve(doing(d.name))
        j.step_started(ctx.bundle_id, d.name)
        ctx.log.info("step started", extra=_kv(ctx, step=d.name))
        ctx.status(f"{ctx.index.name} {ctx.index.version}: {d.name}")
        try:
            detail = d.run(ctx)
        except SkipStep as e:
            j.step_finished(ctx.bundle_id, d.name, StepState.SKIPPED, str(e) or None, ctx.result)
            ctx.log.info("step skipped", extra=_kv(ctx, step=d.name, detail=str(e)))
            continue
        except Blocked as e:
            j.step_finished(ctx.bundle_id, d.name, StepState.PENDING, str(e) or None, ctx.result)
            ctx.log.warning("step blocked", extra=_kv(ctx, step=d.name, detail=str(e)))
            j.set_state(ctx.bundle_id, BundleState.WAITING, "blocked", f"{d.name}: {e}")
            return RunResult(Outcome.WAITING, d.name, f"{d.name}: {e}")
        except StepPending as e:
            j.step_finished(ctx.bundle_id, d.name, StepState.PENDING, str(e) or None, ctx.result)
            ctx.log.warning("step pending", extra=_kv(ctx, step=d.name, detail=str(e)))
            pending.append((d.name, str(e)))
            continue
        except Cancelled:
            j.step_finished(ctx.bundle_id, d.name, StepState.PENDING, "interrupted (agent stopping)")
            return RunResult(Outcome.INTERRUPTED, d.name)
        except Restart as e:
            j.step_finished(ctx.bundle_id, d.name, StepState.DONE, str(e), ctx.result)
            ctx.log.info("step done; the agent restarts", extra=_kv(ctx, step=d.name, detail=str(e)))
            return RunResult(Outcome.INTERRUPTED, d.name, str(e), restart=True)
        except VerifyError as e:
            j.step_finished(ctx.bundle_id, d.name, StepState.FAILED, str(e))
            raise
        except (HydraError, OSError, sqlite3.Error) as e:
            return _failed(ctx, d.name, e)
        j.step_finished(ctx.bundle_id, d.name, StepState.DONE, detail, ctx.result)
        ctx.log.info("step done", extra=_kv(ctx, step=d.name, detail=detail))
    ctx.step = None
    if pending:
        detail = f"{len(pending)} step(s) pending: " + "; ".join(f"{n}: {m}" for n, m in pending)
        j.set_state(ctx.bundle_id, BundleState.WAITING, "step-pending", detail)
        return RunResult(Outcome.WAITING, pending[0][0], detail)
    j.set_state(ctx.bundle_id, BundleState.COMPLETE)
    return RunResult(Outcome.COMPLETE)
