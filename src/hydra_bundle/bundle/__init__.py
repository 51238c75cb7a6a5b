"""The bundle format, defined once: index, signature, tar writer and the verifying reader.

Layout of a bundle (one uncompressed tar, see docs/bundle-format.md):
  1. ``hydra-bundle.json``      the index (canonical JSON), signed
  2. ``hydra-bundle.json.sig``  base64 DER ECDSA P-256/SHA-256 over member 1 (cosign sign-blob format)
  3. ``install.sh``             the agent kit's installer (when the bundle carries a kit; listed in the index)
  4. ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``: an OCI image layout
"""

from typing import Final

INDEX_NAME = "hydra-bundle.json"
SIG_NAME = "hydra-bundle.json.sig"
INSTALLER_NAME = "install.sh"
LAYOUT_NAME = "oci-layout"
LAYOUT_INDEX_NAME = "index.json"
BLOB_PREFIX = "blobs/sha256/"
SEGMENT_PREFIX = "segments/sha256/"
PART_NAME = "hydra-bundle.part.json"
FORMAT: Final = "hydra-bundle/v1"
