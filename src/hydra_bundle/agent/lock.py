"""``state_dir/pipeline.lock``: one pipeline at a time per state dir, and which bundle it runs now.

flock, so the lock is released however the holder dies; the owner record is written in place at the start of
the pre-sized file, so it needs no new disk space. :meth:`PipelineLock.probe` reads both from another process
(``agent status`` never shows a bundle ``running`` that no process runs)."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import PipelineBusy

PIPELINE_LOCK = "pipeline.lock"
_OWNER_BYTES = 512                    # the lock file's owner record


def padded_json(data: bytes) -> Any:
    """A JSON value written in place and padded with spaces (or still the zeros of a pre-allocation)."""
    data = data.strip(b"\0 \n")
    return json.loads(data) if data else None


class PipelineLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / PIPELINE_LOCK
        self._fd: int | None = None

    @contextmanager
    def held(self, wait: bool = True) -> Iterator[None]:
        """Hold the lock for the body. ``wait=False``: :class:`PipelineBusy` at once when another run holds it
        (operator commands that must not queue behind a long run: ``agent remove``, ``agent rollback``)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                try:
                    who = padded_json(os.pread(fd, _OWNER_BYTES, 0)) or {}
                except (OSError, ValueError):
                    who = {}
                what = f"bundle {who['bundle'][:19]} (pid {who.get('pid')})" if isinstance(who, dict) and \
                    who.get("bundle") else "a run"
                raise PipelineBusy(f"another run holds {self.path} ({what}); try again once it ends "
                                   f"(`hydra-bundle agent status` shows it)") from None
            self._fd = fd
            self.owner(None)  # whatever a killed holder left there is not true any more
            try:
                yield
            finally:
                self.owner(None)
                self._fd = None
        finally:
            os.close(fd)

    def owner(self, bundle_id: str | None) -> None:
        """Record which bundle the holder runs now (None: none). Best effort; status copes without it."""
        if self._fd is None:
            return
        rec = json.dumps({"pid": os.getpid(), "bundle": bundle_id}).encode() if bundle_id else b""
        try:
            if os.fstat(self._fd).st_size < _OWNER_BYTES:
                os.posix_fallocate(self._fd, 0, _OWNER_BYTES)
            os.pwrite(self._fd, rec.ljust(_OWNER_BYTES), 0)
        except OSError:
            pass

    @staticmethod
    @contextmanager
    def probe(state_dir: Path) -> Iterator[tuple[bool, str | None]]:
        """Yields (busy, bundle): whether a pipeline runs on ``state_dir`` now and which bundle (None: unknown).
        While not busy it holds a shared lock for the body, so no pipeline can start and change rows meanwhile."""
        try:
            fd = os.open(Path(state_dir) / PIPELINE_LOCK, os.O_RDONLY)
        except OSError:
            yield False, None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                busy = False
            except OSError:
                busy = True
            owner = None
            if busy:
                try:
                    owner = (padded_json(os.pread(fd, _OWNER_BYTES, 0)) or {}).get("bundle")
                except (OSError, ValueError, AttributeError):
                    owner = None
            yield busy, owner
        finally:
            os.close(fd)  # releases the shared lock
