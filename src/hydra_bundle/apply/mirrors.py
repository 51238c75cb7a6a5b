"""Registry-mirror snippets for the nodes: containerd ``hosts.toml`` per upstream registry and a CRI-O/podman
``registries.conf.d`` drop-in, so every upstream registry of the published images resolves to the site registry."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from ..oci.reference import DEFAULT_REGISTRY, Reference
from ..oci.sitename import normalize_host

CONTAINERD_DIR = "/etc/containerd/certs.d"
CRIO_FILE = "/etc/containers/registries.conf.d/50-hydra-bundle.conf"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:\d{1,5})?$")


@dataclass(frozen=True)
class Endpoint:
    """A registry nodes pull from: ``HOST[:PORT][/PREFIX]`` and how it is reached (``http``/``https``)."""

    registry: str
    scheme: str

    @property
    def host(self) -> str:
        return self.registry.partition("/")[0]


def upstream_registries(refs: Iterable[str]) -> list[str]:
    """Distinct registry hosts of image references (``docker.io`` for short names), sorted."""
    out = set()
    for ref in refs:
        out.add(Reference.parse(ref.removeprefix("docker-daemon:")).registry)
    return sorted(out)


def _upstream_server(registry: str) -> str:
    return "https://registry-1.docker.io" if registry == DEFAULT_REGISTRY else f"https://{registry}"


CA_FILE = "hydra-bundle-ca.crt"    # beside each hosts.toml: the site CA the agent's registry certificate is from


def containerd_hosts_toml(upstream: str, site_registry: str, scheme: str = "http", skip_verify: bool = False,
                          ca: bool = False, authorization: str | None = None,
                          fallbacks: Sequence[Endpoint] = ()) -> str:
    """``/etc/containerd/certs.d/<upstream>/hosts.toml``: try the site registry first, then upstream.

    The mirror's path names the upstream host (``/v2/[PREFIX/]<host>``, ``override_path``), as every site name
    does: a pull of ``quay.io/pause`` asks for ``quay.io/pause`` and never gets ``registry.k8s.io/pause``.
    ``fallbacks`` (more agents serving the same bundles) get a ``[host]`` entry each after the site registry's:
    containerd tries the hosts in file order and the upstream ``server`` last."""
    endpoints = [Endpoint(site_registry, scheme), *fallbacks]
    lines = [
        "# written by hydra-bundle: pull through the site registry (needs containerd's registry config_path =",
        '# "/etc/containerd/certs.d" in the CRI plugin config)',
    ]
    if fallbacks:
        lines.append("# hosts are tried in this order, the upstream server last: "
                     + ", ".join(e.registry for e in endpoints))
    lines.append(f'server = "{_upstream_server(upstream)}"')
    for e in endpoints:
        lines += ["", *_host_entry(upstream, e, skip_verify, ca, authorization)]
    return "\n".join(lines) + "\n"


def _host_entry(upstream: str, e: Endpoint, skip_verify: bool, ca: bool, authorization: str | None) -> list[str]:
    host, _, prefix = e.registry.partition("/")
    path = "/".join(p for p in (prefix.strip("/"), normalize_host(upstream)) if p)
    lines = [
        f'[host."{e.scheme}://{host}/v2/{path}"]',
        '  capabilities = ["pull", "resolve"]',
        "  override_path = true",
    ]
    if skip_verify and e.scheme == "https":
        lines.append("  skip_verify = true")
    elif ca and e.scheme == "https":
        lines.append(f'  ca = "{CONTAINERD_DIR}/{upstream}/{CA_FILE}"')
    if authorization:  # site.registry_auth: the pull credentials (keep the file readable by root only)
        lines += [f'  [host."{e.scheme}://{host}/v2/{path}".header]', f'    authorization = "{authorization}"']
    return lines


def mirror_config(upstreams: Iterable[str], site_registry: str, scheme: str = "http",
                  skip_verify: bool = False, ca_pem: bytes | None = None,
                  authorization: str | None = None, fallbacks: Sequence[Endpoint] = ()) -> dict[str, str]:
    """containerd ``hosts.toml`` per upstream registry: file path → content (one file per upstream)."""
    out: dict[str, str] = {}
    own = {site_registry.partition("/")[0], *(e.host for e in fallbacks)}
    for up in sorted(set(upstreams)):
        if up in own:
            continue
        out[f"{CONTAINERD_DIR}/{up}/hosts.toml"] = containerd_hosts_toml(up, site_registry, scheme, skip_verify,
                                                                        ca_pem is not None, authorization,
                                                                        fallbacks)
        if ca_pem is not None and not skip_verify and any(e.scheme == "https" for e in
                                                           [Endpoint(site_registry, scheme), *fallbacks]):
            out[f"{CONTAINERD_DIR}/{up}/{CA_FILE}"] = ca_pem.decode()
    return out


def crio_registries_conf(upstreams: Iterable[str], site_registry: str, scheme: str = "http",
                         skip_verify: bool = False, fallbacks: Sequence[Endpoint] = ()) -> str:
    """A ``/etc/containers/registries.conf.d/`` drop-in (CRI-O, podman): the site registry mirrors each upstream
    (``fallbacks`` after it: containers/image tries the mirrors in order, then the upstream location)."""
    endpoints = [Endpoint(site_registry, scheme), *fallbacks]
    own = {e.host for e in endpoints}
    lines = ["# written by hydra-bundle: /etc/containers/registries.conf.d/50-hydra-bundle.conf"]
    for up in sorted(set(upstreams)):
        if up in own:
            continue
        lines += ["", "[[registry]]", f'prefix = "{up}"', f'location = "{up}"']
        for e in endpoints:
            lines += ["", "[[registry.mirror]]", f'location = "{e.registry.rstrip("/")}/{normalize_host(up)}"']
            if e.scheme == "http" or skip_verify:
                lines.append("insecure = true")
    return "\n".join(lines) + "\n"


def site_mirror_files(image_refs: Iterable[str], site_registry: str, scheme: str = "http",
                      skip_verify: bool = False, ca_pem: bytes | None = None,
                      authorization: str | None = None, fallbacks: Sequence[Endpoint] = ()) -> dict[str, str]:
    """Everything ``agent mirror-config`` prints for a bundle: one containerd ``hosts.toml`` per upstream registry
    of its images, and the CRI-O/podman drop-in. Path → content. ``fallbacks``: more registries serving the same
    bundles (other agents), tried in order after ``site_registry``."""
    ups = upstream_registries(image_refs)
    out = mirror_config(ups, site_registry, scheme, skip_verify, ca_pem, authorization, fallbacks)
    out[CRIO_FILE] = crio_registries_conf(ups, site_registry, scheme, skip_verify, fallbacks)
    if ca_pem is not None and not skip_verify:  # CRI-O and podman trust it from here
        for e in [Endpoint(site_registry, scheme), *fallbacks]:
            if e.scheme == "https":
                out.setdefault(f"/etc/containers/certs.d/{e.host}/ca.crt", ca_pem.decode())
    return out


def parse_endpoints(values: Sequence[str], default_scheme: str, what: str = "--endpoint") -> list[Endpoint]:
    """``--endpoint`` (or ``site.registry_mirrors``: ``what``) values (``[SCHEME://]HOST[:PORT][/PREFIX]``, in the
    order to try them) → endpoints; a value without a scheme takes ``default_scheme`` (``site.registry_scheme``).
    Bad or repeated values are a :class:`UsageError`."""
    out: list[Endpoint] = []
    for raw in values:
        v = raw.strip()
        scheme = default_scheme
        m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", v)
        if m:
            scheme = m.group(1).lower()
            if scheme not in ("http", "https"):
                raise UsageError(f"{what} {raw!r}: the scheme must be http or https")
            v = v[m.end():]
        v = v.rstrip("/")
        host = v.partition("/")[0]
        if not host or any(c.isspace() for c in v) or "?" in v or "#" in v or "@" in host \
                or not _HOST.match(host):
            raise UsageError(f"{what} {raw!r}: expected [http(s)://]HOST[:PORT][/PREFIX], e.g. 10.0.0.6:5000")
        e = Endpoint(v, scheme)
        if any(o.registry == e.registry for o in out):
            raise UsageError(f"{what} {raw!r} is given twice")
        out.append(e)
    return out
