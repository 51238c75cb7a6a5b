"""Kubernetes objects as data: identity keys, our ownership labels and annotations, apply order, and the pod
specs inside workloads."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .kinds import apply_rank

FIELD_MANAGER = "hydra-bundle"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "hydra-bundle"
BUNDLE_LABEL = "hydra-bundle.io/bundle"
# On Helm releases (Helm copies release labels onto its storage Secrets, so they must not look like our objects,
# or object prune would delete the release records).
RELEASE_LABEL = "hydra-bundle.io/release-of"
VERSION_ANNOTATION = "hydra-bundle.io/version"
DIGEST_ANNOTATION = "hydra-bundle.io/digest"
CRD_KIND = "CustomResourceDefinition"

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
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})  # waited for: rollout complete


@dataclass(frozen=True)
class BundleInfo:
    """The bundle that owns what it applies: its name labels every object, version and digest annotate it."""

    name: str
    version: str
    digest: str = ""      # the index digest (or spec digest)


@dataclass(frozen=True, order=True)
class ObjKey:
    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


def api_group(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def key_of(obj: dict[str, Any]) -> ObjKey:
    md = obj.get("metadata") or {}
    return ObjKey(api_group(str(obj.get("apiVersion", ""))), str(obj.get("kind", "")),
                  str(md.get("namespace") or ""), str(md.get("name", "")))


def kind_rank(obj: dict[str, Any]) -> int:
    return apply_rank(str(obj.get("kind")))


def sort_for_apply(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stable sort by the install order of :mod:`.kinds` (within a kind, the order of the manifests)."""
    return sorted(objs, key=kind_rank)


def mark_ours(obj: dict[str, Any], bundle: BundleInfo) -> dict[str, Any]:
    """A copy with our labels and annotations."""
    out = copy.deepcopy(obj)
    md = out.setdefault("metadata", {})
    labels = md.get("labels") or {}
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    labels[BUNDLE_LABEL] = bundle.name
    md["labels"] = labels
    ann = md.get("annotations") or {}
    ann[VERSION_ANNOTATION] = bundle.version
    if bundle.digest:
        ann[DIGEST_ANNOTATION] = bundle.digest
    md["annotations"] = ann
    return out


def is_ours(obj: dict[str, Any], bundle_name: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(BUNDLE_LABEL) == bundle_name


def bundle_selector(bundle_name: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{BUNDLE_LABEL}={bundle_name}"


def namespace_object(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def content(obj: dict[str, Any]) -> dict[str, Any]:
    """What an apply can change: everything but status and server bookkeeping."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("resourceVersion", "managedFields", "generation")}
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


def fill_list_keys(obj: dict[str, Any]) -> None:
    """Set ``protocol: TCP`` (the API default) on Service ports and container ports that omit it: older servers
    answer server-side apply with HTTP 500 "associative list with keys has an element that omits key field
    protocol" because ``protocol`` is part of those lists' merge key."""
    def fill(ports: Any) -> None:
        for p in ports if isinstance(ports, list) else []:
            if isinstance(p, dict) and "protocol" not in p:
                p["protocol"] = "TCP"

    if obj.get("kind") == "Service" and api_group(str(obj.get("apiVersion", ""))) == "":
        fill((obj.get("spec") or {}).get("ports"))
    spec, _ = pod_spec(obj)
    if spec is not None:
        for lst in CONTAINER_LISTS:
            for c in spec.get(lst) or []:
                if isinstance(c, dict):
                    fill(c.get("ports"))
