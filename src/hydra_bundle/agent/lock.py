"""``state_dir/pipeline.lock``: one pipeline at a time per state dir, and which bundle it runs now.

flock, so the lock is released however the holder dies; the owner record is written in place at the start of
the pre-sized file, so it needs no new disk space. :meth:`PipelineLock.probe` reads both from another process
(``agent status`` never shows a bundle ``running`` that no process runs). A holder that runs no bundle at all
(``agent gc``) says so by its task, so no ``running`` row left by a killed run is shown as its."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PipelineBusy

PIPELINE_LOCK = "pipeline.lock"
_OWNER_BYTES = 512                    # the lock file's owner record


def padded_json(data: bytes) -> Any:
    """A JSON value written in place and padded with spaces (or still the zeros of a pre-allocation)."""
    data = data.strip(b"\0 \n")
    return json.loads(data) if data else None


@dataclass(frozen=True)
class Holder:
    """What the lock file says: whether a run holds the lock, the bundle it runs now (None: unknown, or none),
    the task it declared when it is not a bundle's run (``gc``) and its pid."""

    busy: bool
    bundle: str | None = None
    task: str | None = None
    pid: int | None = None


class PipelineLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / PIPELINE_LOCK
        self._fd: int | None = None
        self._task: str | None = None

    @contextmanager
    def held(self, wait: bool = True, task: str | None = None) -> Iterator[None]:
        """Hold the lock for the body. ``wait=False``: :class:`PipelineBusy` at once when another run holds it
        (operator commands that must not queue behind a long run: ``agent remove``, ``agent rollback``).
        ``task``: the holder runs no bundle but this (recorded for the whole body)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                h = _holder(fd)
                what = (f"bundle {h.bundle[:19]} (pid {h.pid})" if h.bundle else
                        f"agent {h.task[:20]} (pid {h.pid})" if h.task else "a run")
                raise PipelineBusy(f"another run holds {self.path} ({what}); try again once it ends "
                                   f"(`hydra-bundle agent status` shows it)") from None
            self._fd, self._task = fd, task
            self.owner(None)  # whatever a killed holder left there is not true any more
            try:
                yield
            finally:
                self._task = None
                self.owner(None)
                self._fd = None
        finally:
            os.close(fd)

    def owner(self, bundle_id: str | None) -> None:
        """Record which bundle the holder runs now (None: none). Best effort; status copes without it."""
        if self._fd is None:
            return
        rec = b""
        if bundle_id or self._task:
            rec = json.dumps({"pid": os.getpid(), "bundle": bundle_id, "task": self._task}).encode()
        try:
            if os.fstat(self._fd).st_size < _OWNER_BYTES:
                os.posix_fallocate(self._fd, 0, _OWNER_BYTES)
            os.pwrite(self._fd, rec.ljust(_OWNER_BYTES), 0)
        except OSError:
            pass

    @staticmethod
    @contextmanager
    def probe(state_dir: Path) -> Iterator[Holder]:
        """Whether a pipeline runs on ``state_dir`` now, which bundle and which task (:class:`Holder`). While not
        busy it holds a shared lock for the body, so no pipeline can start and change rows meanwhile."""
        try:
            fd = os.open(Path(state_dir) / PIPELINE_LOCK, os.O_RDONLY)
        except OSError:
            yield Holder(False)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                yield _holder(fd)
            else:
                yield Holder(False)
        finally:
            os.close(fd)  # releases the shared lock


def _holder(fd: int) -> Holder:
    try:
        rec = padded_json(os.pread(fd, _OWNER_BYTES, 0)) or {}
    except (OSError, ValueError):
        rec = {}
    if not isinstance(rec, dict):
        return Holder(True)
    bundle, task, pid = rec.get("bundle"), rec.get("task"), rec.get("pid")
    return Holder(True, bundle if isinstance(bundle, str) else None, task if isinstance(task, str) else None,
                  pid if isinstance(pid, int) else None)
