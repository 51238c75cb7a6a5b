"""Where `agent plan` and `agent preflight` read a bundle from: a bundle file (signature verified first, manifest
blobs read straight from it) or an admitted bundle in the journal (manifests from the content store). Read-only:
neither creates agent state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundle.index import BundleIndex
from ..errors import UsageError
from ..oci.layout import blob_path
from .agent_common import find_bundle, open_journal

if TYPE_CHECKING:
    from ..agent.config import AgentConfig


def store_reader(cfg: AgentConfig) -> Callable[[str], bytes | None]:
    """Blobs already in the content store (read-only: a plan never creates state)."""
    def read(digest: str) -> bytes | None:
        try:
            return blob_path(cfg.store_dir, digest).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
    return read


def from_file(cfg: AgentConfig, path: Path) -> tuple[BundleIndex, str, dict[str, Any], Callable[[str], bytes]]:
    """Verify the signature first, then read the manifest blobs straight from the bundle (each digest checked)
    unless the store already has them."""
    from ..bundle.reader import open_bundle

    stored = store_reader(cfg)
    blobs: dict[str, bytes] = {}
    with open_bundle(path, cfg.public_keys()) as ob:
        idx = ob.index
        need = {m.file.digest for m in idx.components.manifests}
        for d in list(need):
            data = stored(d)
            if data is not None:
                blobs[d] = data
                need.discard(d)
        for m in ob.members() if need else ():
            if m.digest in need:
                buf = bytearray()
                m.read_into(buf.extend)
                blobs[m.digest] = bytes(buf)
                need.discard(m.digest)
                if not need:
                    break
        info: dict[str, Any] = {"digest": ob.digest, "signer": ob.signer, "file": str(path)}

    def read(digest: str) -> bytes:
        try:
            return blobs[digest]
        except KeyError:
            raise UsageError(f"{digest} is not in the bundle") from None
    return idx, ob.digest, info, read


def from_journal(cfg: AgentConfig, ref: str, version: str | None = None
                 ) -> tuple[BundleIndex, str, dict[str, Any], Callable[[str], bytes]]:
    """An admitted bundle by name (``version`` picks one) or digest; its manifests are read from the store."""
    db, j = open_journal(cfg)
    try:
        row = find_bundle(j, ref, version)
        states = {s.name: s.state for s in j.steps(row.id)}
    finally:
        db.close()
    stored = store_reader(cfg)

    def read(digest: str) -> bytes:
        data = stored(digest)
        if data is None:
            raise UsageError(f"{digest} is not in the content store ({row.name} {row.version} is not ingested yet: "
                             f"give the bundle file instead)")
        return data
    return row.index(), row.id, {"digest": row.id, "signer": row.signer, "state": row.state, "steps": states}, read
