"""diff (what changed between two bundles, and what a delta must carry) and copy-to (write to a stick)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..bundle.index import BundleIndex
from ..bundle.parts import write_sums
from ..bundle.reader import open_bundle
from ..digest import CHUNK
from ..disk import ensure_free_space, fsync_dir, human_bytes
from ..errors import HydraError, VerifyError
from .common import emit_json, handle_errors


def load_index(path: Path) -> BundleIndex:
    """A bundle, a part, or an index JSON file (not verified: diff is a planning tool)."""
    with open(path, "rb") as f:
        head = f.read(1)
    if head == b"{":
        return BundleIndex.from_bytes(path.read_bytes())
    with open_bundle(path, None, require_signature=False) as ob:
        return ob.index


def diff_indexes(old: BundleIndex, new: BundleIndex) -> dict[str, Any]:
    def comps(idx: BundleIndex) -> dict[str, tuple[str, str]]:
        out = {}
        for kind in ("images", "charts", "manifests", "files", "models", "kits"):
            for c in getattr(idx.components, kind):
                out[c.ref] = (kind[:-1], c.digest)
        return out

    a, b = comps(old), comps(new)
    old_blobs = {x.digest for x in old.blobs}
    carry = [x for x in new.blobs if x.digest not in old_blobs]
    return {
        "old": {"name": old.name, "version": old.version, "sequence": old.sequence},
        "new": {"name": new.name, "version": new.version, "sequence": new.sequence},
        "added": [{"ref": r, "kind": b[r][0], "digest": b[r][1]} for r in sorted(set(b) - set(a))],
        "removed": [{"ref": r, "kind": a[r][0], "digest": a[r][1]} for r in sorted(set(a) - set(b))],
        "changed": [{"ref": r, "kind": b[r][0], "old": a[r][1], "new": b[r][1]}
                    for r in sorted(set(a) & set(b)) if a[r][1] != b[r][1]],
        "unchanged": sum(1 for r in set(a) & set(b) if a[r][1] == b[r][1]),
        "carryBlobs": len(carry), "carryBytes": sum(x.size for x in carry),
        "totalBytes": sum(x.size for x in new.blobs),
    }


@click.command("diff")
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def diff_cmd(old: Path, new: Path, as_json: bool) -> None:
    """Components added/removed/changed from OLD to NEW (bundles, parts or index JSON), and the bytes a delta
    for a site holding OLD would carry (blobs in NEW not in OLD). Reads indexes only; does not verify."""
    d = diff_indexes(load_index(old), load_index(new))
    if as_json:
        emit_json(d)
        return
    click.echo(f"{d['old']['name']} {d['old']['version']} → {d['new']['name']} {d['new']['version']}")
    for key, sign in (("added", "+"), ("removed", "-")):
        for c in d[key]:
            click.echo(f"{sign} {c['kind']:<8} {c['ref']}  {c['digest'][:19]}")
    for c in d["changed"]:
        click.echo(f"~ {c['kind']:<8} {c['ref']}  {c['old'][:19]} → {c['new'][:19]}")
    click.echo(f"{d['unchanged']} unchanged; to carry: {d['carryBlobs']} blobs, {human_bytes(d['carryBytes'])} "
               f"of {human_bytes(d['totalBytes'])}")


class _Progress:
    """Bytes, rate and ETA across all files, on stderr (one line per second at most)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.quiet and (now - self.last >= 1 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-6)
            eta = (self.total - self.done) / rate if rate else 0
            click.echo(f"copy {human_bytes(self.done)} / {human_bytes(self.total)}  {human_bytes(rate)}/s  "
                       f"ETA {eta:.0f}s", err=True)


def _copy_one(src: Path, dest_dir: Path, progress: _Progress) -> str:
    """src → dest_dir/NAME.part (hashing), fsync, read back and compare, rename. Returns the sha256 hex."""
    final = dest_dir / src.name
    tmp = dest_dir / (src.name + ".part")
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        with open(src, "rb", buffering=0) as fin, open(tmp, "wb", buffering=0) as fout:
            while n := fin.readinto(buf):
                h.update(view[:n])
                w = 0
                while w < n:
                    w += fout.write(view[w:n])
                progress(n)
            os.fsync(fout.fileno())
        back = hashlib.sha256()
        with open(tmp, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):  # read from the medium, not the page cache, where the OS allows
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while n := f.readinto(buf):
                back.update(view[:n])
        if back.hexdigest() != h.hexdigest():
            raise VerifyError("digest-mismatch", f"{tmp}: read back {back.hexdigest()}, wrote {h.hexdigest()}")
        os.replace(tmp, final)
        fsync_dir(dest_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest()


@click.command("copy-to")
@click.argument("dest", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def copy_to_cmd(dest: Path, files: tuple[Path, ...], quiet: bool, as_json: bool) -> None:
    """Copy bundles or parts to DEST (a mounted stick): free space checked first, each file written as
    NAME.part, fsynced, read back and compared by sha256, then renamed; SHA256SUMS updated in DEST."""
    total = sum(f.stat().st_size for f in files)
    ensure_free_space(dest, total, f"copying {len(files)} file(s) to {dest}", reserve=1 << 20)
    prog = _Progress(total, quiet or as_json)
    out = []
    for f in files:
        if f.resolve().parent == dest.resolve():
            raise HydraError(f"{f} is already in {dest}")
        out.append((f.name, _copy_one(f, dest, prog)))
    write_sums(dest, out)
    secs = time.monotonic() - prog.t0
    if as_json:
        emit_json({"dest": str(dest), "files": [{"name": n, "sha256": h} for n, h in out], "bytes": total,
                   "seconds": round(secs, 3)})
    elif not quiet:
        click.echo(f"copied {len(out)} file(s), {human_bytes(total)} to {dest} in {secs:.1f}s, verified by "
                   "reading back; SHA256SUMS updated")
    sys.stdout.flush()
