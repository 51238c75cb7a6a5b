"""The bundle index (``hydra-bundle.json``): what the bundle holds, signed as canonical JSON.

It lists every tar member after the signature with its digest and size, so a reader can refuse anything
unexpected while streaming, and every component with the blobs it needs, so tools can diff and inventory
bundles without unpacking them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..digest import canonical_json
from ..errors import VerifyError
from . import BLOB_PREFIX, FORMAT, INSTALLER_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME, SEGMENT_PREFIX

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
MAX_INDEX_BYTES = 16 << 20  # an index larger than this is refused before it is read (or parsed): ~100k blobs


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, defer_build=True)


class Blob(_Model):
    digest: str
    size: int = Field(ge=0)
    mediaType: str
    omitted: bool | None = None  # delta bundles: the site already holds it; not a member of the tar

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not _DIGEST.match(v):
            raise ValueError("digest must be sha256:<64 hex>")
        return v

    @property
    def member(self) -> str:
        return BLOB_PREFIX + self.digest.split(":", 1)[1]


class Member(_Model):
    """A non-blob layout member (``oci-layout``, ``index.json``)."""

    digest: str
    size: int = Field(ge=0)


class Segment(_Model):
    """A piece of a blob too large for one part: ``size`` bytes of blob ``blob`` from ``offset``."""

    blob: str
    offset: int = Field(ge=0)
    size: int = Field(ge=0)
    digest: str

    @property
    def member(self) -> str:
        return f"{SEGMENT_PREFIX}{self.blob.split(':', 1)[1]}/{self.offset}"


class Part(_Model):
    """What one part holds after the shared leading members: whole blobs and blob segments, in tar order."""

    blobs: list[str] = []
    segments: list[Segment] = []


class Parts(_Model):
    count: int = Field(ge=1)
    maxSize: int = Field(ge=1)
    parts: list[Part]


class Component(_Model):
    """Common fields: ``ref`` is the ``org.opencontainers.image.ref.name`` in the layout's index.json."""

    ref: str
    digest: str          # digest of the top-level manifest (or image index)
    mediaType: str
    blobs: list[str]     # every blob digest this component needs, manifest included


class Image(Component):
    platforms: list[str] = []
    source: str | None = None  # where it was pulled from when a mirror or docker-daemon was used
    # Docker-typed images only: the OCI index that names them in the layout's index.json (for OCI tools).
    layoutDigest: str | None = None


class Chart(Component):
    name: str
    version: str
    source: str              # oci://… or the classic repo URL
    chartDigest: str         # sha256 of the chart .tgz


class FileRef(_Model):
    path: str
    digest: str
    size: int


class File(Component):
    name: str
    source: str
    file: FileRef


class Manifests(File):
    pass


class Model(Component):
    name: str
    source: str
    files: list[FileRef]


class KitWheel(_Model):
    """One wheel of the agent kit and the hosts (``linux/amd64 cp311``) it is installed on."""

    file: str
    digest: str
    size: int = Field(ge=0)
    targets: list[str]


class Kit(Component):
    """The agent itself, as wheels for every supported platform and CPython, installed by ``install.sh`` (or by a
    running agent that is older)."""

    version: str             # of hydra-bundle
    pythons: list[str]
    platforms: list[str]
    wheels: list[KitWheel]


class Components(_Model):
    images: list[Image] = []
    charts: list[Chart] = []
    manifests: list[Manifests] = []
    files: list[File] = []
    models: list[Model] = []
    kits: list[Kit] = []

    def all(self) -> list[Component]:
        return [*self.images, *self.charts, *self.manifests, *self.files, *self.models, *self.kits]


