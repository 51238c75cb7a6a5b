"""Refused bundles go to ``state_dir/quarantine/`` with a machine-readable ``<file>.reason.json`` beside them.

Files outside the drop dir (``agent ingest FILE`` on an operator's file) are not moved; the reason file
names where the file is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..disk import fsync_dir


def quarantine(qdir: Path, path: Path, move: bool, reason: str, detail: str, bundle: dict[str, Any]) -> Path:
    """Move ``path`` into ``qdir`` (when ``move``) and write the reason file. Returns the reason file."""
    qdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{stamp}-{path.name}"
    n = 1
    while (qdir / base).exists() or (qdir / f"{base}.reason.json").exists():
        n += 1
        base = f"{stamp}-{n}-{path.name}"
    dest = qdir / base
    moved = False
    if move and path.exists():
        try:
            os.rename(path, dest)
        except OSError:
            shutil.move(str(path), dest)  # another filesystem: copy, then remove
        moved = True
    info = {
        "file": str(path), "quarantined": str(dest) if moved else None, "reason": reason, "detail": detail,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bundle": bundle,
    }
    reason_file = qdir / f"{base}.reason.json"
    tmp = qdir / f".{base}.reason.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, reason_file)
    fsync_dir(qdir)
    return reason_file
