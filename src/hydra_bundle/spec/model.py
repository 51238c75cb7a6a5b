"""Schema of ``bundle-spec.yaml`` (apiVersion ``hydra-bundle/v1``, kind ``BundleSpec``).

Unknown fields are errors (a typo must not silently drop an artifact from an air-gap bundle).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..errors import UsageError
from ..oci.reference import Reference
from ..oci.sitename import site_name
from .deploy import DeploySpec
from .requirements import Requirements

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
_HEX = re.compile(r"^[a-f0-9]{64}$")
_DURATION = re.compile(r"^(\d+)([hdw])$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be a lowercase DNS-style name (a-z, 0-9, '-', '.'; at most 63 characters)")
    return v


def _sha256(v: str | None) -> str | None:
    if v is None:
        return None
    v = v.lower().removeprefix("sha256:")
    if not _HEX.match(v):
        raise ValueError("must be 64 hex digits (optionally prefixed with 'sha256:')")
    return v


def _url(v: str) -> str:
    u = urlparse(v)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return v


class Metadata(_Strict):
    name: str
    version: str = Field(min_length=1, max_length=128)
    sequence: int = Field(ge=0, description="integer that only goes up between releases of the same bundle")
    description: str | None = None
    expires: str | None = Field(None, description="RFC 3339 time or a duration from build time: 90d, 12w, 36h")

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", v):
            raise ValueError("letters, digits and . _ + - only")
        return v

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: str | None) -> str | None:
        if v is None or _DURATION.match(v):
            return v
        from datetime import datetime
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an RFC 3339 time (2027-01-31T00:00:00Z) or a duration (90d, 12w, 36h)") from None
        return v


class ImageSpec(_Strict):
    ref: str
    platforms: list[str] | None = Field(None, description="override the bundle's platforms for this image")
    allPlatforms: bool | None = Field(None, description="carry every child of a multi-platform image (no "
                                                        "platform filter): `skopeo copy --all` works on site")

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str) -> str:
        try:
            Reference.parse(v.removeprefix("docker-daemon:"))
        except UsageError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("platforms")
    @classmethod
    def _plats(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            if not _PLATFORM.match(p):
                raise ValueError(f"{p!r} is not os/arch[/variant]")
        return v

    @model_validator(mode="after")
    def _all_or_some(self) -> ImageSpec:
        if self.allPlatforms and self.platforms is not None:
            raise ValueError(f"{self.ref}: give either platforms or allPlatforms: true, not both")
        if self.allPlatforms and self.ref.startswith("docker-daemon:"):
            raise ValueError(f"{self.ref}: allPlatforms needs a registry image (a docker-daemon: image has one "
                             "platform)")
        return self

    @property
    def reference(self) -> Reference:
        return Reference.parse(self.ref.removeprefix("docker-daemon:"))


class ChartSpec(_Strict):
    name: str
    version: str = Field(min_length=1)
    ref: str | None = Field(None, description="oci://registry/path/chart")
    repo: str | None = Field(None, description="classic Helm repository URL (serves index.yaml)")
    chart: str | None = Field(None, description="the chart's name in `repo` when it differs from `name` "
                                                "(istio's `base` as `istio-base`)")
    sha256: str | None = Field(None, description="pin of the chart .tgz")
    # how the agent installs it (issue 4 extends this)
    release: str | None = None
    namespace: str | None = None
    values: dict[str, Any] = {}

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))
    _s = field_validator("sha256")(classmethod(lambda cls, v: _sha256(v)))

    @field_validator("ref")
    @classmethod
    def _oci(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith("oci://"):
            raise ValueError("must start with oci://")
        try:
            r = Reference.parse(v)
        except UsageError as e:
            raise ValueError(str(e)) from None
        if r.tag != "latest" or r.digest:
            raise ValueError("give the chart version in 'version', not as a tag or digest in 'ref'")
        return v

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        return None if v is None else _url(v)

    @model_validator(mode="after")
    def _one_source(self) -> ChartSpec:
        if (self.ref is None) == (self.repo is None):
            raise ValueError("give exactly one of 'ref' (oci://…) or 'repo' (https://… classic repository)")
        if self.chart and self.ref:
            raise ValueError("'chart' names a chart in a classic 'repo'; an oci:// ref already names it")
        return self

    @property
    def chart_name(self) -> str:
        return self.chart or self.name

    @property
    def oci_reference(self) -> Reference:
        assert self.ref
        r = Reference.parse(self.ref)
        return Reference(r.registry, r.repository, self.version.replace("+", "_"))  # tags cannot hold '+' (helm)


class _Sourced(_Strict):
    name: str
    url: str | None = None
    path: str | None = None
    sha256: str | None = None

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))
    _s = field_validator("sha256")(classmethod(lambda cls, v: _sha256(v)))
    _u = field_validator("url")(classmethod(lambda cls, v: None if v is None else _url(v)))

    @model_validator(mode="after")
    def _one_source(self) -> _Sourced:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of 'url' or 'path'")
        return self

    @property
    def filename(self) -> str:
        src = self.url or self.path or ""
        return Path(urlparse(src).path).name or self.name


class ManifestSpec(_Sourced):
    """Kubernetes YAML applied by the agent (issue 4 adds ordering/deploy options)."""


class FileSpec(_Sourced):
    """An arbitrary file served by the agent at ``/files/<name>/<filename>``."""

    filename_: str | None = Field(None, alias="filename")
    size: int | None = Field(None, ge=0)  # with sha256: `build --direct` can place it before downloading

    @property
    def filename(self) -> str:
        return self.filename_ or super().filename


class ModelFileSpec(_Strict):
    path: str
    sha256: str | None = None
    size: int | None = Field(None, ge=0)

    _s = field_validator("sha256")(classmethod(lambda cls, v: _sha256(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in v:
            raise ValueError("must be a relative path inside the model (no '..', no leading '/')")
        return v


class ModelSpec(_Strict):
    name: str
    base_url: str | None = Field(None, description="URL prefix; each file is fetched from base_url + path")
    path: str | None = Field(None, description="local directory holding the files")
    files: list[ModelFileSpec] = Field(min_length=1)

    _n = field_validator("name")(classmethod(lambda cls, v: _name(v)))

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _url(v)
        return v if v.endswith("/") else v + "/"

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.base_url is None) == (self.path is None):
            raise ValueError("give exactly one of 'base_url' or 'path'")
        seen: set[str] = set()
        for f in self.files:
            if f.path in seen:
                raise ValueError(f"file {f.path!r} listed twice")
            seen.add(f.path)
        return self


class BuildVar(_Strict):
    """A build input only the operator knows (``--set NAME=VALUE``), used as ``${vars.NAME}``."""

    description: str = ""
    default: str | None = None
    example: str | None = Field(None, description="what `lint` substitutes when no value is given")


class BundleSpec(_Strict):
    apiVersion: Literal["hydra-bundle/v1"]
    kind: Literal["BundleSpec"]
    metadata: Metadata
    platforms: list[str] = ["linux/amd64"]
    images: list[ImageSpec] = []
    charts: list[ChartSpec] = []
    manifests: list[ManifestSpec] = []
    files: list[FileSpec] = []
    models: list[ModelSpec] = []
    deploy: DeploySpec | None = None  # the agent's apply steps, in order (spec/deploy.py)
    vars: dict[str, BuildVar] = {}
    requirements: Requirements | None = None  # what the site must offer; the agent's preflight checks it

    _path: Path | None = PrivateAttr(None)
    _raw: bytes = PrivateAttr(b"")
    _examples_used: list[str] = PrivateAttr(default_factory=list)
    _lines: Any = PrivateAttr(None)  # YAML positions, for tools that report on the spec (lint)

    @field_validator("platforms")
    @classmethod
    def _plats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one platform")
        for p in v:
            if not _PLATFORM.match(p):
                raise ValueError(f"{p!r} is not os/arch[/variant]")
        return v

    def cross_checks(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that span items (duplicates), as (location, message) so the loader can name the line."""
        out: list[tuple[tuple[str | int, ...], str]] = []
        for section in ("charts", "manifests", "files", "models"):
            seen: dict[str, int] = {}
            for i, item in enumerate(getattr(self, section)):
                if item.name in seen:
                    first = f"{section}[{seen[item.name]}]"
                    out.append(((section, i, "name"), f"name {item.name!r} already used by {first}"))
                seen.setdefault(item.name, i)
        refs: dict[str, int] = {}
        for i, img in enumerate(self.images):
            name = site_name(str(img.reference))  # one name on the site: the tag (or digest) it is served under
            key = f"{name.repository}:{name.tag}" if name.tag else f"{name.repository}@{name.digest}"
            if key in refs:
                out.append((("images", i, "ref"), f"{img.ref!r} is served as {key}, like images[{refs[key]}]"))
            refs.setdefault(key, i)
        if self.deploy is not None:
            out += self.deploy.cross_checks({m.name for m in self.manifests}, {c.name for c in self.charts},
                                            {m.name for m in self.models})
        if self.requirements is not None:
            out += self.requirements.cross_checks({m.name for m in self.models})
        return out

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def local_path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.base_dir / q
