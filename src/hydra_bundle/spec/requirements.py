"""Schema of the spec's ``requirements:`` section: what a bundle needs of a site beyond what the agent derives from
its deploy steps (APIs of the manifests, storage classes, image platforms). The agent's ``preflight`` step checks
both before any apply step runs::

    requirements:
      kubernetes: "1.25"                    # minimum API server version (major.minor)
      apis: [gateway.networking.k8s.io/v1/Gateway, monitoring.coreos.com/v1]   # group/version[/Kind]
      crds: [datasets.dataset.baizeai.io]   # CustomResourceDefinitions by name
      storage_classes: [nfs-csi]
      architectures: [amd64]                # some schedulable node of each (label kubernetes.io/arch)
      node_memory: 8Gi                      # allocatable memory of the largest schedulable node
      store_free: 20Gi                      # free space on the agent's store after ingest
      models:
        qwen3-0.6b: {memory: 7Gi}           # one node must have this much allocatable memory to serve it (CPU)

Memory and sizes are Kubernetes quantities (``7Gi``, ``7G``, ``512Mi``, bytes).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E|m)?\s*[Bb]?\s*$")
_FACTOR = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
           "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_API = re.compile(r"^(?:[a-z0-9]([a-z0-9.-]*[a-z0-9])?/)?v[0-9]+(?:(?:alpha|beta)[0-9]+)?(?:/[A-Z][A-Za-z0-9]*)?$")
_CRD = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
_VERSION = re.compile(r"^v?([0-9]+)\.([0-9]+)$")
_ARCH = re.compile(r"^[a-z0-9_]+$")


def parse_quantity(v: Any) -> int:
    """A Kubernetes quantity (``7Gi``, ``7G``, ``16331476Ki``, ``1500m``, bytes) → bytes (rounded up)."""
    if isinstance(v, bool):
        raise ValueError("must be a quantity like 7Gi, 512Mi or bytes")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("must not be negative")
        return v
    m = _QUANTITY.match(str(v))
    if not m:
        raise ValueError(f"{v!r} is not a quantity like 7Gi, 512Mi, 8G or bytes")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "m":
        return -(-int(number) // 1000)
    return int(-(-number * _FACTOR[unit] // 1))


def kube_version(v: Any) -> tuple[int, int]:
    """``1.25`` / ``v1.25`` → (1, 25)."""
    m = _VERSION.match(str(v).strip())
    if not m:
        raise ValueError(f"{v!r} is not a Kubernetes version like 1.25")
    return int(m.group(1)), int(m.group(2))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ModelNeeds(_Strict):
    memory: int | None = Field(None, description="allocatable memory one node needs to serve the model (7Gi)")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int | None:
        return None if v is None else parse_quantity(v)


class Requirements(_Strict):
    """What the bundle needs of a site (module docstring); checked by the agent's ``preflight`` step."""

    kubernetes: str | None = Field(None, description="minimum Kubernetes version (major.minor, e.g. 1.25)")
    apis: list[str] = Field([], description="group/version or group/version/Kind the cluster (or the bundle) "
                                            "must serve")
    crds: list[str] = Field([], description="CustomResourceDefinition names (plural.group) that must exist")
    storage_classes: list[str] = Field([], description="StorageClass names the cluster (or the bundle) must have")
    architectures: list[str] = Field([], description="node architectures (kubernetes.io/arch) that must be present")
    node_memory: int | None = Field(None, description="allocatable memory of the largest schedulable node")
    store_free: int | None = Field(None, description="free space on the agent's store after ingest")
    models: dict[str, ModelNeeds] = Field({}, description="per model (from `models:`): what serving it needs")

    @field_validator("kubernetes")
    @classmethod
    def _kubernetes(cls, v: str | None) -> str | None:
        if v is None:
            return v
        major, minor = kube_version(v)
        return f"{major}.{minor}"

    @field_validator("apis")
    @classmethod
    def _apis(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _API.match(a):
                raise ValueError(f"{a!r} is not group/version or group/version/Kind (apps/v1, "
                                 "gateway.networking.k8s.io/v1/Gateway, v1/Service)")
        return v

    @field_validator("crds")
    @classmethod
    def _crds(cls, v: list[str]) -> list[str]:
        for c in v:
            if not _CRD.match(c):
                raise ValueError(f"{c!r} is not a CustomResourceDefinition name (plural.group, e.g. "
                                 "datasets.dataset.baizeai.io)")
        return v

    @field_validator("storage_classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        from .deploy import dns_name

        return [dns_name(s, "storage class") for s in v]

    @field_validator("architectures")
    @classmethod
    def _arch(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _ARCH.match(a):
                raise ValueError(f"{a!r} is not an architecture as kubernetes.io/arch names it (amd64, arm64)")
        return v

    @field_validator("node_memory", "store_free", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> int | None:
        return None if v is None else parse_quantity(v)

    @property
    def min_kubernetes(self) -> tuple[int, int] | None:
        return kube_version(self.kubernetes) if self.kubernetes else None

    def cross_checks(self, models: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        return [(("requirements", "models", m), f"no model named {m!r} in `models:`")
                for m in self.models if m not in models]
