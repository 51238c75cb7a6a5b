"""When is a live object ready? A pure function of the object, as ``kubectl rollout status`` and the usual
conditions judge it."""

from __future__ import annotations

from typing import Any

from ..errors import ApplyError
from .objects import CRD_KIND


def readiness(obj: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
    """(ready, human message, outputs) for a live object. Raises ApplyError for terminal failures."""
    kind = obj.get("kind")
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or [] if isinstance(c, dict)}
    gen, obs = md.get("generation"), st.get("observedGeneration")
    stale = gen is not None and (obs is None or obs < gen)

    def cond(t: str) -> bool:
        return (conds.get(t) or {}).get("status") == "True"

    if kind == CRD_KIND:
        return cond("Established"), "Established" if cond("Established") else "waiting for Established", {}
    if kind == "Deployment":
        want = spec.get("replicas", 1)
        avail, upd = st.get("availableReplicas", 0), st.get("updatedReplicas", 0)
        # as `kubectl rollout status`: all updated, old replicas gone, updated ones available
        ok = not stale and upd >= want and st.get("replicas", 0) <= upd and avail >= upd
        return ok, f"{avail}/{want} available, {upd} updated" + (" (not observed yet)" if stale else ""), {}
    if kind == "StatefulSet":
        want = spec.get("replicas", 1)
        ready, upd = st.get("readyReplicas", 0), st.get("updatedReplicas", 0)
        rev_ok = not st.get("updateRevision") or st.get("currentRevision") == st.get("updateRevision")
        ok = not stale and ready >= want and (upd >= want or rev_ok)
        return ok, f"{ready}/{want} ready", {}
    if kind == "DaemonSet":
        want = st.get("desiredNumberScheduled")
        ready, upd = st.get("numberReady", 0), st.get("updatedNumberScheduled", 0)
        ok = not stale and want is not None and ready >= want and upd >= want
        return ok, f"{ready}/{want if want is not None else '?'} ready", {}
    if kind == "ReplicaSet":
        want = spec.get("replicas", 1)
        ready = st.get("readyReplicas", 0)
        return not stale and ready >= want, f"{ready}/{want} ready", {}
    if kind == "Job":
        if cond("Failed"):
            raise ApplyError(f"Job {md.get('namespace')}/{md.get('name')} failed: "
                             f"{(conds.get('Failed') or {}).get('message', '')}")
        return cond("Complete"), f"{st.get('succeeded', 0)} succeeded", {}
    if kind == "Pod":
        if st.get("phase") == "Failed":
            raise ApplyError(f"Pod {md.get('namespace')}/{md.get('name')} failed")
        ok = cond("Ready") or st.get("phase") == "Succeeded"
        return ok, str(st.get("phase") or "Pending"), {}
    if kind == "Service" and spec.get("type") == "LoadBalancer":
        ing = (st.get("loadBalancer") or {}).get("ingress") or []
        addrs = [str(i.get("ip") or i.get("hostname")) for i in ing if isinstance(i, dict)
                 and (i.get("ip") or i.get("hostname"))]
        return bool(addrs), (f"load balancer {', '.join(addrs)}" if addrs else "no load-balancer address yet"), (
            {"addresses": addrs} if addrs else {})
    if kind == "PersistentVolumeClaim":
        return st.get("phase") == "Bound", str(st.get("phase") or "Pending"), {}
    if kind == "Namespace":
        return st.get("phase", "Active") == "Active", str(st.get("phase", "Active")), {}
    for t in ("Ready", "Available", "Programmed", "Established"):
        if t in conds:
            return cond(t), f"{t}={(conds[t] or {}).get('status')}", {}
    return True, "exists", {}
