"""The one table of Kubernetes kinds hydra-bundle knows: which are built in (a manifest may use them without
shipping a CRD), their usual apiVersion (``wait_for`` targets may omit it), and the order to apply them in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    api_version: str      # the usual (preferred) version
    kind: str
    builtin: bool = True  # False: a custom resource, which needs its CRD on the server

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""


_ORDERED = (  # Helm's install order, CRDs first; every other kind is applied after these
    Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition"), Kind("v1", "Namespace"),
    Kind("networking.k8s.io/v1", "NetworkPolicy"), Kind("v1", "ResourceQuota"), Kind("v1", "LimitRange"),
    Kind("policy/v1beta1", "PodSecurityPolicy"), Kind("policy/v1", "PodDisruptionBudget"),
    Kind("v1", "ServiceAccount"), Kind("v1", "Secret"), Kind("v1", "ConfigMap"),
    Kind("storage.k8s.io/v1", "StorageClass"), Kind("v1", "PersistentVolume"), Kind("v1", "PersistentVolumeClaim"),
    Kind("rbac.authorization.k8s.io/v1", "ClusterRole"), Kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    Kind("rbac.authorization.k8s.io/v1", "Role"), Kind("rbac.authorization.k8s.io/v1", "RoleBinding"),
    Kind("v1", "Service"), Kind("apps/v1", "DaemonSet"), Kind("v1", "Pod"), Kind("v1", "ReplicationController"),
    Kind("apps/v1", "ReplicaSet"), Kind("apps/v1", "Deployment"), Kind("autoscaling/v2", "HorizontalPodAutoscaler"),
    Kind("apps/v1", "StatefulSet"), Kind("batch/v1", "Job"), Kind("batch/v1", "CronJob"),
    Kind("networking.k8s.io/v1", "IngressClass"), Kind("networking.k8s.io/v1", "Ingress"),
    Kind("apiregistration.k8s.io/v1", "APIService"), Kind("scheduling.k8s.io/v1", "PriorityClass"),
    Kind("node.k8s.io/v1", "RuntimeClass"), Kind("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
    Kind("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
)
_OTHERS = (
    Kind("v1", "Endpoints"), Kind("v1", "Node"), Kind("v1", "List"), Kind("apps/v1", "ControllerRevision"),
    Kind("storage.k8s.io/v1", "CSIDriver"), Kind("storage.k8s.io/v1", "CSINode"),
    Kind("storage.k8s.io/v1", "VolumeAttachment"),
    Kind("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
    Kind("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
    Kind("coordination.k8s.io/v1", "Lease"), Kind("discovery.k8s.io/v1", "EndpointSlice"),
    Kind("certificates.k8s.io/v1", "CertificateSigningRequest"),
    Kind("flowcontrol.apiserver.k8s.io/v1", "FlowSchema"),
    Kind("flowcontrol.apiserver.k8s.io/v1", "PriorityLevelConfiguration"),
    # custom resources the Hydra bundles use (their CRDs ship in the bundle)
    Kind("gateway.networking.k8s.io/v1", "Gateway", builtin=False),
    Kind("gateway.networking.k8s.io/v1", "HTTPRoute", builtin=False),
    Kind("dataset.baizeai.io/v1alpha1", "Dataset", builtin=False),
    Kind("metallb.io/v1beta1", "IPAddressPool", builtin=False),
    Kind("metallb.io/v1beta1", "L2Advertisement", builtin=False),
)
KINDS = _ORDERED + _OTHERS

BUILTIN: frozenset[tuple[str, str]] = frozenset((k.group, k.kind) for k in KINDS if k.builtin)
"""(API group, kind) of every built-in kind (``lint``: anything else needs a CRD in the bundle)."""

_RANK = {k.kind: i for i, k in enumerate(_ORDERED)}
_VERSION = {k.kind: k.api_version for k in KINDS}


def apply_rank(kind: str) -> int:
    """Position in the install order; kinds not in it (custom resources) come last."""
    return _RANK.get(kind, len(_ORDERED))


def default_api_version(kind: str) -> str | None:
    """The usual apiVersion of a kind by name, or None when hydra-bundle does not know it."""
    return _VERSION.get(kind)
