"""Open a bundle verify-first: the signature is checked before any other member is looked at, then every
member is checked against the signed index while it streams (name, size, digest, no extras, none missing).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric import ec

from ..digest import sha256_bytes
from ..errors import VerifyError
from . import INDEX_NAME, INSTALLER_NAME, PART_NAME, SIG_NAME
from .index import MAX_INDEX_BYTES, BundleIndex
from .sign import key_id, verify
from .tarreader import Entry, TarReader

MAX_SIG_BYTES = 4096


@dataclass
class BlobMember:
    """A member the index expects; ``read_into`` streams it and checks its digest."""

    entry: Entry
    digest: str
    size: int
    reader: TarReader

    @property
    def name(self) -> str:
        return self.entry.name

    def read_into(self, sink: Callable[[memoryview], object] | None,
                  progress: Callable[[int], None] | None = None) -> None:
        got = self.reader.read_into(self.entry, sink, progress)
        if got != self.digest:
            raise VerifyError("digest-mismatch", f"{self.name}: expected {self.digest}, got {got}")


@dataclass
class OpenBundle:
    path: Path
    index: BundleIndex
    index_bytes: bytes
    signature: bytes | None
    signer: str | None               # key id of the trusted key that signed it
    reader: TarReader
    _file: BinaryIO
    _expected: dict[str, tuple[str, int]] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _pending: list[Entry] = field(default_factory=list)  # members already read from the tar (install.sh, …)
    part: int | None = None        # split bundles: which part (1-based) this file is

    @functools.cached_property
    def digest(self) -> str:
        """The bundle digest: sha256 of the signed index bytes (the same for every part of a set)."""
        return sha256_bytes(self.index_bytes)

    def members(self) -> Iterator[BlobMember]:
        """Yield each remaining member; refuses unknown ones and sizes that differ from the index."""
        entries: Iterator[Entry] = iter(self.reader)
        if self._pending:
            entries = _chain(self._pending, entries)
            self._pending = []
        for e in entries:
            exp = self._expected.get(e.name)
            if exp is None:
                raise VerifyError("unknown-member", f"{e.name} is not listed in the signed index")
            digest, size = exp
            if e.size != size:
                raise VerifyError("size-mismatch", f"{e.name}: index says {size} bytes, tar header says {e.size}")
            self.reader.check_header(e)
            self._done.add(e.name)
            yield BlobMember(e, digest, size, self.reader)

    def finish(self) -> None:
        """After all members: every expected member was seen and nothing but padding follows."""
        missing = sorted(set(self._expected) - self._done)
        if missing:
            raise VerifyError("missing-member", f"{len(missing)} member(s) missing, first {missing[0]}")
        self.reader.check_trailer()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> OpenBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain(first: list[Entry], rest: Iterator[Entry]) -> Iterator[Entry]:
    yield from first
    yield from rest


def _read_part(reader: TarReader, entry: Entry | None, index: BundleIndex, index_bytes: bytes) -> int:
    """The unsigned part member must agree with the signed parts table and name this index."""
    if entry is None or entry.name != PART_NAME:
        raise VerifyError("bad-layout", f"a part of a split bundle must hold {PART_NAME} after the signature")
    reader.check_header(entry)
    try:
        info = json.loads(reader.read_bytes(entry, 4096))
        part, count, digest = info["part"], info["of"], info["index"]
    except (ValueError, KeyError, TypeError):
        raise VerifyError("bad-part", f"{PART_NAME} is not valid part information") from None
    assert index.parts is not None
    if digest != sha256_bytes(index_bytes):
        raise VerifyError("bad-part", f"{PART_NAME} names index {digest}, not the one this part carries")
    if count != index.parts.count or not isinstance(part, int) or not 1 <= part <= count:
        raise VerifyError("bad-part", f"{PART_NAME} says part {part} of {count}; the signed index has "
                          f"{index.parts.count} parts")
    return part


def open_bundle(path: str | os.PathLike[str], keys: list[ec.EllipticCurvePublicKey] | None,
                require_signature: bool = True) -> OpenBundle:
    """Read and authenticate the index. With ``keys=None`` and ``require_signature=False`` the signature is
    not checked (``inspect``); nothing else may do that."""
    p = Path(path)
    f = open(p, "rb")  # noqa: SIM115 - owned by the returned OpenBundle
    try:
        reader = TarReader(f)
        it = iter(reader)
        first = next(it, None)
        if first is None or first.name != INDEX_NAME:
            raise VerifyError("bad-layout", f"first member must be {INDEX_NAME}")
        reader.check_header(first)
        index_bytes = reader.read_bytes(first, MAX_INDEX_BYTES)
        second = next(it, None)
        sig: bytes | None = None
        signer = None
        if second is not None and second.name == SIG_NAME:
            reader.check_header(second)
            sig = reader.read_bytes(second, MAX_SIG_BYTES)
            if sig != sig.strip():  # the writer writes bare base64: no byte of the member may change unnoticed
                raise VerifyError("bad-signature", f"{SIG_NAME} has whitespace around the signature")
        if require_signature:
            if sig is None:
                raise VerifyError("unsigned", f"second member must be {SIG_NAME}; unsigned bundles are refused")
            signer = key_id(verify(keys or [], index_bytes, sig))
        elif keys and sig is not None:
            signer = key_id(verify(keys, index_bytes, sig))
        index = BundleIndex.from_bytes(index_bytes)
        index.validate_self()
        nxt = second if second is not None and second.name != SIG_NAME else next(it, None)
        pending: list[Entry] = []
        if nxt is not None and nxt.name == INSTALLER_NAME and index.installer is not None:
            pending.append(nxt)  # install.sh: an expected member like the others (checked by digest when read)
            nxt = next(it, None)
        part = None
        if index.parts is not None:
            part = _read_part(reader, nxt, index, index_bytes)
            nxt = None
        if nxt is not None:
            pending.append(nxt)
        return OpenBundle(p, index, index_bytes, sig, signer, reader, f, index.expected_members(part),
                          _pending=pending, part=part)
    except BaseException:
        f.close()
        raise


def verify_bundle(path: str | os.PathLike[str], keys: list[ec.EllipticCurvePublicKey] | None,
                  require_signature: bool = True,
                  progress: Callable[[int], None] | None = None) -> OpenBundle:
    """One streaming pass: signature, then every member's size and digest. Returns the (closed) bundle."""
    with open_bundle(path, keys, require_signature) as ob:
        for m in ob.members():
            m.read_into(None, progress)
        ob.finish()
    return ob
