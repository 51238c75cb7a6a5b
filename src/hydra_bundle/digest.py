"""Digests: streaming sha256 and canonical JSON. Every byte is hashed once, on the way through, in bounded
memory."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

CHUNK = 1 << 20  # 1 MiB: large enough that hashlib releases the GIL and syscalls stay cheap


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Digest and size of a file, read in CHUNK pieces."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant whitespace, UTF-8. What we sign and digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hex_of(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ValueError(f"unsupported digest {digest!r}")
    return hexpart
