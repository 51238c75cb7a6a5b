"""Image references → the site registry (manifests, chart values, where charts are published).

Names are the site names of ``oci/sitename.py``, the one rule the agent publishes, pushes and mirrors by: the
upstream host stays in the path. ``release.daocloud.io/hydra/vllm-openai:T`` →
``SITE/release.daocloud.io/hydra/vllm-openai:T``, ``ubuntu:24.04`` → ``SITE/docker.io/library/ubuntu:24.04``.
``SITE`` is ``host[:port][/prefix]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..k8s.objects import CONTAINER_LISTS, pod_spec
from ..oci.reference import Reference
from ..oci.sitename import image_repository


@dataclass(frozen=True)
class ImageChange:
    path: str       # spec.template.spec.containers[0].image
    old: str
    new: str


def site_repository(ref: str | Reference, prefix: str = "") -> str:
    """Repository path in the site registry: the image's site name (its host, then its path), under ``prefix``
    when the site registry has one."""
    repo = image_repository(ref)
    return f"{prefix.strip('/')}/{repo}" if prefix.strip("/") else repo


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


PULL_SECRET = "hydra-bundle-registry"


def add_pull_secret(obj: dict[str, Any]) -> bool:
    """Reference the site registry's pull Secret from a workload's pod spec (``site.registry_auth``)."""
    spec, _ = pod_spec(obj)
    if spec is None:
        return False
    refs = spec.setdefault("imagePullSecrets", [])
    if not any(isinstance(r, dict) and r.get("name") == PULL_SECRET for r in refs):
        refs.append({"name": PULL_SECRET})
    return True


def pull_secret(namespace: str, dockerconfigjson: bytes) -> dict[str, Any]:
    import base64

    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": PULL_SECRET, "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(dockerconfigjson).decode()}}


def chart_site_repository(source: str, name: str, prefix: str = "") -> str:
    """Where the agent publishes a chart in the site registry: an ``oci://`` chart under its site name (host and
    path); a chart from a classic repository goes to ``charts/<name>``."""
    if source.startswith("oci://"):
        return site_repository(Reference.parse(source), prefix)
    p = prefix.strip("/")
    return f"{p}/charts/{name}" if p else f"charts/{name}"
