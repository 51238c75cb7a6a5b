"""Watch the drop dir: inotify events through ``watchdog`` wake the loop at once; a periodic rescan (every
``poll_interval``) catches what inotify misses (USB and NFS mounts, events lost under load)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from watchdog.events import FileMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .settle import Settler, is_candidate

log = logging.getLogger("hydra_bundle.agent")


def scan(drop_dir: Path) -> list[Path]:
    """Candidate files directly in the drop dir (no recursion, no dot-files, no ``*.part``)."""
    try:
        with os.scandir(drop_dir) as it:
            return sorted(Path(e.path) for e in it if is_candidate(e.name) and e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher):
        self.w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            src, dest = Path(os.fsdecode(event.src_path)), Path(os.fsdecode(event.dest_path))
            if dest.parent == self.w.drop_dir and is_candidate(dest.name) and not is_candidate(src.name):
                self.w.settler.mark_renamed(dest)
        self.w.wake.set()


class Watcher:
    def __init__(self, drop_dir: Path, settler: Settler, wake: threading.Event):
        self.drop_dir = Path(drop_dir)
        self.settler = settler
        self.wake = wake
        self.observer: BaseObserver | None = None

    def start(self) -> None:
        try:
            obs = Observer()
            obs.schedule(_Handler(self), str(self.drop_dir), recursive=False)
            obs.daemon = True
            obs.start()
            self.observer = obs
        except OSError as e:  # e.g. inotify watch limit reached: rescans still work
            log.warning("inotify unavailable, relying on rescans", extra={"kv": {"error": str(e)}})

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
