"""Write a bundle: index, signature, then the OCI layout, blobs small to large.

Nothing is assembled in memory or on disk first: headers are generated, blobs are downloaded straight into their
places or copied from where they already are (the cache, an earlier bundle) in the kernel. The output appears
under its final name only when complete.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..digest import CHUNK, sha256_bytes
from ..disk import BlobSink, Extent, ensure_free_space, fsync_dir
from ..errors import DigestMismatch, HydraError
from . import INDEX_NAME, INSTALLER_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME, PART_NAME, SIG_NAME
from .index import Blob, BundleIndex, Segment
from .parts import PLACEHOLDER, WrittenPart, part_json, part_names, part_size, write_sums
from .tarwriter import Piece, TarWriter


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


# where a blob's bytes are now: a cache file, or its extents in an earlier bundle (see builder/ledger.py)
Locate = Callable[[str], list[Piece]]
# fill([(blob, sink), ...]) downloads (and verifies) every reserved blob into its sink
Fill = Callable[[list[tuple[Blob, BlobSink]]], None]
# where this write put each blob's bytes: digest → [(final file, data offset, length)], in blob order
Placed = dict[str, list[tuple[Path, int, int]]]


def write_bundle(out: Path, index: BundleIndex, index_bytes: bytes, sig: bytes | None,
                 layout: dict[str, bytes], locate: Locate, mtime: int,
                 progress: Callable[[int], None] | None = None,
                 verify: Callable[[str], bool] | None = None,
                 direct: Collection[str] = (), fill: Fill | None = None) -> tuple[int, Placed]:
    """Write the bundle to ``out`` atomically (temp name, fsync, rename). Returns its size and where each
    blob's data lies in it.

    ``layout`` holds the bytes of ``oci-layout``, ``index.json`` and (with a kit) ``install.sh``.
    ``verify(digest)`` says which blobs to re-hash while copying (content not verified in this process).
    Blobs in ``direct`` are not copied: their members are laid out with holes (every size is in the index, so
    every offset is known) and ``fill`` writes them in place, straight from their source; each byte then
    reaches the disk once. The space is allocated up front, so a full disk fails early."""
    out = Path(out)
    total = bundle_size(index, index_bytes, sig)
    ensure_free_space(out.parent, total, f"writing {out}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    placed: Placed = {}
    try:
        with open(tmp, "wb") as f:
            if direct:
                _allocate(f.fileno(), total)
            holes: list[tuple[Blob, BlobSink]] = []
            w = TarWriter(f, mtime)
            w.progress = progress
            _prefix(w, index, index_bytes, sig, layout)
            for b in index.blobs:
                if b.omitted:
                    continue
                if b.digest in direct:
                    off = w.reserve(b.member, b.size)
                    holes.append((b, BlobSink([Extent(f.fileno(), off, b.size)])))
                else:
                    check = b.digest if verify is not None and verify(b.digest) else None
                    off = _copy_blob(w, b, locate(b.digest), check)
                placed[b.digest] = [(out, off, b.size)]
            w.close()
            if holes:
                assert fill is not None
                fill(holes)
            os.fsync(f.fileno())
            size = w.offset
        os.replace(tmp, out)
        fsync_dir(out.parent)
        return size, placed
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:  # e.g. EOPNOTSUPP on some filesystems: the holes are filled all the same
        if e.errno == errno.ENOSPC:
            raise


def _prefix(w: TarWriter, index: BundleIndex, index_bytes: bytes, sig: bytes | None, layout: dict[str, bytes],
            part_info: bytes | None = None) -> None:
    """Everything before the blobs: index, signature, install.sh, (part record), oci-layout, index.json."""
    w.add_bytes(INDEX_NAME, index_bytes)
    if sig is not None:
        w.add_bytes(SIG_NAME, sig)
    if index.installer is not None:
        w.add_bytes(INSTALLER_NAME, layout[INSTALLER_NAME])
    if part_info is not None:
        w.add_bytes(PART_NAME, part_info)
    w.add_bytes(LAYOUT_NAME, layout[LAYOUT_NAME])
    w.add_bytes(LAYOUT_INDEX_NAME, layout[LAYOUT_INDEX_NAME])


def _copy_blob(w: TarWriter, b: Blob, pieces: list[Piece], check: str | None) -> int:
    h = hashlib.sha256() if check is not None else None
    off = w.add_pieces(b.member, pieces, b.size, [h] if h is not None else [])
    if h is not None and check is not None and "sha256:" + h.hexdigest() != check:
        raise DigestMismatch(str(pieces[0][0]), check, "sha256:" + h.hexdigest())
    return off


def cut(pieces: list[Piece], offset: int, size: int) -> list[Piece]:
    """The pieces holding bytes ``offset`` … ``offset + size`` of the blob that ``pieces`` hold in order."""
    out: list[Piece] = []
    pos = 0
    for path, off, n in pieces:
        lo, hi = max(offset, pos), min(offset + size, pos + n)
        if lo < hi:
            out.append((path, off + lo - pos, hi - lo))
        pos += n
    return out


SIG_PLACEHOLDER = b"0" * 96  # any signature up to a block takes the same room: header + one data block


def write_parts(out: Path, index: BundleIndex, sign: Callable[[bytes], bytes] | None, layout: dict[str, bytes],
                locate: Locate, mtime: int, progress: Callable[[int], None] | None = None,
                verify: Callable[[str], bool] | None = None, direct: Collection[str] = (),
                fill: Fill | None = None) -> tuple[list[WrittenPart], Placed, bytes | None]:
    """Write a split bundle straight into its parts (never whole first), then ``SHA256SUMS`` beside them.
    Returns the parts in order, where each blob's data lies, and the signature of the final index.

    The index lists every segment's digest, and a segment of a blob downloaded in place is only known once its
    bytes have passed, so every part is first laid out with a same-size placeholder index and signature; blobs
    are copied or downloaded into their places (segment digests computed on the way, never by reading back);
    then the real index is signed and each part's first members are rewritten in place. Each part's sha256
    (``SHA256SUMS``) is taken from the finished file, the one read the layout forces. Parts appear under their
    final names only when all of them are complete."""
    assert index.parts is not None
    out = Path(out)
    names = part_names(out, index.parts.count)
    draft = index.to_bytes()
    sig_len = len(SIG_PLACEHOLDER) if sign is not None else None
    sizes = [part_size(index, len(draft), sig_len, k) for k in range(1, len(names) + 1)]
    ensure_free_space(out.parent, sum(sizes), f"writing {len(names)} parts of {out.name}")
    blobs = {b.digest: b for b in index.blobs}
    placed: Placed = {}
    holes: list[tuple[Blob, BlobSink]] = []
    seg_holes: dict[str, list[tuple[Segment, Extent]]] = {}
    wholes: dict[str, hashlib._Hash] = {}
    tmps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in names]
    files = []
    prefix_end: list[int] = []
    try:
        for k, (tmp, path, plan) in enumerate(zip(tmps, names, index.parts.parts, strict=True), 1):
            f = open(tmp, "wb+")  # noqa: SIM115 (closed in the finally below, after the fill)
            files.append(f)
            fd = f.fileno()
            if direct:
                _allocate(fd, sizes[k - 1])
            w = TarWriter(f, mtime)
            w.progress = progress
            _prefix(w, index, draft, SIG_PLACEHOLDER if sign is not None else None, layout,
                    part_json(PLACEHOLDER, k, index.parts.count))
            prefix_end.append(w.offset)
            for d in plan.blobs:
                b = blobs[d]
                if d in direct:
                    off = w.reserve(b.member, b.size)
                    holes.append((b, BlobSink([Extent(fd, off, b.size)])))
                else:
                    check = d if verify is not None and verify(d) else None
                    off = _copy_blob(w, b, locate(d), check)
                placed[d] = [(path, off, b.size)]
            for sg in plan.segments:
                if sg.blob in direct:
                    off = w.reserve(sg.member, sg.size)
                    seg_holes.setdefault(sg.blob, []).append((sg, Extent(fd, off, sg.size)))
                else:  # the segment's digest is taken while copying; the whole blob's only if not verified yet
                    h = hashlib.sha256()
                    whole_check = verify is not None and verify(sg.blob)
                    hashers = [h, wholes.setdefault(sg.blob, hashlib.sha256())] if whole_check else [h]
                    off = w.add_pieces(sg.member, cut(locate(sg.blob), sg.offset, sg.size), sg.size, hashers)
                    sg.digest = "sha256:" + h.hexdigest()
                    if whole_check and sg.offset + sg.size == blobs[sg.blob].size:
                        got = "sha256:" + wholes.pop(sg.blob).hexdigest()
                        if got != sg.blob:
                            raise DigestMismatch(str(locate(sg.blob)[0][0]), sg.blob, got)
                placed.setdefault(sg.blob, []).append((path, off, sg.size))
            w.close()
            if w.offset != sizes[k - 1]:
                raise HydraError(f"internal error: part {k} is {w.offset} bytes, planned {sizes[k - 1]}")
            if w.offset > index.parts.maxSize:
                raise HydraError(f"internal error: part {k} is {w.offset} bytes, over {index.parts.maxSize}")
        segmented = [(blobs[d], BlobSink([e for _, e in segs], hash_extents=True)) for d, segs in seg_holes.items()]
        if holes or segmented:
            assert fill is not None
            fill(holes + segmented)
        for (_b, sink), segs in zip(segmented, seg_holes.values(), strict=True):
            for (sg, _e), digest in zip(segs, sink.digests(), strict=True):
                sg.digest = digest
        index_bytes = index.to_bytes()
        if len(index_bytes) != len(draft):
            raise HydraError("internal error: the final index is not the size of its placeholder")
        sig = sign(index_bytes) if sign is not None else None
        idx_digest = sha256_bytes(index_bytes)
        for k, f in enumerate(files, 1):
            head = io.BytesIO()
            _prefix(TarWriter(head, mtime), index, index_bytes, sig, layout, part_json(idx_digest, k, len(files)))
            if head.tell() != prefix_end[k - 1]:
                raise HydraError(f"internal error: part {k}: the signed index does not fit its reserved place")
            os.pwrite(f.fileno(), head.getvalue(), 0)
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            sums = list(pool.map(lambda f: _hash_and_sync(f.fileno()), files))
        for tmp, path in zip(tmps, names, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for f in files:
            f.close()
    fsync_dir(out.parent)
    written = [WrittenPart(path, size, h) for path, size, h in zip(names, sizes, sums, strict=True)]
    write_sums(out.parent, [(p.path.name, p.sha256) for p in written])
    return written, placed, sig


def _hash_and_sync(fd: int) -> str:
    """sha256 of a finished part (large reads: hashlib drops the GIL, so parts hash in parallel), then fsync."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [view], pos):
        h.update(view[:n])
        pos += n
    os.fsync(fd)
    return h.hexdigest()
