"""Write a bundle: index, signature, then the OCI layout, blobs small to large.

Nothing is assembled in memory or on disk first: headers are generated and blob bytes are copied from
the cache into the output in the kernel. The output appears under its final name only when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..digest import ensure_free_space, fsync_dir
from . import INDEX_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME, SIG_NAME
from .index import BundleIndex
from .tario import TarWriter


def bundle_size(index: BundleIndex, index_bytes: bytes, sig: bytes | None) -> int:
    """Exact size of the tar we are about to write (for the free-space check)."""
    n = TarWriter.member_size(INDEX_NAME, len(index_bytes))
    if sig is not None:
        n += TarWriter.member_size(SIG_NAME, len(sig))
    for name, m in index.layout.items():
        n += TarWriter.member_size(name, m.size)
    for b in index.blobs:
        n += TarWriter.member_size(b.member, b.size)
    n += 2 * 512
    return n + (-n % 10240)


def write_bundle(out: Path, index: BundleIndex, index_bytes: bytes, sig: bytes | None,
                 layout: dict[str, bytes], blob_path: Callable[[str], Path], mtime: int,
                 progress: Callable[[int], None] | None = None,
                 verify: Callable[[str], bool] | None = None) -> int:
    """Write the bundle to ``out`` atomically (temp name, fsync, rename). Returns its size.

    ``verify(digest)`` says which blobs to re-hash while copying (content not verified in this process)."""
    out = Path(out)
    ensure_free_space(out.parent, bundle_size(index, index_bytes, sig), f"writing {out}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            w = TarWriter(f, mtime)
            w.progress = progress
            w.add_bytes(INDEX_NAME, index_bytes)
            if sig is not None:
                w.add_bytes(SIG_NAME, sig)
            w.add_bytes(LAYOUT_NAME, layout[LAYOUT_NAME])
            w.add_bytes(LAYOUT_INDEX_NAME, layout[LAYOUT_INDEX_NAME])
            for b in index.blobs:
                check = b.digest if verify is not None and verify(b.digest) else None
                w.add_file(b.member, blob_path(b.digest), b.size, verify=check)
            w.close()
            os.fsync(f.fileno())
            size = w.offset
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
