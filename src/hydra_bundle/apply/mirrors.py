"""Registry-mirror snippets for the nodes: containerd ``hosts.toml`` per upstream registry and a CRI-O/podman
``registries.conf.d`` drop-in, so every upstream registry of the published images resolves to the site registry."""

from __future__ import annotations

from collections.abc import Iterable

from ..oci.reference import DEFAULT_REGISTRY, Reference
from ..oci.sitename import normalize_host

CONTAINERD_DIR = "/etc/containerd/certs.d"
CRIO_FILE = "/etc/containers/registries.conf.d/50-hydra-bundle.conf"


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
                          ca: bool = False, authorization: str | None = None) -> str:
    """``/etc/containerd/certs.d/<upstream>/hosts.toml``: try the site registry first, then upstream.

    The mirror's path names the upstream host (``/v2/[PREFIX/]<host>``, ``override_path``), as every site name
    does: a pull of ``quay.io/pause`` asks for ``quay.io/pause`` and never gets ``registry.k8s.io/pause``."""
    host, _, prefix = site_registry.partition("/")
    path = "/".join(p for p in (prefix.strip("/"), normalize_host(upstream)) if p)
    lines = [
        "# written by hydra-bundle: pull through the site registry (needs containerd's registry config_path =",
        '# "/etc/containerd/certs.d" in the CRI plugin config)',
        f'server = "{_upstream_server(upstream)}"',
        "",
        f'[host."{scheme}://{host}/v2/{path}"]',
        '  capabilities = ["pull", "resolve"]',
        "  override_path = true",
    ]
    if skip_verify and scheme == "https":
        lines.append("  skip_verify = true")
    elif ca and scheme == "https":
        lines.append(f'  ca = "{CONTAINERD_DIR}/{upstream}/{CA_FILE}"')
    if authorization:  # site.registry_auth: the pull credentials (keep the file readable by root only)
        lines += [f'  [host."{scheme}://{host}/v2/{path}".header]', f'    authorization = "{authorization}"']
    return "\n".join(lines) + "\n"


def mirror_config(upstreams: Iterable[str], site_registry: str, scheme: str = "http",
                  skip_verify: bool = False, ca_pem: bytes | None = None,
                  authorization: str | None = None) -> dict[str, str]:
    """containerd ``hosts.toml`` per upstream registry: file path → content (one file per upstream)."""
    out: dict[str, str] = {}
    for up in sorted(set(upstreams)):
        if up == site_registry.partition("/")[0]:
            continue
        out[f"{CONTAINERD_DIR}/{up}/hosts.toml"] = containerd_hosts_toml(up, site_registry, scheme, skip_verify,
                                                                        ca_pem is not None, authorization)
        if ca_pem is not None and scheme == "https" and not skip_verify:
            out[f"{CONTAINERD_DIR}/{up}/{CA_FILE}"] = ca_pem.decode()
    return out


def crio_registries_conf(upstreams: Iterable[str], site_registry: str, scheme: str = "http",
                         skip_verify: bool = False) -> str:
    """A ``/etc/containers/registries.conf.d/`` drop-in (CRI-O, podman): the site registry mirrors each upstream."""
    insecure = scheme == "http" or skip_verify
    lines = ["# written by hydra-bundle: /etc/containers/registries.conf.d/50-hydra-bundle.conf"]
    for up in sorted(set(upstreams)):
        if up == site_registry.partition("/")[0]:
            continue
        lines += ["", "[[registry]]", f'prefix = "{up}"', f'location = "{up}"', "", "[[registry.mirror]]",
                  f'location = "{site_registry.rstrip("/")}/{normalize_host(up)}"']
        if insecure:
            lines.append("insecure = true")
    return "\n".join(lines) + "\n"


def site_mirror_files(image_refs: Iterable[str], site_registry: str, scheme: str = "http",
                      skip_verify: bool = False, ca_pem: bytes | None = None,
                      authorization: str | None = None) -> dict[str, str]:
    """Everything ``agent mirror-config`` prints for a bundle: one containerd ``hosts.toml`` per upstream registry
    of its images, and the CRI-O/podman drop-in. Path → content."""
    ups = upstream_registries(image_refs)
    out = mirror_config(ups, site_registry, scheme, skip_verify, ca_pem, authorization)
    out[CRIO_FILE] = crio_registries_conf(ups, site_registry, scheme, skip_verify)
    if ca_pem is not None and scheme == "https" and not skip_verify:  # CRI-O and podman trust it from here
        out[f"/etc/containers/certs.d/{site_registry.partition('/')[0]}/ca.crt"] = ca_pem.decode()
    return out
