"""Undo what the apply steps of a bundle did on the cluster (``agent remove``): each function converges — run
again after a crash or a failure, it finds what is left and finishes.

What belongs to a bundle is found the way prune finds it: objects carrying both our labels for the bundle name,
Helm releases labelled ``hydra-bundle.io/release-of=<name>`` (plus the releases its chart steps name, which an
operator may have installed with the pending ``helm`` command), and the node labels its ``label_nodes`` steps
set. Nodes are never deleted; Namespaces and CRDs only on purge (deleting them deletes everything in them, ours
or not), and never the cluster's own namespaces."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ApplyError
from ..k8s.objects import CRD_KIND, RELEASE_LABEL, bundle_selector, is_ours, key_of, kind_rank
from ..retry import Deadline, poll_delays
from ..states import StepState
from .helm import unavailable as helm_unavailable
from .step import StepResult

if TYPE_CHECKING:
    from .kube import Kube
    from .runtime import Runtime

Emit = Callable[[str], None]
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
NAMESPACE = ("", "Namespace")
CRD = ("apiextensions.k8s.io", CRD_KIND)
NODE = ("", "Node")


def labelled(kube: Kube, bundle_name: str, deadline: Deadline) -> list[dict[str, Any]]:
    """Every object of the bundle on the cluster (Namespaces and CRDs included), in apply order."""
    found = kube.list_labelled(bundle_selector(bundle_name), with_namespaces_and_crds=True, deadline=deadline)
    return sorted((o for o in found if is_ours(o, bundle_name)), key=kind_rank)


def group_of(o: dict[str, Any]) -> str:
    """``objects`` (deleted by remove), ``namespaces`` or ``crds`` (only on purge), or ``nodes`` (never)."""
    k = key_of(o)
    return {NAMESPACE: "namespaces", CRD: "crds", NODE: "nodes"}.get((k.group, k.kind), "objects")


def of_group(kube: Kube, bundle_name: str, group: str, deadline: Deadline) -> list[dict[str, Any]]:
    return [o for o in labelled(kube, bundle_name, deadline) if group_of(o) == group]


def delete_objects(kube: Kube, bundle_name: str, group: str, deadline: Deadline, emit: Emit,
                   poll_interval: float = 1.0, sleep: Callable[[float], None] | None = None) -> StepResult:
    """Delete the bundle's objects of ``group`` in reverse apply order and wait until they are gone (finalizers:
    a Dataset's controller, a PVC in use). Namespaces are not waited for: the namespace controller empties them."""
    objs = of_group(kube, bundle_name, group, deadline)
    notes = []
    if group == "namespaces":
        keep = [o for o in objs if key_of(o).name in PROTECTED_NAMESPACES]
        notes += [f"{key_of(o)} is the cluster's own: never deleted (remove our labels by hand)" for o in keep]
        objs = [o for o in objs if o not in keep]
    changes = []
    for o in reversed(objs):
        k = key_of(o)
        if (o.get("metadata") or {}).get("deletionTimestamp"):
            emit(f"{k} is being deleted already")
        else:
            emit(f"delete {k}")
            kube.delete(o["apiVersion"], k, deadline)
            changes.append(f"deleted {k}")
    if group == "namespaces":
        notes += [f"{key_of(o)} is terminating: the namespace controller deletes what is left in it" for o in objs]
        return StepResult(StepState.DONE, f"{len(changes)} namespace(s) deleted", changes, notes)
    _wait_gone(kube, objs, deadline, emit, poll_interval, sleep)
    return StepResult(StepState.DONE, f"{len(changes)} deleted" if changes else "nothing left to delete", changes,
                      notes)


def _finalizers(o: dict[str, Any]) -> str:
    return ", ".join((o.get("metadata") or {}).get("finalizers") or []) or "none"


def _wait_gone(kube: Kube, objs: list[dict[str, Any]], deadline: Deadline, emit: Emit, poll_interval: float,
               sleep: Callable[[float], None] | None) -> None:
    left = list(objs)
    delays = poll_delays(poll_interval)
    while left:
        still = []
        for o in left:
            k = key_of(o)
            live = kube.get(o["apiVersion"], k.kind, k.name, k.namespace or None, deadline)
            if live is not None:
                still.append(live | {"apiVersion": o["apiVersion"], "kind": k.kind})
        left = still
        if not left:
            return
        emit(f"waiting for {len(left)} object(s) to go: {key_of(left[0])}")
        if deadline.expired:
            fin = ", ".join(f"{key_of(o)} (finalizers: {_finalizers(o)})" for o in left[:5])
            raise ApplyError(f"{len(left)} object(s) still there after the step's timeout: {fin}; is their "
                             f"controller running? Run `agent remove` again once they are gone")
        (sleep or kube.sleep)(min(next(delays), max(deadline.left, 0.01)))


