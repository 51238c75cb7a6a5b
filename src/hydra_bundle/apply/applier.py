"""Applying objects: the policy around the adapter's server-side apply.

- Objects are applied with server-side apply (field manager ``hydra-bundle``, conflicts forced), already labelled
  ours; ``status`` is dropped (it belongs to controllers; generated CRDs carry an empty one) and list keys older
  servers insist on are filled in (``k8s.objects.fill_list_keys``).
- created / configured / unchanged is judged on content, not ``resourceVersion``: a 1.20 server rewrites
  ``managedFields`` on the first re-apply without changing anything.
- Old API servers (< 1.25) answer server-side apply of a CRD with CEL ``x-kubernetes-validations`` with HTTP 500
  "field not declared in schema". The CRD is then applied without those fields (and any other path the 500
  names), with a note listing the rules the server will NOT enforce; create/replace is the last resort. The
  learned fact ("this server cannot take CEL under SSA") is kept for the rest of the run.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApplyError
from ..k8s.objects import CRD_KIND, ObjKey, content, fill_list_keys, key_of
from ..retry import Deadline
from .kube import Kube, status_of

_NOT_IN_SCHEMA = re.compile(r"^\s*(\.[^\s:]+): field not declared in schema", re.M)


@dataclass
class ApplyOutcome:
    key: ObjKey
    op: str                      # created | configured | unchanged
    notes: list[str] = field(default_factory=list)


class Applier:
    """Applies objects through one :class:`Kube` (one per apply run)."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self._crd_strip = False       # learned: this server cannot take CEL fields under SSA

    def apply(self, obj: dict[str, Any], deadline: Deadline | None = None) -> ApplyOutcome:
        """Server-side apply one object (already marked as ours)."""
        obj = self.kube.normalize(copy.deepcopy(obj), deadline)
        obj.pop("status", None)
        fill_list_keys(obj)
        key = key_of(obj)
        md = obj["metadata"]
        before = self.kube.get(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace"), deadline)
        notes: list[str] = []
        if obj["kind"] == CRD_KIND and key.group == "apiextensions.k8s.io":
            after, notes = self._apply_crd(obj, deadline)
        else:
            after = self.kube.server_side_apply(obj, deadline)
        if before is None:
            op = "created"
        elif content(before) == content(after):
            op = "unchanged"
        else:
            op = "configured"
        return ApplyOutcome(key, op, notes)

    def _apply_crd(self, obj: dict[str, Any], deadline: Deadline | None) -> tuple[dict[str, Any], list[str]]:
        name = obj["metadata"]["name"]
        rules = cel_rules(obj)
        first_error = ""
        if not self._crd_strip:
            try:
                return self.kube.server_side_apply(obj, deadline), []
            except ApplyError as e:
                status, msg = status_of(e)
                if status != 500 or "field not declared in schema" not in msg:
                    raise
                self._crd_strip = True
                first_error = msg
        stripped = copy.deepcopy(obj)
        removed: set[str] = set()
        if _strip_key(stripped.get("spec", {}), "x-kubernetes-validations"):
            removed.add("x-kubernetes-validations")
        for p in _NOT_IN_SCHEMA.findall(first_error):
            if _strip_path(stripped, p):
                removed.add(p.rsplit(".", 1)[-1])
        v = self.kube.server_version(deadline)
        for _ in range(5):
            try:
                after = self.kube.server_side_apply(stripped, deadline)
                break
            except ApplyError as e:
                status, msg = status_of(e)
                paths = _NOT_IN_SCHEMA.findall(msg)
                if status != 500 or not paths:
                    raise
                if not any(_strip_path(stripped, p) for p in paths):
                    after = self.kube.create_or_replace(obj, deadline)  # the server drops what it cannot store
                    removed.add("(create/replace fallback)")
                    break
                removed.update(p.rsplit(".", 1)[-1] for p in paths)
        else:
            after = self.kube.create_or_replace(obj, deadline)
        notes = []
        if rules:
            shown = "; ".join(f"{p} {(m[:97] + '...') if len(m) > 100 else m!r}" for p, m in rules[:5])
            more = f"; … {len(rules) - 5} more" if len(rules) > 5 else ""
            notes.append(f"CustomResourceDefinition {name}: this API server (v{v[0]}.{v[1]}) cannot store CEL "
                         f"validation rules (x-kubernetes-validations; Kubernetes >= 1.25 can); applied without "
                         f"them, so it will NOT enforce {len(rules)} rule(s): {shown}{more}")
        other = sorted(removed - {"x-kubernetes-validations"})
        if other:
            notes.append(f"CustomResourceDefinition {name}: fields this API server does not know were left out: "
                         f"{', '.join(other)}")
        for n in notes:
            self.kube.log(f"warning: {n}")
        return after, notes





def cel_rules(crd: dict[str, Any]) -> list[tuple[str, str]]:
    """Every ``x-kubernetes-validations`` rule of a CRD: (schema path, message or rule)."""
    out: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "x-kubernetes-validations" and isinstance(v, list):
                    for r in v:
                        if isinstance(r, dict):
                            out.append((path or ".", str(r.get("message") or r.get("rule"))))
                elif k == "properties" and isinstance(v, dict):
                    for pk, pv in v.items():
                        walk(pv, f"{path}.{pk}")
                elif k in ("items", "additionalProperties"):
                    walk(v, f"{path}[]")
                else:
                    walk(v, path)
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    for v in (crd.get("spec") or {}).get("versions") or []:
        schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or {}
        walk(schema, f"{v.get('name')}:")
    return out


def _strip_key(node: Any, key: str) -> int:
    n = 0
    if isinstance(node, dict):
        if key in node:
            del node[key]
            n += 1
        for v in node.values():
            n += _strip_key(v, key)
    elif isinstance(node, list):
        for v in node:
            n += _strip_key(v, key)
    return n


def _strip_path(obj: dict[str, Any], path: str) -> bool:
    """Delete ``.a.b[0].c`` from obj; False when the path does not resolve."""
    tokens: list[str | int] = []
    for part in path.strip(".").split("."):
        m = re.match(r"^([^\[]+)((?:\[\d+\])*)$", part)
        if not m:
            return False
        tokens.append(m.group(1))
        tokens += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    node: Any = obj
    for t in tokens[:-1]:
        try:
            node = node[t]
        except (KeyError, IndexError, TypeError):
            return False
    last = tokens[-1]
    if isinstance(node, dict) and isinstance(last, str) and last in node:
        del node[last]
        return True
    return False
