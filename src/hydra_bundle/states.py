"""The states users see, one definition each: of a bundle on a site, of one of its steps, and of one run of the
pipeline over a bundle file. ``StrEnum``: the values are what the journal stores and ``--json`` prints."""

from __future__ import annotations

from enum import StrEnum


class BundleState(StrEnum):
    """Where a bundle is on this site (``agent status``)."""

    RECEIVED = "received"        # signature verified, steps planned, nothing run yet
    RUNNING = "running"          # a step is running (or was, when the agent died: it resumes)
    FAILED = "failed"            # a step failed; retried after retry_interval
    WAITING = "waiting"          # a step cannot finish yet (an operator command, parts missing); retried
    COMPLETE = "complete"        # every planned step is done or skipped
    QUARANTINED = "quarantined"  # refused: moved to state_dir/quarantine with a reason file
    INTERRUPTED = "interrupted"  # shown only: the row says running, but no pipeline runs it (it resumes)
    REMOVING = "removing"        # `agent remove` started and has not finished (a step failed or waits): run it again
    REMOVED = "removed"          # `agent remove` finished: nothing of the bundle is applied or served (kept: history)
    ROLLED_BACK = "rolled-back"  # `agent rollback` went to another version; retained (`--to` it returns)


LIFECYCLE_ENDED = (BundleState.REMOVING, BundleState.REMOVED, BundleState.ROLLED_BACK)  # not what a site runs


class StepState(StrEnum):
    """One step of a bundle's plan (journal), and the outcome of an apply step (``done``/``pending``/``skipped``)."""

    PENDING = "pending"          # not run yet, or waiting for something outside the agent (an operator)
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"          # nothing to do here (a ``when:`` condition, superseded, no longer planned)
    INTERRUPTED = "interrupted"  # shown only: was running when the agent stopped


FINISHED = (StepState.DONE, StepState.SKIPPED)


class Outcome(StrEnum):
    """How one run of the pipeline over a bundle file (or a resume) ended."""

    COMPLETE = "complete"
    FAILED = "failed"
    WAITING = "waiting"
    QUARANTINED = "quarantined"
    INTERRUPTED = "interrupted"  # the agent is stopping; the run resumes on the next start
    UNSETTLED = "unsettled"      # the file changed (or vanished) while it was read: tried again once it settles
    DUPLICATE = "duplicate"      # already handled: nothing to do
    UNKNOWN = "unknown"          # no such bundle


class CheckStatus(StrEnum):
    """One preflight check (``agent preflight``, the ``preflight`` step's result)."""

    PASS = "pass"
    WARN = "warn"                # works, but an operator should look (little headroom, unknown facts)
    FAIL = "fail"                # the apply would fail or hang: blocks the apply steps
    SKIP = "skip"                # not applicable here, or cannot be checked (the reason says which)
