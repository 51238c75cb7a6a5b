"""One rule for an image's name on the site: the upstream registry host stays in the repository path.

``ghcr.io/example/app:1.0`` is served (and pushed, and rewritten into manifests) as ``ghcr.io/example/app``,
``ubuntu:24.04`` and ``registry-1.docker.io/library/ubuntu`` as ``docker.io/library/ubuntu``: two registries'
images with the same path can never replace each other, and every spelling of one image gets one name. The
artifacts hydra-bundle makes itself (``hydra-bundle/manifests/…``, ``charts/<name>`` for charts from classic
repositories) have no upstream registry and keep their name; they cannot collide with an upstream name, whose first
component is always a host (it has a dot or a port, or is ``localhost``). A port is written ``_PORT``
(``127.0.0.1:5000/app`` → ``127.0.0.1_5000/app``): a colon is not allowed in a repository path, an underscore is
never part of a host name, so the mapping is one-to-one and every client accepts the result.

What a client asks for is mapped back with :func:`lookup_repository`. containerd through the ``hosts.toml`` that
``agent mirror-config`` writes asks ``/v2/<host>/<path>`` (``override_path``) and adds ``?ns=<host>``; a
hand-written mirror without the path asks ``/v2/<path>?ns=<host>``; CRI-O/podman through the drop-in and direct
pulls (``SITE/docker.io/library/ubuntu:24.04``) ask the full name. All of them reach the same row, and a name the
bundle does not carry is never answered with another registry's image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .reference import DEFAULT_REGISTRY, Reference

_TAG_BAD = re.compile(r"[^\w.-]")
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class SiteName:
    """Where one component is on the site: repository path (no site host or prefix), tag, digest."""

    repository: str
    tag: str | None
    digest: str | None


_PORTED = re.compile(r"^[a-z0-9.-]+_[0-9]{1,5}$")


def is_host(component: str) -> bool:
    """Whether the first component of a repository path names a registry host: the Docker rule (a dot, a port,
    ``localhost``), with a port also in its path spelling ``host_PORT``."""
    return "." in component or ":" in component or component == "localhost" or bool(_PORTED.match(component))


def normalize_host(host: str) -> str:
    """A registry host as a repository path component: lower case, Docker Hub's aliases as ``docker.io``,
    ``:PORT`` as ``_PORT``."""
    host = host.strip().lower()
    if host in DOCKER_HUB_ALIASES:
        return DEFAULT_REGISTRY
    return host.replace(":", "_")


def site_tag(tag: str) -> str:
    """A tag as the registry can hold it: chart versions ``1.0.0+build`` → ``1.0.0_build`` (what helm push does)."""
    return _TAG_BAD.sub("_", tag)[:128]


def image_repository(ref: str | Reference) -> str:
    """``host/path`` of an upstream image or OCI chart (``docker.io/library/`` for Docker Hub short names)."""
    r = ref if isinstance(ref, Reference) else Reference.parse(ref.removeprefix("docker-daemon:"))
    return f"{normalize_host(r.registry)}/{r.repository}"


def site_name(ref: str, kind: str = "images") -> SiteName:
    """The site name of a bundle component's reference. Images are parsed as Docker does (``docker.io/library/``
    for short names). Other kinds keep their path and tag as written (a chart version such as ``1.0.0+build``
    is no image tag): an OCI chart's host is normalized like an image's; a reference without a host is an
    artifact hydra-bundle made (manifests, files, models, the agent kit, charts from classic repositories)."""
    s = ref.removeprefix("oci://").removeprefix("docker-daemon:")
    if kind == "images":
        r = Reference.parse(s)
        written_tag = ":" in s.split("@", 1)[0].rsplit("/", 1)[-1]
        return SiteName(image_repository(r), site_tag(r.tag) if r.tag and written_tag else None, r.digest)
    digest = None
    if "@" in s:
        s, digest = s.split("@", 1)
    head, _, last = s.rpartition("/")
    tag = None
    if ":" in last:
        last, tag = last.split(":", 1)
        s = f"{head}/{last}" if head else last
    first, _, rest = s.partition("/")
    if rest and is_host(first):
        s = f"{normalize_host(first)}/{rest}"
    return SiteName(s.lower(), site_tag(tag) if tag else None, digest)


def lookup_repository(path: str, ns: str | None) -> str:
    """The repository a request names: ``path`` as asked (``/v2/<path>/…``), ``ns`` containerd's ``?ns=`` query
    parameter (the upstream host of a mirrored pull). With ``ns`` the name is always on that host (the path may
    repeat it, as our ``override_path`` mirrors do; ``library/`` is added for Docker Hub short names). Without
    it, a path that starts with a host is a full name, anything else an internal one."""
    first, _, rest = path.partition("/")
    if ns:
        host = normalize_host(ns)
        if rest and is_host(first) and normalize_host(first) == host:
            path = rest             # /v2/<host>/<path>?ns=<host>: our hosts.toml (override_path)
        if host == DEFAULT_REGISTRY and "/" not in path:
            path = f"library/{path}"
        return f"{host}/{path}"     # another host in the path is part of this registry's path, never a redirect
    if rest and is_host(first):
        host = normalize_host(first)
        return f"{host}/library/{rest}" if host == DEFAULT_REGISTRY and "/" not in rest else f"{host}/{rest}"
    return path
