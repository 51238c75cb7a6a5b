"""``journal.fallback``: where a failure goes when the journal itself cannot be written (the disk is full).

Pre-allocated when the database is opened (``FALLBACK_BYTES``) and only ever overwritten in place, so writing
it needs no new disk space. It keeps the latest failure of up to ``_KEEP`` bundles; ``status`` shows them for
``running`` rows no pipeline runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..disk import preallocate
from .lock import padded_json

FALLBACK_NAME = "journal.fallback"
FALLBACK_BYTES = 64 << 10
_KEEP = 32


class Fallback:
    def __init__(self, path: Path):
        self.path = path

    def prepare(self) -> None:
        preallocate(self.path, FALLBACK_BYTES)

    def write(self, bundle_id: str, entry: dict[str, Any]) -> bool:
        """Keep ``entry`` as the failure of ``bundle_id``; never raises. Returns whether the file took it."""
        notes = {k: v for k, v in self.read().items() if k != bundle_id}
        notes[bundle_id] = entry
        while True:
            data = json.dumps(dict(list(notes.items())[-_KEEP:]), ensure_ascii=False).encode()
            if len(data) <= FALLBACK_BYTES or len(notes) <= 1:
                break
            notes.pop(next(iter(notes)))
        if len(data) > FALLBACK_BYTES:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data.ljust(FALLBACK_BYTES), 0)  # in place: the blocks are allocated already
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                notes = padded_json(f.read())
        except (OSError, ValueError):
            return {}
        return notes if isinstance(notes, dict) else {}


def failure_entry(step: str | None, reason: str, detail: str, step_detail: str | None) -> dict[str, Any]:
    return {"at": time.time(), "step": step, "reason": reason, "detail": detail, "stepDetail": step_detail}
