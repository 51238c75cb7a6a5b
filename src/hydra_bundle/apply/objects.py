"""Kubernetes objects as data: our ownership labels, identity keys and apply order.

Kept apart from :mod:`.kube` (the client adapter) so planning, status and the CLI can use them without importing
the ``kubernetes`` package (a quarter of a second of start-up)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .base import BundleInfo
from .rewrite import api_group

FIELD_MANAGER = "hydra-bundle"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "hydra-bundle"
BUNDLE_LABEL = "hydra-bundle.io/bundle"
VERSION_ANNOTATION = "hydra-bundle.io/version"
DIGEST_ANNOTATION = "hydra-bundle.io/digest"
GPU_RESOURCE = "nvidia.com/gpu"
CRD_KIND = "CustomResourceDefinition"

# Apply order (Helm's install order, CRDs first); kinds not listed (custom resources) come last.
KIND_ORDER = [
    "CustomResourceDefinition", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet",
    "Pod", "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job",
    "CronJob", "IngressClass", "Ingress", "APIService", "PriorityClass", "RuntimeClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]
_RANK = {k: i for i, k in enumerate(KIND_ORDER)}


@dataclass(frozen=True, order=True)
class ObjKey:
    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"


def key_of(obj: dict[str, Any]) -> ObjKey:
    md = obj.get("metadata") or {}
    return ObjKey(api_group(str(obj.get("apiVersion", ""))), str(obj.get("kind", "")),
                  str(md.get("namespace") or ""), str(md.get("name", "")))


def kind_rank(obj: dict[str, Any]) -> int:
    return _RANK.get(str(obj.get("kind")), len(KIND_ORDER))


def sort_for_apply(objs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stable sort by :data:`KIND_ORDER` (the order within a kind is the order in the manifests)."""
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


def bundle_selector(bundle_name: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{BUNDLE_LABEL}={bundle_name}"
