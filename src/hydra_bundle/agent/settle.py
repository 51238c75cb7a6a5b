"""When is a file in the drop dir complete? Never touch one that is still being copied.

* ``*.part``, ``*.tmp``, ``*.partial`` and dot-files are ignored; a rename from such a name to the final name
  (the convention of rsync, curl -o x.part && mv, browsers) makes the file ready at once.
* Otherwise the file's size, mtime and inode must be unchanged for ``settle_seconds`` **and** the tar must be
  structurally complete (a multiple of 512 bytes ending in the two zero blocks of the end-of-archive marker).
* A file that is stable but still not a complete tar after ``incomplete_timeout`` is handed over as
  ``incomplete``: the pipeline then refuses it (truncated) through the normal verify path.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".swp")
BLOCK = 512


class Verdict(StrEnum):
    READY = "ready"              # settled and structurally complete: verify it
    INCOMPLETE = "incomplete"    # stable for incomplete_timeout but still not a complete tar: refuse it


def is_candidate(name: str) -> bool:
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


def tar_looks_complete(path: Path, size: int) -> bool:
    """Cheap structural check: whole blocks and the end-of-archive marker (two zero blocks) at the end."""
    if size < 3 * BLOCK or size % BLOCK:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(size - 2 * BLOCK)
            tail = f.read(2 * BLOCK)
    except OSError:
        return False
    return len(tail) == 2 * BLOCK and tail.count(0) == len(tail)


@dataclass
class _Seen:
    sig: tuple[int, int, int]
    since: float
    handed: tuple[int, int, int] | None = None


class Settler:
    def __init__(self, settle_seconds: float, incomplete_timeout: float,
                 clock: Callable[[], float] = time.monotonic):
        self.settle = settle_seconds
        self.incomplete_timeout = incomplete_timeout
        self.clock = clock
        self.seen: dict[Path, _Seen] = {}
        self.renamed: set[Path] = set()

    def mark_renamed(self, path: Path) -> None:
        """``x.part`` was renamed to ``x``: the writer says it is done."""
        self.renamed.add(path)

    def retry(self, path: Path, delay: float = 0.0) -> None:
        """Hand ``path`` over again once it is (still) settled, not before ``delay`` seconds."""
        s = self.seen.get(path)
        if s is not None:
            s.handed = None
            s.since = self.clock() + delay

    def observe(self, paths: Iterable[Path]) -> list[tuple[Path, Verdict]]:
        """Update with the files currently in the drop dir; returns (path, verdict) once per settled version of
        a file."""
        now = self.clock()
        out: list[tuple[Path, Verdict]] = []
        present = set()
        for p in paths:
            try:
                st = os.stat(p, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            present.add(p)
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            s = self.seen.get(p)
            if s is None or s.sig != sig:
                s = self.seen[p] = _Seen(sig, now)
            if s.handed == sig:
                continue
            stable = now - s.since
            renamed = p in self.renamed
            if (renamed or stable >= self.settle) and tar_looks_complete(p, st.st_size):
                s.handed = sig
                self.renamed.discard(p)
                out.append((p, Verdict.READY))
            elif stable >= self.incomplete_timeout:
                s.handed = sig
                out.append((p, Verdict.INCOMPLETE))
        for p in list(self.seen):
            if p not in present:
                del self.seen[p]
                self.renamed.discard(p)
        return out

    def next_check(self) -> float | None:
        """Seconds until a watched file could become ready (None when nothing is pending)."""
        now = self.clock()
        waits = []
        for s in self.seen.values():
            if s.handed == s.sig:
                continue
            left = self.settle - (now - s.since)
            waits.append(left if left > 0 else min(1.0, max(0.2, self.settle / 4)))
        return max(0.05, min(waits)) if waits else None
