"""Nodes as data: which advertise real GPUs, which can run ordinary pods."""

from __future__ import annotations

from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
SIMULATED_GPU_LABEL = "run.ai/simulated-gpu-node-pool"  # fake-gpu-operator's nodes: their GPUs are not real
_CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")


def gpu_nodes(nodes: list[dict[str, Any]], ignore_label: str = SIMULATED_GPU_LABEL) -> list[str]:
    """Names of the nodes advertising nvidia.com/gpu (capacity or allocatable > 0), ignoring simulated ones
    (labelled ``ignore_label``)."""
    out = []
    for n in nodes:
        md, st = n.get("metadata") or {}, n.get("status") or {}
        if ignore_label and ignore_label in (md.get("labels") or {}):
            continue
        for section in ("capacity", "allocatable"):
            v = (st.get(section) or {}).get(GPU_RESOURCE)
            if v is not None and str(v) not in ("0", ""):
                out.append(str(md["name"]))
                break
    return sorted(out)


def schedulable(node: dict[str, Any]) -> bool:
    """Not cordoned and not a control-plane node that refuses ordinary pods."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    for t in spec.get("taints") or []:
        if t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") in _CONTROL_PLANE_TAINTS:
            return False
    return True
