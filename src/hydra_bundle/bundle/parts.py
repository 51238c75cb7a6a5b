"""Split bundles: the part layout plan, part file names and ``SHA256SUMS``.

A split bundle is a set of tars (``NAME.part-01-of-07.tar`` …). Every part starts with the same signed index,
its signature and ``hydra-bundle.part.json`` (which part this is), then ``oci-layout`` + ``index.json``, then
the whole blobs and blob segments the index's ``parts`` table assigns to it. A blob larger than the room a part
has is cut into segments (``segments/sha256/<blob hex>/<offset>``), each with its own digest in the index, so
every part verifies alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..digest import canonical_json
from ..disk import fsync_dir
from ..errors import UsageError
from . import INDEX_NAME, INSTALLER_NAME, PART_NAME, SEGMENT_PREFIX, SIG_NAME
from .index import Blob, BundleIndex, Part, Parts, Segment
from .tarwriter import BLOCK, RECORD, TarWriter

FAT32_MAX = (4 << 30) - 1
DVD_SIZE = 4_700_372_992
PLACEHOLDER = "sha256:" + "0" * 64
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_split(value: str) -> int | None:
    """``fat32`` | ``exfat`` | ``dvd`` | SIZE (``2GiB``, ``500MB``, ``123456``) → max part size (None: no limit)."""
    v = value.strip().lower()
    if v == "fat32":
        return FAT32_MAX
    if v == "exfat":
        return None
    if v == "dvd":
        return DVD_SIZE
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", v)
    if not m or m.group(2) not in _UNITS:
        raise UsageError(f"--split {value!r}: expected fat32, exfat, dvd or a size such as 2GiB, 500MB, 123456")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def part_json(index_digest: str, part: int, count: int) -> bytes:
    return canonical_json({"part": part, "of": count, "index": index_digest})


def part_names(out: Path, count: int) -> list[Path]:
    stem = out.name[:-4] if out.name.endswith(".tar") else out.name
    w = max(2, len(str(count)))
    return [out.with_name(f"{stem}.part-{k:0{w}d}-of-{count:0{w}d}.tar") for k in range(1, count + 1)]


def _segment_name(blob: str, offset: int) -> str:
    return f"{SEGMENT_PREFIX}{blob.split(':', 1)[1]}/{offset}"


def plan_parts(blobs: list[Blob], capacity: int) -> list[Part]:
    """Assign carried blobs (tar order) to parts holding at most ``capacity`` bytes of members each.

    Blobs go whole to the current part, or to a fresh one when they fit there (parts split on blob
    boundaries); a blob bigger than a whole part is cut into segments, starting in the current part."""
    if capacity < 8 * BLOCK:
        raise UsageError("--split: the part size is too small to hold the index and any content")
    parts = [Part()]
    room = capacity
    min_start = min(1 << 20, capacity // 8)
    for b in blobs:
        need = TarWriter.member_size(b.member, b.size)
        if need <= room:
            parts[-1].blobs.append(b.digest)
            room -= need
            continue
        if need <= capacity:
            parts.append(Part(blobs=[b.digest]))
            room = capacity - need
            continue
        if room < min_start:
            parts.append(Part())
            room = capacity
        off = 0
        while off < b.size:
            name = _segment_name(b.digest, off)
            s = min(b.size - off, (room - TarWriter.header_size(name, b.size)) // BLOCK * BLOCK)
            if s <= 0:
                parts.append(Part())
                room = capacity
                continue
            parts[-1].segments.append(Segment(blob=b.digest, offset=off, size=s, digest=PLACEHOLDER))
            room -= TarWriter.member_size(name, s)
            off += s
            if off < b.size:
                parts.append(Part())
                room = capacity
    if not parts[-1].blobs and not parts[-1].segments and len(parts) > 1:
        parts.pop()
    return parts


def fixed_overhead(index: BundleIndex, index_len: int, count: int, signed: bool) -> int:
    """Bytes every part spends before its blobs, plus the worst-case end-of-archive padding."""
    n = TarWriter.member_size(INDEX_NAME, index_len)
    n += TarWriter.member_size(SIG_NAME, 96) if signed else 0
    n += TarWriter.member_size(PART_NAME, len(part_json(PLACEHOLDER, count, count)))
    n += TarWriter.member_size(INSTALLER_NAME, index.installer.size) if index.installer is not None else 0
    n += sum(TarWriter.member_size(k, m.size) for k, m in index.layout.items())
    return n + 2 * BLOCK + RECORD


def plan_split(index: BundleIndex, max_size: int, signed: bool) -> Parts:
    """Choose the parts table so that every part (index included) stays within ``max_size``.

    The index lists the parts, so its size depends on the plan: iterate until the overhead estimate holds."""
    carried = [b for b in index.blobs if not b.omitted]
    overhead = fixed_overhead(index, len(index.to_bytes()) + 4096, 1, signed)
    for _ in range(8):
        if max_size - overhead < 8 * BLOCK:
            raise UsageError(f"--split {max_size}: parts must be larger than the index ({overhead} bytes)")
        plist = plan_parts(carried, max_size - overhead)
        parts = Parts(count=len(plist), maxSize=max_size, parts=plist)
        trial = index.model_copy(update={"parts": parts})
        need = fixed_overhead(index, len(trial.to_bytes()), len(plist), signed)
        if need <= overhead:
            return parts
        overhead = need + 4096
    raise UsageError("--split: could not find a stable part layout (part size too small)")


def part_size(index: BundleIndex, index_len: int, sig_len: int | None, part: int) -> int:
    """Exact size of part ``part`` (for the free-space check)."""
    assert index.parts is not None
    n = TarWriter.member_size(INDEX_NAME, index_len)
    if sig_len is not None:
        n += TarWriter.member_size(SIG_NAME, sig_len)
    n += TarWriter.member_size(PART_NAME, len(part_json(PLACEHOLDER, part, index.parts.count)))
    for name, (_d, size) in index.expected_members(part).items():
        n += TarWriter.member_size(name, size)
    n += 2 * BLOCK
    return n + (-n % RECORD)


@dataclass
class WrittenPart:
    path: Path
    size: int
    sha256: str  # hex


def write_sums(directory: Path, entries: list[tuple[str, str]]) -> Path:
    """``SHA256SUMS`` in ``sha256sum -c`` format (``<hex>  <name>``), merged with an existing file's lines."""
    path = directory / "SHA256SUMS"
    lines: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            h, sep, name = line.partition("  ")
            if sep:
                lines[name] = h
    for name, h in entries:
        lines[name] = h
    tmp = directory / ".SHA256SUMS.tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{h}  {n}\n" for n, h in sorted(lines.items())))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


def describe(index: BundleIndex) -> dict[str, object]:
    """Parts summary for inspect/diff."""
    if index.parts is None:
        return {}
    sizes = {b.digest: b.size for b in index.blobs}
    return {"count": index.parts.count, "maxSize": index.parts.maxSize,
            "parts": [{"part": k, "blobs": len(p.blobs), "segments": len(p.segments),
                       "bytes": sum(sizes[d] for d in p.blobs) + sum(s.size for s in p.segments)}
                      for k, p in enumerate(index.parts.parts, 1)]}

