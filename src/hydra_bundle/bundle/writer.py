"""Write a bundle: index, signature, then the OCI layout, blobs small to large.

Nothing is assembled in memory or on disk first: headers are generated and blob bytes are copied from
the cache into the output in the kernel. The output appears under its final name only when complete.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Collection
from pathlib import Path

from ..digest import sha256_bytes
from ..disk import ensure_free_space, fsync_dir
from ..errors import HydraError
from . import INDEX_NAME, INSTALLER_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME, PART_NAME, SIG_NAME
from .index import Blob, BundleIndex
from .parts import WrittenPart, part_json, part_names, part_size, write_sums
from .tarwriter import TarWriter


def bundle_size(index: BundleIndex, index_bytes: bytes, sig: bytes | None) -> int:
    """Exact size of the tar we are about to write (for the free-space check)."""
    n = TarWriter.member_size(INDEX_NAME, len(index_bytes))
    if sig is not None:
        n += TarWriter.member_size(SIG_NAME, len(sig))
    if index.installer is not None:
        n += TarWriter.member_size(INSTALLER_NAME, index.installer.size)
    for name, m in index.layout.items():
        n += TarWriter.member_size(name, m.size)
    for b in index.blobs:
        if not b.omitted:
            n += TarWriter.member_size(b.member, b.size)
    n += 2 * 512
    return n + (-n % 10240)


# fill(fd, [(blob, data offset), ...]) writes (and verifies) the bytes of every reserved member
Fill = Callable[[int, list[tuple[Blob, int]]], None]


def write_bundle(out: Path, index: BundleIndex, index_bytes: bytes, sig: bytes | None,
                 layout: dict[str, bytes], blob_path: Callable[[str], Path], mtime: int,
                 progress: Callable[[int], None] | None = None,
                 verify: Callable[[str], bool] | None = None,
                 direct: Collection[str] = (), fill: Fill | None = None) -> int:
    """Write the bundle to ``out`` atomically (temp name, fsync, rename). Returns its size.

    ``layout`` holds the bytes of ``oci-layout``, ``index.json`` and (with a kit) ``install.sh``.
    ``verify(digest)`` says which blobs to re-hash while copying (content not verified in this process).
    Blobs in ``direct`` are not copied from ``blob_path``: their members are laid out with holes (every size is
    in the index, so every offset is known) and ``fill`` writes them in place, e.g. straight from a registry;
    each byte then reaches the disk once. The space is allocated up front, so a full disk fails early."""
    out = Path(out)
    total = bundle_size(index, index_bytes, sig)
    ensure_free_space(out.parent, total, f"writing {out}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if direct:
                try:
                    os.posix_fallocate(f.fileno(), 0, total)
                except OSError as e:  # e.g. EOPNOTSUPP on some filesystems: the holes are filled all the same
                    if e.errno == errno.ENOSPC:
                        raise
            holes: list[tuple[Blob, int]] = []
            w = TarWriter(f, mtime)
            w.progress = progress
            w.add_bytes(INDEX_NAME, index_bytes)
            if sig is not None:
                w.add_bytes(SIG_NAME, sig)
            if index.installer is not None:
                w.add_bytes(INSTALLER_NAME, layout[INSTALLER_NAME])
            w.add_bytes(LAYOUT_NAME, layout[LAYOUT_NAME])
            w.add_bytes(LAYOUT_INDEX_NAME, layout[LAYOUT_INDEX_NAME])
            for b in index.blobs:
                if b.omitted:
                    continue
                if b.digest in direct:
                    holes.append((b, w.reserve(b.member, b.size)))
                    continue
                check = b.digest if verify is not None and verify(b.digest) else None
                w.add_file(b.member, blob_path(b.digest), b.size, verify=check)
            w.close()
            if holes:
                assert fill is not None
                fill(f.fileno(), holes)
            os.fsync(f.fileno())
            size = w.offset
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parts(out: Path, index: BundleIndex, index_bytes: bytes, sig: bytes | None, layout: dict[str, bytes],
                blob_path: Callable[[str], Path], mtime: int, progress: Callable[[int], None] | None = None,
                verify: Callable[[str], bool] | None = None) -> list[WrittenPart]:
    """Write a split bundle straight into its parts (never whole first), each atomically, hashing every part
    while it is written; then ``SHA256SUMS`` beside them. Returns the parts in order."""
    assert index.parts is not None
    out = Path(out)
    names = part_names(out, index.parts.count)
    total = sum(part_size(index, len(index_bytes), len(sig) if sig else None, k) for k in range(1, len(names) + 1))
    ensure_free_space(out.parent, total, f"writing {len(names)} parts of {out.name}")
    idx_digest = sha256_bytes(index_bytes)
    blobs = {b.digest: b for b in index.blobs}
    written: list[WrittenPart] = []
    for k, (path, plan) in enumerate(zip(names, index.parts.parts, strict=True), 1):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                w = TarWriter(f, mtime)
                w.progress = progress
                w.hasher = hashlib.sha256()
                w.add_bytes(INDEX_NAME, index_bytes)
                if sig is not None:
                    w.add_bytes(SIG_NAME, sig)
                if index.installer is not None:
                    w.add_bytes(INSTALLER_NAME, layout[INSTALLER_NAME])
                w.add_bytes(PART_NAME, part_json(idx_digest, k, index.parts.count))
                w.add_bytes(LAYOUT_NAME, layout[LAYOUT_NAME])
                w.add_bytes(LAYOUT_INDEX_NAME, layout[LAYOUT_INDEX_NAME])
                for d in plan.blobs:
                    check = d if verify is not None and verify(d) else None
                    w.add_file(blobs[d].member, blob_path(d), blobs[d].size, verify=check)
                for sg in plan.segments:
                    w.add_file(sg.member, blob_path(sg.blob), sg.size, offset=sg.offset)
                w.close()
                os.fsync(f.fileno())
            if w.offset > index.parts.maxSize:
                raise HydraError(f"internal error: part {k} is {w.offset} bytes, over {index.parts.maxSize}")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(WrittenPart(path, w.offset, w.hasher.hexdigest()))
    fsync_dir(out.parent)
    write_sums(out.parent, [(p.path.name, p.sha256) for p in written])
    return written
