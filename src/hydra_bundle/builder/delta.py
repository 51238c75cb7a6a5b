"""Delta bundles: leave out of the tar every blob a site already holds (from ``agent inventory -o site.json``).

The signed index still lists every blob; the ones left out carry ``"omitted": true`` so readers do not expect
them as members and the agent checks its store has them before publishing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bundle.index import BundleIndex
from ..errors import UsageError

INVENTORY_FORMAT = "hydra-bundle-inventory/v1"


def load_inventory(path: Path) -> dict[str, int]:
    """digest → size of every blob the site holds."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"--site-inventory {path}: no such file") from None
    except ValueError as e:
        raise UsageError(f"--site-inventory {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != INVENTORY_FORMAT:
        raise UsageError(f"--site-inventory {path}: not a site inventory ({INVENTORY_FORMAT}, written by "
                         "`hydra-bundle agent inventory -o FILE`)")
    try:
        return {str(b["digest"]): int(b["size"]) for b in data.get("blobs", [])}
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"--site-inventory {path}: malformed blobs list") from None


def omit_present(index: BundleIndex, site: dict[str, int]) -> tuple[int, int]:
    """Mark blobs the site has (same digest and size) as omitted. Returns (count, bytes) left out."""
    n = size = 0
    for b in index.blobs:
        if site.get(b.digest) == b.size:
            b.omitted = True
            n += 1
            size += b.size
    return n, size
