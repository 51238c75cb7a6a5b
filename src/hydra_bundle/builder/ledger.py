"""Earlier bundles as the build cache: where every blob a build wrote lies in its output files.

The default build downloads each big blob straight into its place in the bundle (one disk write per byte) instead
of into the blob cache and then again into the bundle. A rebuild still downloads nothing: ``bundles.json`` in the
cache directory records, for each bundle (or part) file a build wrote, its identity (device, inode, size, mtime)
and the offset of every blob's data in it, so the next build copies those bytes from the earlier bundle in the
kernel (re-hashed on the way, like any content this process did not verify itself). A file that was moved,
deleted or changed since is forgotten, and its blobs are downloaded again.

The ledger is a hint, never trusted content: whatever it points at is hashed against the digest the spec or the
registry pins before it reaches the new bundle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from ..bundle.tarwriter import Piece
from ..bundle.writer import Placed

LEDGER_NAME = "bundles.json"
MAX_FILES = 256  # bundle/part files remembered (oldest forgotten first)


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


class Ledger:
    def __init__(self, cache_root: Path):
        self.path = Path(cache_root) / LEDGER_NAME
        self._where: dict[str, dict[int, Piece]] | None = None  # digest → blob offset → piece

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == 1 else None
        return files if isinstance(files, dict) else {}

    def _current(self) -> dict[str, Any]:
        """The recorded files that are still exactly as written."""
        return {p: e for p, e in self._load().items()
                if isinstance(e, dict) and e.get("id") == _identity(Path(p)) and isinstance(e.get("blobs"), dict)}

    def find(self, digest: str, size: int) -> list[Piece] | None:
        """Where a blob's ``size`` bytes lie, in order, in earlier bundles that are unchanged (None: nowhere)."""
        if self._where is None:
            self._where = {}
            for p, e in self._current().items():
                for d, extents in e["blobs"].items():
                    starts = self._where.setdefault(d, {})
                    # [[blob offset, file offset, length], ...]: several for a blob cut across parts
                    with contextlib.suppress(TypeError, ValueError):  # a damaged record is only a missed copy
                        for bo, fo, n in extents:
                            starts.setdefault(int(bo), (p, int(fo), int(n)))
        starts = self._where.get(digest, {})
        pieces: list[Piece] = []
        pos = 0
        while pos < size:
            piece = starts.get(pos)
            if piece is None or piece[2] <= 0:
                return None  # e.g. a blob whose segments lie in parts of which some were moved away
            pieces.append(piece)
            pos += piece[2]
        return pieces if pos == size else None

    def record(self, placed: Placed) -> None:
        """Remember where this build put every blob (after its files got their final names)."""
        by_file: dict[str, dict[str, list[list[int]]]] = {}
        for digest, extents in placed.items():
            pos = 0
            for path, off, n in extents:
                by_file.setdefault(str(Path(path).resolve()), {}).setdefault(digest, []).append([pos, off, n])
                pos += n
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(LEDGER_NAME + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # builds sharing a cache merge their records
            files = self._current()
            for p, blobs in by_file.items():
                ident = _identity(Path(p))
                if ident is not None:
                    files.pop(p, None)
                    files[p] = {"id": ident, "blobs": blobs}
            keep = dict(list(files.items())[-MAX_FILES:])
            tmp = self.path.with_name(f".{LEDGER_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "files": keep}, separators=(",", ":")))
            os.replace(tmp, self.path)
        self._where = None

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
        self._where = None
