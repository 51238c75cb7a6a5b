"""The OCI image layout on disk (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``): the bundle, the
builder's cache and the agent's store are each one."""

from __future__ import annotations

from pathlib import Path

from ..digest import canonical_json, hex_of

OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})  # the ``oci-layout`` file


def blob_path(root: Path, digest: str) -> Path:
    """Where an OCI layout rooted at ``root`` keeps ``digest``."""
    return root / "blobs" / "sha256" / hex_of(digest)


class BlobDir:
    """A ``blobs/sha256/<hex>`` directory (the builder's cache and the agent's store both are one)."""

    blobs: Path

    def path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size
