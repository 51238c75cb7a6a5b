"""Prune: delete what an earlier version of a bundle applied and this one no longer has.

Only objects carrying both our labels for this bundle are candidates; Nodes, Namespaces and CRDs never are
deleted automatically (deleting them would delete everything in them, ours or not): they are reported instead.
Deletion runs in reverse apply order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ApplyError
from ..k8s.objects import CRD_KIND, ObjKey, bundle_selector, is_ours, key_of, kind_rank
from ..retry import Deadline

if TYPE_CHECKING:
    from .kube import Kube

NEVER_PRUNE = {("", "Node"), ("", "Namespace"), ("apiextensions.k8s.io", CRD_KIND)}


def prune(kube: Kube, bundle_name: str, keep: list[tuple[ObjKey, str]], deadline: Deadline,
          progress: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Delete our objects of ``bundle_name`` not in ``keep`` ((key, apiVersion) pairs). Returns (deleted,
    notes about objects left for an operator)."""
    kept: set[ObjKey] = set()
    for key, api_version in keep:
        kept.add(key)
        try:
            kept.add(kube.normalize_key(key, api_version, deadline))
        except ApplyError:
            pass  # a kind unknown to the server (e.g. a pending chart's CRD): nothing of it to prune
    doomed = []
    notes = []
    for o in kube.list_labelled(bundle_selector(bundle_name), with_namespaces_and_crds=True, deadline=deadline):
        k = key_of(o)
        if k in kept or not is_ours(o, bundle_name):  # belt and braces: the selector already ensured the labels
            continue
        if (k.group, k.kind) in NEVER_PRUNE:
            notes.append(f"{k} is no longer in the bundle but is not deleted automatically (deleting it would delete "
                         f"everything in it, ours or not); delete it by hand if unused")
            continue
        doomed.append(o)
    deleted = []
    for o in sorted(doomed, key=kind_rank, reverse=True):
        k = key_of(o)
        progress(f"delete {k}")
        kube.delete(o["apiVersion"], k, deadline)
        deleted.append(str(k))
    return deleted, notes
