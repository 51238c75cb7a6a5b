"""Deadlines and retries: one backoff policy for every adapter that talks to something that may be down.

:func:`call` retries an operation whose failures a predicate calls transient (the API server restarting, MySQL
gone away) with exponential backoff — 0.5 s, 1 s, 2 s … at most 10 s — until a :class:`Deadline`, sleeping with
a function the caller can cancel, then gives up with the caller's typed error. The loop itself is tenacity's.
Downloads resume from a byte offset instead (``httpio``), but back off on the same schedule (:func:`delay`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import tenacity

T = TypeVar("T")

FIRST_DELAY = 0.5
MAX_DELAY = 10.0
MIN_LEFT = 0.05  # a deadline with less than this left is treated as expired (no pointless last attempt)


class Deadline:
    """A point in time a step (and every retry within it) must finish by."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def within(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, but no later than this one."""
        return Deadline(min(seconds, self.left))


def delay(attempt: int) -> float:
    """The backoff before retry number ``attempt`` (1-based): 0.5 s doubling up to 10 s."""
    return float(min(FIRST_DELAY * 2.0 ** max(attempt - 1, 0), MAX_DELAY))


def call(fn: Callable[[], T], *, transient: Callable[[BaseException], bool], deadline: Deadline,
         sleep: Callable[[float], None], on_retry: Callable[[BaseException, float], None],
         give_up: Callable[[BaseException, int], Exception]) -> T:
    """``fn()``, retried while it raises what ``transient`` accepts and ``deadline`` has time left. Before each
    retry ``on_retry(error, seconds)`` (log it) and ``sleep(seconds)`` (raise to cancel). At the deadline the
    last error becomes ``give_up(error, attempts)``; other errors propagate at once."""

    def wait(state: tenacity.RetryCallState) -> float:
        return min(delay(state.attempt_number), deadline.left)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if error is not None and state.next_action is not None:
            on_retry(error, state.next_action.sleep)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(transient),
                                 stop=lambda _state: deadline.left < MIN_LEFT, wait=wait, sleep=sleep,
                                 before_sleep=before_sleep, reraise=False)
    try:
        return retrying(fn)
    except tenacity.RetryError as e:
        error = e.last_attempt.exception()
        assert error is not None
        raise give_up(error, e.last_attempt.attempt_number) from None


def poll_delays(poll: float, first: float = 0.1) -> Iterator[float]:
    """Waits between readiness checks: 0.1, 0.2, 0.4 … up to ``poll`` seconds. Most objects are ready within
    moments of being applied, so a fixed 1 s first wait was most of an apply's time; slow ones still settle
    into one check per ``poll``."""
    d = min(first, poll)
    while True:
        yield d
        d = min(d * 2, poll)