class BundleIndex(_Model):
    format: Literal["hydra-bundle/v1"] = FORMAT
    name: str
    version: str
    sequence: int = Field(ge=0)
    created: str
    expires: str | None = None
    builder: str
    specDigest: str
    platforms: list[str]
    components: Components
    layout: dict[str, Member]  # oci-layout and index.json
    blobs: list[Blob]          # in tar order
    spec: dict[str, Any] = {}  # the normalized spec (deploy steps, values) for the agent
    parts: Parts | None = None  # split bundles only: which part holds which members
    installer: Member | None = None  # ``install.sh`` (bundles with an agent kit), the member after the signature

    @field_validator("created", "expires")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_time(v)
            except ValueError:
                raise ValueError("must be an RFC 3339 time such as 2026-11-27T06:00:00Z") from None
        return v

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleIndex:
        try:
            return cls.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise VerifyError("bad-index", f"index {loc}: {first['msg']}") from None

    def expected_members(self, part: int | None = None) -> dict[str, tuple[str, int]]:
        """Every tar member after the signature (and part member): name → (digest, size).

        For a split bundle ``part`` (1-based) selects what that part holds; omitted blobs are never members."""
        out = {name: (m.digest, m.size) for name, m in self.layout.items()}
        if self.installer is not None:
            out[INSTALLER_NAME] = (self.installer.digest, self.installer.size)
        if self.parts is None:
            for b in self.blobs:
                if not b.omitted:
                    out[b.member] = (b.digest, b.size)
            return out
        if part is None or not 1 <= part <= self.parts.count:
            raise VerifyError("bad-part", f"part {part} is not one of the {self.parts.count} parts of this bundle")
        sizes = {b.digest: b for b in self.blobs}
        p = self.parts.parts[part - 1]
        for d in p.blobs:
            out[sizes[d].member] = (d, sizes[d].size)
        for sg in p.segments:
            out[sg.member] = (sg.digest, sg.size)
        return out

    def segments_of(self, blob: str) -> list[tuple[int, Segment]]:
        """(part number, segment) for every segment of ``blob``, in offset order."""
        if self.parts is None:
            return []
        out = [(k, sg) for k, p in enumerate(self.parts.parts, 1) for sg in p.segments if sg.blob == blob]
        return sorted(out, key=lambda t: t[1].offset)

    def omitted(self) -> list[Blob]:
        return [b for b in self.blobs if b.omitted]

    def validate_self(self) -> None:
        """Structural checks beyond the schema (unique blobs, layout members present, components covered)."""
        if set(self.layout) != {LAYOUT_NAME, LAYOUT_INDEX_NAME}:
            raise VerifyError("bad-index", f"layout must list exactly {LAYOUT_NAME} and {LAYOUT_INDEX_NAME}")
        seen: set[str] = set()
        for b in self.blobs:
            if b.digest in seen:
                raise VerifyError("bad-index", f"blob {b.digest} listed twice")
            seen.add(b.digest)
        for c in self.components.all():
            missing = [d for d in c.blobs if d not in seen]
            if missing:
                raise VerifyError("bad-index", f"{c.ref} needs blob {missing[0]} that the index does not list")
        if self.parts is not None:
            self._validate_parts({b.digest: b for b in self.blobs})

    def _validate_parts(self, blobs: dict[str, Blob]) -> None:
        """Every carried blob is in exactly one part, whole or as contiguous segments covering it."""
        ps = self.parts
        assert ps is not None
        if len(ps.parts) != ps.count:
            raise VerifyError("bad-index", f"parts: count {ps.count} but {len(ps.parts)} parts listed")
        placed: dict[str, int] = {}
        cover: dict[str, list[Segment]] = {}
        for p in ps.parts:
            for d in p.blobs:
                if d not in blobs or blobs[d].omitted or d in placed or d in cover:
                    raise VerifyError("bad-index", f"parts: blob {d} unknown, omitted or placed twice")
                placed[d] = 1
            for sg in p.segments:
                if sg.blob not in blobs or blobs[sg.blob].omitted or sg.blob in placed:
                    raise VerifyError("bad-index", f"parts: segment of unknown or omitted blob {sg.blob}")
                if not _DIGEST.match(sg.digest):
                    raise VerifyError("bad-index", f"parts: bad segment digest {sg.digest!r}")
                cover.setdefault(sg.blob, []).append(sg)
        for d, segs in cover.items():
            pos = 0
            for sg in sorted(segs, key=lambda s: s.offset):
                if sg.offset != pos:
                    raise VerifyError("bad-index", f"parts: segments of {d} do not cover it contiguously")
                pos += sg.size
            if pos != blobs[d].size:
                raise VerifyError("bad-index", f"parts: segments of {d} cover {pos} of {blobs[d].size} bytes")
        for b in blobs.values():
            if not b.omitted and b.digest not in placed and b.digest not in cover:
                raise VerifyError("bad-index", f"parts: blob {b.digest} is in no part")

    def expired(self, now: datetime | None = None) -> bool:
        if not self.expires:
            return False
        return parse_time(self.expires) <= (now or datetime.now(UTC))

    @property
    def _member_bytes(self) -> int:
        return sum(m.size for m in self.layout.values()) + (self.installer.size if self.installer else 0)

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs) + self._member_bytes

    @property
    def carried_size(self) -> int:
        """Bytes of content the tar (or the set of parts) actually carries (omitted blobs excluded)."""
        return sum(b.size for b in self.blobs if not b.omitted) + self._member_bytes


def parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
