"""Image references → the site registry, and registry-mirror snippets for containerd and CRI-O.

The site registry keeps each repository's path without the original host (the agent publishes that way, and
containerd/CRI-O mirrors request exactly that path): ``release.daocloud.io/hydra/vllm-openai:T`` →
``SITE/hydra/vllm-openai:T``, ``ubuntu:24.04`` → ``SITE/library/ubuntu:24.04``. ``SITE`` is
``host[:port][/prefix]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..oci.reference import DEFAULT_REGISTRY, Reference

# kind → (allowed API groups, path to the PodSpec)
_POD_SPEC_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Pod": (("",), ("spec",)),
    "PodTemplate": (("",), ("template", "spec")),
    "ReplicationController": (("",), ("spec", "template", "spec")),
    "Deployment": (("apps", "extensions"), ("spec", "template", "spec")),
    "StatefulSet": (("apps",), ("spec", "template", "spec")),
    "DaemonSet": (("apps", "extensions"), ("spec", "template", "spec")),
    "ReplicaSet": (("apps", "extensions"), ("spec", "template", "spec")),
    "Job": (("batch",), ("spec", "template", "spec")),
    "CronJob": (("batch",), ("spec", "jobTemplate", "spec", "template", "spec")),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
CONTAINERD_DIR = "/etc/containerd/certs.d"
CRIO_FILE = "/etc/containers/registries.conf.d/50-hydra-bundle.conf"


@dataclass(frozen=True)
class ImageChange:
    path: str       # spec.template.spec.containers[0].image
    old: str
    new: str


def api_group(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def site_repository(ref: str | Reference, prefix: str = "") -> str:
    """Repository path in the site registry: the original path without its host (``library/`` for Docker Hub
    short names), under ``prefix`` when the site registry has one."""
    r = ref if isinstance(ref, Reference) else Reference.parse(ref.removeprefix("docker-daemon:"))
    return f"{prefix.strip('/')}/{r.repository}" if prefix.strip("/") else r.repository


def rewrite_image(ref: str, site_registry: str) -> str:
    """``ref`` as pulled from ``site_registry`` (``host[:port][/prefix]``). The tag is kept only if it was
    written (``repo`` stays a bare repository, for chart values like ``image.repository``); a digest is kept."""
    host, _, prefix = site_registry.partition("/")
    try:
        r = Reference.parse(ref)
    except UsageError as e:
        raise UsageError(f"cannot rewrite image {ref!r}: {e}") from None
    if r.registry == host and (not prefix or r.repository.startswith(prefix.strip("/") + "/")):
        return ref  # already on the site registry
    out = f"{host}/{site_repository(r, prefix)}"
    name_part = ref.split("@", 1)[0].rsplit("/", 1)[-1]
    if ":" in name_part and r.tag:
        out += f":{r.tag}"
    if r.digest:
        out += f"@{r.digest}"
    return out


def pod_spec(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The PodSpec inside a workload object (and its path), or (None, '') for other kinds."""
    kind = obj.get("kind", "")
    entry = _POD_SPEC_PATHS.get(kind)
    if entry is None or api_group(str(obj.get("apiVersion", ""))) not in entry[0]:
        return None, ""
    node: Any = obj
    for p in entry[1]:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return None, ""
    return (node, ".".join(entry[1])) if isinstance(node, dict) else (None, "")


def workload_images(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, image) of every container, init container and ephemeral container of a workload."""
    spec, base = pod_spec(obj)
    out: list[tuple[str, str]] = []
    if spec is None:
        return out
    for lst in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(lst) or []):
            if isinstance(c, dict) and isinstance(c.get("image"), str):
                out.append((f"{base}.{lst}[{i}].image", c["image"]))
    return out


def rewrite_workload_images(obj: dict[str, Any], site_registry: str) -> list[ImageChange]:
    """Rewrite, in place, every image of a workload to the site registry; returns what changed."""
    spec, base = pod_spec(obj)
    changes: list[ImageChange] = []
    if spec is None:
        return changes
    for lst in CONTAINER_LISTS:
        for i, c in enumerate(spec.get(lst) or []):
            if not isinstance(c, dict) or not isinstance(c.get("image"), str):
                continue
            new = rewrite_image(c["image"], site_registry)
            if new != c["image"]:
                changes.append(ImageChange(f"{base}.{lst}[{i}].image", c["image"], new))
                c["image"] = new
    return changes


# ---------------------------------------------------------------- mirrors

def upstream_registries(refs: Iterable[str]) -> list[str]:
    """Distinct registry hosts of image references (``docker.io`` for short names), sorted."""
    out = set()
    for ref in refs:
        out.add(Reference.parse(ref.removeprefix("docker-daemon:")).registry)
    return sorted(out)


def _upstream_server(registry: str) -> str:
    return "https://registry-1.docker.io" if registry == DEFAULT_REGISTRY else f"https://{registry}"


def containerd_hosts_toml(upstream: str, site_registry: str, scheme: str = "http", skip_verify: bool = False) -> str:
    """``/etc/containerd/certs.d/<upstream>/hosts.toml``: try the site registry first, then upstream."""
    host, _, prefix = site_registry.partition("/")
    lines = [
        "# written by hydra-bundle: pull through the site registry (needs containerd's registry config_path =",
        '# "/etc/containerd/certs.d" in the CRI plugin config)',
        f'server = "{_upstream_server(upstream)}"',
        "",
    ]
    if prefix:
        lines.append(f'[host."{scheme}://{host}/v2/{prefix.strip("/")}"]')
        lines.append('  capabilities = ["pull", "resolve"]')
        lines.append("  override_path = true")
    else:
        lines.append(f'[host."{scheme}://{host}"]')
        lines.append('  capabilities = ["pull", "resolve"]')
    if skip_verify and scheme == "https":
        lines.append("  skip_verify = true")
    return "\n".join(lines) + "\n"


def mirror_config(upstreams: Iterable[str], site_registry: str, scheme: str = "http",
                  skip_verify: bool = False) -> dict[str, str]:
    """containerd ``hosts.toml`` per upstream registry: file path → content (one file per upstream)."""
    out: dict[str, str] = {}
    for up in sorted(set(upstreams)):
        if up == site_registry.partition("/")[0]:
            continue
        out[f"{CONTAINERD_DIR}/{up}/hosts.toml"] = containerd_hosts_toml(up, site_registry, scheme,
                                                                                skip_verify)
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
                  f'location = "{site_registry}"']
        if insecure:
            lines.append("insecure = true")
    return "\n".join(lines) + "\n"


def chart_site_repository(source: str, name: str, prefix: str = "") -> str:
    """Where the agent publishes a chart in the site registry: an ``oci://`` chart keeps its path without the
    host; a chart from a classic repository goes to ``charts/<name>``."""
    if source.startswith("oci://"):
        return site_repository(Reference.parse(source), prefix)
    p = prefix.strip("/")
    return f"{p}/charts/{name}" if p else f"charts/{name}"


def site_mirror_files(image_refs: Iterable[str], site_registry: str, scheme: str = "http",
                      skip_verify: bool = False) -> dict[str, str]:
    """Everything ``agent mirror-config`` prints for a bundle: one containerd ``hosts.toml`` per upstream registry
    of its images, and the CRI-O/podman drop-in. Path → content."""
    ups = upstream_registries(image_refs)
    out = mirror_config(ups, site_registry, scheme, skip_verify)
    out[CRIO_FILE] = crio_registries_conf(ups, site_registry, scheme, skip_verify)
    return out
