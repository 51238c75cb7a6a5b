"""A thin adapter over the ``kubernetes`` dynamic client: server-side apply, waits, prune, nodes.

- Every object is applied with server-side apply, field manager ``hydra-bundle``, ``force=true``, labelled
  ``app.kubernetes.io/managed-by=hydra-bundle`` and ``hydra-bundle.io/bundle=<name>``, annotated with the
  bundle version and digest.
- Order: CRDs → wait Established → Namespaces → the rest (see :data:`.objects.KIND_ORDER`; unknown kinds, i.e. custom
  resources, last).
- Old API servers (< 1.25) answer server-side apply of a CRD with CEL ``x-kubernetes-validations`` with HTTP
  500 "field not declared in schema". We then strip the fields the server named (and every
  ``x-kubernetes-validations``), apply again, and return a note listing the rules the server will NOT enforce.
  If that still fails we fall back to create/replace.
- Prune deletes only objects carrying both our labels for this bundle; never Nodes, Namespaces or CRDs (those
  would take other people's objects with them): they are reported instead.
- Connection failures (API server down, restarting, 429/503/504) are retried with backoff until the step's
  deadline, then raised as :class:`TransientError`.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes import dynamic
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from .base import ApplyError, Deadline, TransientError, brief, poll_delays
from .deploy_spec import SIMULATED_GPU_LABEL
from .objects import (
    BUNDLE_LABEL,
    CRD_KIND,
    FIELD_MANAGER,
    GPU_RESOURCE,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ObjKey,
    bundle_selector,
    key_of,
    kind_rank,
)
from .rewrite import CONTAINER_LISTS, api_group, pod_spec

NEVER_PRUNE = {("", "Node"), ("", "Namespace"), ("apiextensions.k8s.io", CRD_KIND)}
_SKIP_LIST = {("", "events"), ("events.k8s.io", "events"), ("", "nodes"), ("", "namespaces"),
              ("apiextensions.k8s.io", "customresourcedefinitions")}
_NOT_IN_SCHEMA = re.compile(r"^\s*(\.[^\s:]+): field not declared in schema", re.M)

T = TypeVar("T")


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


def _status_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.body or e.reason)


def _transient(e: BaseException) -> bool:
    if isinstance(e, ApiException):
        return e.status in (0, 429, 502, 503, 504) or e.status is None
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | socket.timeout | TimeoutError | OSError)


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


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What an apply can change: everything but status and server bookkeeping."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("resourceVersion", "managedFields", "generation")}
    return out


@dataclass
class ApplyOutcome:
    key: ObjKey
    op: str                      # created | configured | unchanged
    notes: list[str] = field(default_factory=list)


class Kube:
    """One cluster connection. ``deadline`` bounds retries of transient failures (set per step)."""

    def __init__(self, api: kclient.ApiClient, *, log: Callable[[str], None] | None = None,
                 request_timeout: float = 30.0):
        self.api = api
        self.log = log or (lambda _m: None)
        self.request_timeout = request_timeout
        self.deadline = Deadline(60.0)
        self.sleep: Callable[[float], None] = __import__("time").sleep
        self._dyn: dynamic.DynamicClient | None = None
        self._cache_dir = Path(tempfile.mkdtemp(prefix="hydra-kube-discovery-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._cache_dir), True)
        self._crd_strip = False       # learned: this server cannot take CEL fields under SSA
        self._version: tuple[int, int] | None = None

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None, context: str | None = None, *,
                        in_cluster: bool = False, log: Callable[[str], None] | None = None) -> Kube:
        cfg = kclient.Configuration()
        try:
            if in_cluster:
                kconfig.load_incluster_config(client_configuration=cfg)
            else:
                kconfig.load_kube_config(config_file=str(path) if path else None, context=context,
                                         client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError) as e:
            where = "in-cluster config" if in_cluster else f"kubeconfig {path or '(default)'}"
            raise ApplyError(f"kubernetes: cannot load {where}: {e}") from None
        cfg.retries = 1  # our own loop does the backoff
        return cls(kclient.ApiClient(cfg), log=log)

    @classmethod
    def from_site(cls, site: Any, log: Callable[[str], None] | None = None) -> Kube:
        return cls.from_kubeconfig(site.kubeconfig, site.kube_context, in_cluster=site.in_cluster, log=log)

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:
            pass
        self._cleanup()

    # -------------------------------------------------------------------------------- plumbing
    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient failures with backoff until ``self.deadline`` (→ TransientError)."""
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as e:
                if not _transient(e):
                    raise
                if self.deadline.left < 0.05:
                    raise TransientError(f"kubernetes API: {what}: not reachable after {attempt} attempts: "
                                         f"{brief(e)}") from None
                self.log(f"kubernetes API: {what}: {brief(e)}; retrying in {delay:.1f}s")
                self.sleep(min(delay, self.deadline.left))
                delay = min(delay * 2, 10.0)

    @property
    def dyn(self) -> dynamic.DynamicClient:
        if self._dyn is None:
            self._dyn = self.call("discovery", lambda: dynamic.DynamicClient(
                self.api, cache_file=str(self._cache_dir / "discovery.json")))
        return self._dyn

    def server_version(self) -> tuple[int, int]:
        if self._version is None:
            v = (self.dyn.version or {}).get("kubernetes") or {}
            major = re.sub(r"\D.*$", "", str(v.get("major", ""))) or "0"
            minor = re.sub(r"\D.*$", "", str(v.get("minor", ""))) or "0"
            self._version = (int(major), int(minor))
        return self._version

    def resource(self, api_version: str, kind: str, wait: float = 30.0) -> Any:
        """The dynamic Resource for apiVersion/kind; waits a little for APIs of freshly established CRDs."""
        d = Deadline(min(wait, max(self.deadline.left, 1.0)))
        while True:
            try:
                return self.call(f"discover {kind}", lambda: self.dyn.resources.get(api_version=api_version,
                                                                                    kind=kind))
            except ResourceNotFoundError:
                if d.expired:
                    raise ApplyError(f"the API server has no {kind} in {api_version} (is its "
                                     f"CustomResourceDefinition applied in an earlier step?)") from None
                self.sleep(0.5)

    def _req_kwargs(self) -> dict[str, Any]:
        return {"_request_timeout": self.request_timeout}

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)
        try:
            obj = self.call(f"get {kind} {name}", lambda: self.dyn.get(
                res, name=name, namespace=namespace if res.namespaced else None, **self._req_kwargs()))
        except ApiException as e:
            if e.status == 404:
                return None
            raise ApplyError(f"get {kind} {name}: {_status_message(e)}") from None
        return obj.to_dict()

    # -------------------------------------------------------------------------------- apply
    def normalize(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Set ``metadata.namespace: default`` on namespaced objects without one; drop it on cluster-scoped."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        md = obj.setdefault("metadata", {})
        if res.namespaced and not md.get("namespace"):
            md["namespace"] = "default"
        elif not res.namespaced and "namespace" in md:
            del md["namespace"]
        return obj

    def normalize_key(self, key: ObjKey, api_version: str) -> ObjKey:
        res = self.resource(api_version, key.kind)
        if res.namespaced and not key.namespace:
            return ObjKey(key.group, key.kind, "default", key.name)
        if not res.namespaced and key.namespace:
            return ObjKey(key.group, key.kind, "", key.name)
        return key

    def apply(self, obj: dict[str, Any]) -> ApplyOutcome:
        """Server-side apply one object (already marked as ours); CRDs fall back on old servers."""
        obj = self.normalize(copy.deepcopy(obj))
        obj.pop("status", None)  # status belongs to controllers (generated CRDs carry an empty one)
        fill_list_keys(obj)
        key = key_of(obj)
        res = self.resource(obj["apiVersion"], obj["kind"])
        md = obj["metadata"]
        before = self.get(obj["apiVersion"], obj["kind"], md["name"], md.get("namespace"))
        notes: list[str] = []
        if obj["kind"] == CRD_KIND and key.group == "apiextensions.k8s.io":
            after, notes = self._apply_crd(res, obj)
        else:
            after = self._ssa(res, obj)
        return self._outcome(key, before, after, notes)

    @staticmethod
    def _outcome(key: ObjKey, before: dict[str, Any] | None, after: dict[str, Any],
                 notes: list[str]) -> ApplyOutcome:
        if before is None:
            op = "created"
        elif _content(before) == _content(after):
            op = "unchanged"  # (old servers may still bump resourceVersion when they rewrite managedFields)
        else:
            op = "configured"
        return ApplyOutcome(key, op, notes)

    def _ssa(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        md = obj["metadata"]
        try:
            out = self.call(f"apply {obj['kind']} {md['name']}", lambda: self.dyn.server_side_apply(
                res, body=obj, name=md["name"], namespace=md.get("namespace"), field_manager=FIELD_MANAGER,
                force_conflicts=True, **self._req_kwargs()))
        except ApiException as e:
            raise ApplyError(f"apply {key_of(obj)}: HTTP {e.status}: {_status_message(e)}") from e
        return out.to_dict()

    def _apply_crd(self, res: Any, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        name = obj["metadata"]["name"]
        rules = cel_rules(obj)
        if not self._crd_strip:
            try:
                return self._ssa(res, obj), []
            except ApplyError as e:
                cause = e.__cause__
                if not (isinstance(cause, ApiException) and cause.status == 500
                        and "field not declared in schema" in _status_message(cause)):
                    raise
                self._crd_strip = True
                first_error = _status_message(cause)
        else:
            first_error = ""
        stripped = copy.deepcopy(obj)
        removed: set[str] = set()
        if _strip_key(stripped.get("spec", {}), "x-kubernetes-validations"):
            removed.add("x-kubernetes-validations")
        for p in _NOT_IN_SCHEMA.findall(first_error):
            if _strip_path(stripped, p):
                removed.add(p.rsplit(".", 1)[-1])
        v = self.server_version()
        for _ in range(5):
            try:
                after = self._ssa(res, stripped)
                break
            except ApplyError as e:
                cause = e.__cause__
                msg = _status_message(cause) if isinstance(cause, ApiException) else ""
                paths = _NOT_IN_SCHEMA.findall(msg)
                if not (isinstance(cause, ApiException) and cause.status == 500 and paths):
                    raise
                if not any(_strip_path(stripped, p) for p in paths):
                    after = self._create_or_replace(res, obj)  # the server drops what it cannot store
                    removed.add("(create/replace fallback)")
                    break
                removed.update(p.rsplit(".", 1)[-1] for p in paths)
        else:
            after = self._create_or_replace(res, obj)
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
            self.log(f"warning: {n}")
        return after, notes

    def _create_or_replace(self, res: Any, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace at the current resourceVersion (retried on 409: controllers write status too)."""
        md = obj["metadata"]
        kw = {"field_manager": FIELD_MANAGER, **self._req_kwargs()}
        for attempt in range(5):
            try:
                cur = self.call(f"get {md['name']}", lambda: self.dyn.get(res, name=md["name"],
                                                                          **self._req_kwargs()))
            except ApiException as e:
                if e.status != 404:
                    raise ApplyError(f"get {key_of(obj)}: {_status_message(e)}") from None
                cur = None
            try:
                if cur is None:
                    out = self.call(f"create {md['name']}", lambda: self.dyn.create(res, body=obj, **kw))
                else:
                    body = copy.deepcopy(obj)
                    body["metadata"]["resourceVersion"] = cur.metadata.resourceVersion
                    out = self.call(f"replace {md['name']}", lambda body=body: self.dyn.replace(res, body=body, **kw))
                return out.to_dict()
            except ApiException as e:
                if e.status == 409 and attempt < 4:
                    continue
                raise ApplyError(f"create/replace {key_of(obj)}: HTTP {e.status}: {_status_message(e)}") from None
        raise AssertionError("unreachable")

    # -------------------------------------------------------------------------------- readiness
    def readiness(self, obj: dict[str, Any]) -> tuple[bool, str, dict[str, Any]]:
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
            addrs = [i.get("ip") or i.get("hostname") for i in ing if isinstance(i, dict)]
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

    def wait_ready(self, objs: list[dict[str, Any]], deadline: Deadline, progress: Callable[[str, int, int], None],
                   poll: float = 1.0) -> dict[str, Any]:
        """Poll until every object is ready; ApplyError naming the laggards at the deadline. Returns outputs."""
        pending = {key_of(o): o for o in objs}
        total = len(pending)
        outputs: dict[str, Any] = {}
        last: dict[ObjKey, str] = {}
        delays = poll_delays(poll)
        while True:
            for key, o in list(pending.items()):
                md = o["metadata"]
                live = self.get(o["apiVersion"], o["kind"], md["name"], md.get("namespace"))
                if live is None:
                    last[key] = "does not exist"
                    continue
                ok, msg, out = self.readiness(live)
                last[key] = msg
                if ok:
                    del pending[key]
                    if out:
                        outputs[str(key)] = out
            progress(", ".join(f"{k}: {last[k]}" for k in list(pending)[:3]) or "all ready", total - len(pending),
                     total)
            if not pending:
                return outputs
            if deadline.expired:
                raise ApplyError(f"timed out after {deadline.seconds:.0f}s waiting for "
                                 + "; ".join(f"{k} ({last.get(k, '?')})" for k in pending))
            self.sleep(min(next(delays), max(deadline.left, 0.01)))

    # -------------------------------------------------------------------------------- prune
    def _listable(self) -> list[tuple[str, str, str, bool]]:
        """(groupVersion, kind, plural, namespaced) for every resource that can be listed and deleted
        (preferred version of each group)."""
        out: list[tuple[str, str, str, bool]] = []
        gvs = ["v1"]
        groups = self.call("discover groups", lambda: self.dyn.request("get", "/apis")).to_dict()
        for g in groups.get("groups") or []:
            pv = (g.get("preferredVersion") or {}).get("groupVersion")
            if pv:
                gvs.append(pv)
        for gv in gvs:
            path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            try:  # one attempt: an unavailable aggregated API (metrics-server down: 503) must not stall prune
                lst = self.dyn.request("get", path, **self._req_kwargs()).to_dict()
            except ApiException:
                continue  # nothing of ours can live in an API that does not answer
            for r in lst.get("resources") or []:
                verbs = set(r.get("verbs") or [])
                if "/" in r["name"] or not {"list", "delete"} <= verbs:
                    continue
                if (api_group(gv), r["name"]) in _SKIP_LIST:
                    continue
                out.append((gv, r["kind"], r["name"], bool(r.get("namespaced"))))
        return out

    def list_ours(self, bundle_name: str, kinds_too: bool = False) -> list[dict[str, Any]]:
        """Every object labelled as ours for this bundle (CRDs and Namespaces included when ``kinds_too``)."""
        sel = bundle_selector(bundle_name)
        found: list[dict[str, Any]] = []
        targets = self._listable()
        if kinds_too:
            targets += [("v1", "Namespace", "namespaces", False),
                        ("apiextensions.k8s.io/v1", CRD_KIND, "customresourcedefinitions", False)]
        for gv, kind, plural, _ns in targets:
            path = f"/api/v1/{plural}" if gv == "v1" else f"/apis/{gv}/{plural}"
            try:
                lst = self.call(f"list {plural}", lambda path=path: self.dyn.request(
                    "get", path, label_selector=sel, **self._req_kwargs())).to_dict()
            except ApiException as e:
                if e.status in (404, 405, 403):
                    continue
                raise ApplyError(f"list {plural}: {_status_message(e)}") from None
            for item in lst.get("items") or []:
                item.setdefault("apiVersion", gv)
                item.setdefault("kind", kind)
                found.append(item)
        return found

    def prune(self, bundle_name: str, keep: set[ObjKey], progress: Callable[[str], None]) -> tuple[
            list[str], list[str]]:
        """Delete our objects of this bundle that are not in ``keep``. Returns (deleted, kept-with-reason)."""
        ours = self.list_ours(bundle_name, kinds_too=True)
        doomed = []
        kept_notes = []
        for o in ours:
            k = key_of(o)
            if k in keep:
                continue
            labels = (o.get("metadata") or {}).get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or labels.get(BUNDLE_LABEL) != bundle_name:
                continue  # belt and braces: the selector already ensured this
            if (k.group, k.kind) in NEVER_PRUNE:
                kept_notes.append(f"{k} is no longer in the bundle but is not deleted automatically (deleting it "
                                  f"would delete everything in it, ours or not); delete it by hand if unused")
                continue
            doomed.append(o)
        doomed.sort(key=kind_rank, reverse=True)
        deleted = []
        for o in doomed:
            k = key_of(o)
            progress(f"delete {k}")
            res = self.resource(o["apiVersion"], o["kind"])
            try:
                self.call(f"delete {k}", lambda o=o, res=res, k=k: self.dyn.delete(
                    res, name=k.name, namespace=k.namespace or None,
                    body={"propagationPolicy": "Background"}, **self._req_kwargs()))
            except ApiException as e:
                if e.status != 404:
                    raise ApplyError(f"delete {k}: {_status_message(e)}") from None
            deleted.append(str(k))
        return deleted, kept_notes

    # -------------------------------------------------------------------------------- nodes
    def nodes(self) -> list[dict[str, Any]]:
        res = self.resource("v1", "Node")
        lst = self.call("list nodes", lambda: self.dyn.get(res, **self._req_kwargs()))
        return [i.to_dict() if hasattr(i, "to_dict") else i for i in lst.to_dict().get("items") or []]

    def gpu_nodes(self, ignore_label: str = SIMULATED_GPU_LABEL) -> list[str]:
        """Nodes advertising nvidia.com/gpu (capacity or allocatable > 0), ignoring simulated ones (labelled
        ``ignore_label``, i.e. fake-gpu-operator's nodes)."""
        out = []
        for n in self.nodes():
            md, st = n.get("metadata") or {}, n.get("status") or {}
            if ignore_label and ignore_label in (md.get("labels") or {}):
                continue
            for section in ("capacity", "allocatable"):
                v = (st.get(section) or {}).get(GPU_RESOURCE)
                if v is not None and str(v) not in ("0", ""):
                    out.append(md["name"])
                    break
        return sorted(out)

    @staticmethod
    def schedulable(node: dict[str, Any]) -> bool:
        spec = node.get("spec") or {}
        if spec.get("unschedulable"):
            return False
        for t in spec.get("taints") or []:
            if t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") in (
                    "node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"):
                return False
        return True

    def label_nodes(self, names: list[str], labels: dict[str, str],
                    progress: Callable[[str, int, int], None]) -> list[str]:
        """Merge-patch ``labels`` onto the named nodes; returns what changed (already-labelled nodes: nothing).
        Node objects get no ownership labels of ours: they are not ours and are never pruned."""
        res = self.resource("v1", "Node")
        changes = []
        for i, name in enumerate(names):
            try:
                node = self.call(f"get node {name}", lambda name=name: self.dyn.get(
                    res, name=name, **self._req_kwargs())).to_dict()
            except ApiException as e:
                if e.status == 404:
                    raise ApplyError(f"node {name} does not exist") from None
                raise ApplyError(f"get node {name}: {_status_message(e)}") from None
            have = (node.get("metadata") or {}).get("labels") or {}
            missing = {k: v for k, v in labels.items() if have.get(k) != v}
            if missing:
                self.call(f"label node {name}", lambda name=name, missing=missing: self.dyn.patch(
                    res, name=name, body={"metadata": {"labels": missing}},
                    content_type="application/merge-patch+json", field_manager=FIELD_MANAGER,
                    **self._req_kwargs()))
                changes.append(f"labelled node {name} " + ", ".join(f"{k}={v}" for k, v in missing.items()))
            progress(f"node {name}", i + 1, len(names))
        return changes
