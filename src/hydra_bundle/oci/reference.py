"""Image references, normalized the way Docker/containerd do (``ubuntu`` → ``docker.io/library/ubuntu``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

DEFAULT_REGISTRY = "docker.io"
# distribution/reference grammar, simplified but strict where it matters.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``registry`` is the host as written (docker.io for Docker Hub)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``[host[:port]/]path[:tag][@sha256:hex]``; raise UsageError naming the problem."""
        s = text.strip()
        if s.startswith("oci://"):
            s = s[len("oci://"):]
        if not s:
            raise UsageError("empty image reference")
        digest = None
        if "@" in s:
            s, digest = s.split("@", 1)
            if not DIGEST_RE.match(digest):
                raise UsageError(f"{text!r}: digest must be sha256:<64 lowercase hex>")
        tag = None
        last = s.rsplit("/", 1)[-1]
        if ":" in last:
            s, tag = s.rsplit(":", 1)
            if not _TAG_RE.match(tag):
                raise UsageError(f"{text!r}: invalid tag {tag!r}")
        parts = s.split("/", 1)
        if len(parts) == 2 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            registry, path = parts
            if not _DOMAIN_RE.match(registry):
                raise UsageError(f"{text!r}: invalid registry host {registry!r}")
        else:
            registry, path = DEFAULT_REGISTRY, s
        if registry in ("index.docker.io", "registry-1.docker.io"):
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        if not _PATH_RE.match(path):
            raise UsageError(f"{text!r}: invalid repository path {path!r} (lowercase, digits, . _ - separators)")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def api_host(registry: str) -> str:
    """The host that actually serves the registry API (Docker Hub's API lives elsewhere)."""
    return "registry-1.docker.io" if registry == DEFAULT_REGISTRY else registry
