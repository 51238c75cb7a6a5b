"""Progress reporting: rich bars on a terminal, nothing with --quiet, plain lines when not a TTY."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import TaskID


class Reporter(Protocol):
    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def log(self, msg: str) -> None: ...
    def close(self) -> None: ...


class QuietReporter:
    """--quiet: warnings still go to stderr."""

    def stage(self, name: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def log(self, msg: str) -> None:
        if msg.startswith("warning"):
            print(msg, file=sys.stderr)

    def close(self) -> None:
        pass


class PlainReporter(QuietReporter):
    """Not a terminal (CI logs, pipes): every message as a plain line on stderr, no bars and no rich import."""

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


class RichReporter:
    """One bar per stage; the byte total is dedup-aware (each blob counted once) and only ever goes up."""

    def __init__(self) -> None:
        # rich costs ~60 ms of imports: only commands that show progress pay it (verify/inspect answer fast)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<12}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=self.console, transient=False,
            disable=not self.console.is_terminal,
        )
        self.progress.start()
        self.task: TaskID | None = None
        self._lock = threading.Lock()

    def stage(self, name: str, total: int | None) -> None:
        with self._lock:
            if self.task is not None:
                t = self.progress.tasks[-1]
                self.progress.update(self.task, total=max(t.completed, t.total or 0))
            self.task = self.progress.add_task(name, total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def log(self, msg: str) -> None:
        self.progress.console.print(msg, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()