def releases_to_remove(rt: Runtime, bundle_name: str, planned: set[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(namespace, release, chart) of every release of the bundle that exists now (the Helm library must load)."""
    helm = rt.helm()
    found = {(r.namespace, r.name): r.chart for r in helm.labelled(RELEASE_LABEL, bundle_name)}
    for ns, rel in sorted(planned - set(found)):
        cur = helm.status(rel, ns)
        if cur is not None:
            found[(ns, rel)] = cur.chart
    return [(ns, rel, chart) for (ns, rel), chart in sorted(found.items())]


def releases_without_library(kube: Kube, bundle_name: str, planned: set[tuple[str, str]], deadline: Deadline
                             ) -> list[tuple[str, str]]:
    """(namespace, release) of the bundle's releases whose records (Helm's Secrets) exist, read without Helm."""
    left = [(ns, rel) for ns, rel in sorted(planned)
            if kube.list_raw(f"/api/v1/namespaces/{ns}/secrets", f"owner=helm,name={rel}", deadline)]
    left += [(o["metadata"].get("namespace", ""), o["metadata"]["labels"].get("name", ""))
             for o in kube.list_raw("/api/v1/secrets", f"owner=helm,{RELEASE_LABEL}={bundle_name}", deadline)]
    return sorted(set(left))


def uninstall_releases(rt: Runtime, bundle_name: str, planned: set[tuple[str, str]], deadline: Deadline,
                       emit: Emit) -> StepResult:
    """Uninstall the bundle's Helm releases; without the library: pending with the ``helm uninstall`` commands
    for those Helm's release records still show (done once they are gone)."""
    reason = helm_unavailable()
    if reason:
        left = releases_without_library(rt.kube(), bundle_name, planned, deadline)
        if not left:
            return StepResult(StepState.DONE, "no Helm release of the bundle is installed")
        cmds = [["helm", "uninstall", rel, "--namespace", ns] for ns, rel in left]
        return StepResult(StepState.PENDING, f"{reason}: uninstall {len(left)} release(s) by running the "
                                             f"command(s); the step notices once they are gone", [],
                          [shlex.join(c) for c in cmds[1:]], command=cmds[0])
    changes = []
    for ns, rel, chart in releases_to_remove(rt, bundle_name, planned):
        emit(f"helm uninstall {ns}/{rel}")
        rt.helm().uninstall(rel, ns, deadline)
        changes.append(f"uninstalled release {ns}/{rel} ({chart})")
    return StepResult(StepState.DONE, f"{len(changes)} release(s) uninstalled" if changes
                      else "no Helm release of the bundle is installed", changes)


def labelled_nodes(kube: Kube, labels: dict[str, str], nodes: list[str] | None, deadline: Deadline
                   ) -> list[tuple[str, str]]:
    """(node, label key) pairs where a ``label_nodes`` step's label is set to its value now."""
    out = []
    for k, v in sorted(labels.items()):
        for n in kube.list_objects("v1", "Node", label_selector=f"{k}={v}", deadline=deadline):
            name = n["metadata"]["name"]
            if nodes is None or name in nodes:
                out.append((name, k))
    return out


def unlabel_nodes(kube: Kube, label_sets: list[tuple[dict[str, str], list[str] | None]], deadline: Deadline,
                  emit: Emit) -> StepResult:
    """Remove the labels the bundle's ``label_nodes`` steps set (where a node still has exactly that value)."""
    changes = []
    for labels, nodes in label_sets:
        for node, key in labelled_nodes(kube, labels, nodes, deadline):
            emit(f"unlabel node {node} {key}")
            kube.merge_patch_labels("v1", "Node", node, {key: None}, deadline)
            changes.append(f"removed label {key} from node {node}")
    return StepResult(StepState.DONE, f"{len(changes)} node label(s) removed" if changes
                      else "no node carries the bundle's labels", changes)

