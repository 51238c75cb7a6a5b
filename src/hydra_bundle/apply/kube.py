"""The cluster adapter: a thin layer over the ``kubernetes`` dynamic client. It knows how to talk to an API server
(discovery, get, server-side apply, create/replace, delete, list by label, merge patches) and which of its
failures are transient; what to apply, when an object is ready and what to prune are decided elsewhere
(``applier``, ``k8s.readiness``, ``prune``).

Every call that reaches the server takes the deadline it must finish by: transient failures (API server down or
restarting, 429/502/503/504, connection errors) are retried with the shared backoff (:mod:`hydra_bundle.retry`)
until then and become :class:`~hydra_bundle.errors.TransientError`. Sleeps go through the ``sleep`` given at
construction, so a stopping agent cancels them. Errors the server answers are :class:`ApplyError` whose
``__cause__`` is the client's ``ApiException`` (``status_of`` reads it).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from .. import retry
from ..errors import ApplyError, TransientError, brief
from ..k8s.objects import FIELD_MANAGER, ObjKey, key_of
from ..retry import Deadline
from .site import SiteConfig

T = TypeVar("T")
DEFAULT_DEADLINE = 60.0       # for calls made outside a step (tests, CLI)
DISCOVERY_WAIT = 30.0         # how long a freshly established CRD's API may take to appear
_NEVER_LISTED = {("", "events"), ("events.k8s.io", "events"), ("", "nodes"), ("", "namespaces"),
                 ("apiextensions.k8s.io", "customresourcedefinitions")}


def status_message(e: ApiException) -> str:
    """The message of a Kubernetes ``Status`` answer (or the raw body)."""
    try:
        return str(json.loads(e.body or "").get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.body or e.reason)


def status_of(e: BaseException) -> tuple[int | None, str]:
    """(HTTP status, server message) of an :class:`ApplyError` raised for an answer from the API server."""
    cause = e.__cause__
    if isinstance(cause, ApiException):
        return cause.status, status_message(cause)
    return None, ""


def transient(e: BaseException) -> bool:
    """Worth retrying: the server was unreachable or asked us to come back later."""
    if isinstance(e, ApiException):
        return e.status in (0, 429, 502, 503, 504) or e.status is None
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError | socket.timeout | TimeoutError | OSError)


def _deadline(d: Deadline | None) -> Deadline:
    return d if d is not None else Deadline(DEFAULT_DEADLINE)


class Kube:
    """One cluster connection."""

    def __init__(self, api: kclient.ApiClient, *, log: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, request_timeout: float = 30.0):
        self.api = api
        self.log = log or (lambda _m: None)
        self.sleep = sleep
        self.request_timeout = request_timeout
        self._dyn: dynamic.DynamicClient | None = None
        self._cache_dir = Path(tempfile.mkdtemp(prefix="hydra-kube-discovery-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._cache_dir), True)
        self._version: tuple[int, int] | None = None

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_kubeconfig(cls, path: str | Path | None = None, context: str | None = None, *,
                        in_cluster: bool = False, log: Callable[[str], None] | None = None,
                        sleep: Callable[[float], None] = time.sleep) -> Kube:
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
        cfg.retries = 1  # retry.call does the backoff
        return cls(kclient.ApiClient(cfg), log=log, sleep=sleep)

    @classmethod
    def from_site(cls, site: SiteConfig, log: Callable[[str], None] | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> Kube:
        return cls.from_kubeconfig(site.kubeconfig, site.kube_context, in_cluster=site.in_cluster, log=log,
                                   sleep=sleep)

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:
            pass
        self._cleanup()

    # -------------------------------------------------------------------------------- plumbing
    def call(self, what: str, fn: Callable[[], T], deadline: Deadline | None = None) -> T:
        """Run ``fn``; retry transient failures until ``deadline`` (then TransientError)."""
        def on_retry(e: BaseException, seconds: float) -> None:
            self.log(f"kubernetes API: {what}: {brief(e)}; retrying in {seconds:.1f}s")

        def give_up(e: BaseException, attempts: int) -> Exception:
            return TransientError(f"kubernetes API: {what}: not reachable after {attempts} attempts: {brief(e)}")

        return retry.call(fn, transient=transient, deadline=_deadline(deadline), sleep=self.sleep,
                          on_retry=on_retry, give_up=give_up)

    def _kw(self) -> dict[str, Any]:
        return {"_request_timeout": self.request_timeout}

    def discovery(self, deadline: Deadline | None = None) -> dynamic.DynamicClient:
        """The dynamic client (API discovery on first use, cached in a private file: the default cache is shared
        by every process talking to the server and goes stale after CRDs are installed)."""
        if self._dyn is None:
            self._dyn = self.call("discovery", lambda: dynamic.DynamicClient(
                self.api, cache_file=str(self._cache_dir / "discovery.json")), deadline)
        return self._dyn

    @property
    def dyn(self) -> dynamic.DynamicClient:
        return self.discovery()

    def server_version(self, deadline: Deadline | None = None) -> tuple[int, int]:
        if self._version is None:
            v = (self.discovery(deadline).version or {}).get("kubernetes") or {}
            major = re.sub(r"\D.*$", "", str(v.get("major", ""))) or "0"
            minor = re.sub(r"\D.*$", "", str(v.get("minor", ""))) or "0"
            self._version = (int(major), int(minor))
        return self._version

    def resource(self, api_version: str, kind: str, deadline: Deadline | None = None,
                 wait: float = DISCOVERY_WAIT) -> Any:
        """The dynamic Resource for apiVersion/kind; waits up to ``wait`` for APIs of freshly established CRDs."""
        deadline = _deadline(deadline)
        until = deadline.within(max(min(wait, deadline.left), 0.0))
        dyn = self.discovery(deadline)
        while True:
            try:
                return self.call(f"discover {kind}", lambda: dyn.resources.get(api_version=api_version, kind=kind),
                                 deadline)
            except ResourceNotFoundError:
                if until.expired:
                    raise ApplyError(f"the API server has no {kind} in {api_version} (is its "
                                     f"CustomResourceDefinition applied in an earlier step?)") from None
                self.sleep(min(0.5, max(until.left, 0.01)))

    def namespaced(self, api_version: str, kind: str, deadline: Deadline | None = None) -> bool:
        return bool(self.resource(api_version, kind, deadline).namespaced)

    # -------------------------------------------------------------------------------- objects
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None,
            deadline: Deadline | None = None) -> dict[str, Any] | None:
        """The live object, or None."""
        res = self.resource(api_version, kind, deadline)
        try:
            obj = self.call(f"get {kind} {name}", lambda: self.dyn.get(
                res, name=name, namespace=namespace if res.namespaced else None, **self._kw()), deadline)
        except ApiException as e:
            if e.status == 404:
                return None
            raise ApplyError(f"get {kind} {name}: {status_message(e)}") from None
        return obj.to_dict()  # type: ignore[no-any-return]

    def normalize(self, obj: dict[str, Any], deadline: Deadline | None = None) -> dict[str, Any]:
        """Set ``metadata.namespace: default`` on namespaced objects without one; drop it on cluster-scoped."""
        md = obj.setdefault("metadata", {})
        namespaced = self.namespaced(obj["apiVersion"], obj["kind"], deadline)
        if namespaced and not md.get("namespace"):
            md["namespace"] = "default"
        elif not namespaced:
            md.pop("namespace", None)
        return obj

    def normalize_key(self, key: ObjKey, api_version: str, deadline: Deadline | None = None) -> ObjKey:
        namespaced = self.namespaced(api_version, key.kind, deadline)
        if namespaced and not key.namespace:
            return ObjKey(key.group, key.kind, "default", key.name)
        if not namespaced and key.namespace:
            return ObjKey(key.group, key.kind, "", key.name)
        return key

    def server_side_apply(self, obj: dict[str, Any], deadline: Deadline | None = None) -> dict[str, Any]:
        """Server-side apply (field manager ``hydra-bundle``, conflicts forced); returns the live object."""
        res = self.resource(obj["apiVersion"], obj["kind"], deadline)
        md = obj["metadata"]
        try:
            out = self.call(f"apply {obj['kind']} {md['name']}", lambda: self.dyn.server_side_apply(
                res, body=obj, name=md["name"], namespace=md.get("namespace"), field_manager=FIELD_MANAGER,
                force_conflicts=True, **self._kw()), deadline)
        except ApiException as e:
            raise ApplyError(f"apply {key_of(obj)}: HTTP {e.status}: {status_message(e)}") from e
        return out.to_dict()  # type: ignore[no-any-return]

    def create_or_replace(self, obj: dict[str, Any], deadline: Deadline | None = None) -> dict[str, Any]:
        """Create, or replace at the current resourceVersion (retried on 409: controllers write status too)."""
        res = self.resource(obj["apiVersion"], obj["kind"], deadline)
        md = obj["metadata"]
        kw = {"field_manager": FIELD_MANAGER, **self._kw()}
        for attempt in range(5):
            try:
                cur = self.call(f"get {md['name']}", lambda: self.dyn.get(res, name=md["name"], **self._kw()),
                                deadline)
            except ApiException as e:
                if e.status != 404:
                    raise ApplyError(f"get {key_of(obj)}: {status_message(e)}") from None
                cur = None
            try:
                if cur is None:
                    out = self.call(f"create {md['name']}", lambda: self.dyn.create(res, body=obj, **kw), deadline)
                else:
                    body = {**obj, "metadata": {**md, "resourceVersion": cur.metadata.resourceVersion}}

                    def replace(b: dict[str, Any] = body) -> Any:
                        return self.dyn.replace(res, body=b, **kw)
                    out = self.call(f"replace {md['name']}", replace, deadline)
                return out.to_dict()  # type: ignore[no-any-return]
            except ApiException as e:
                if e.status == 409 and attempt < 4:
                    continue
                raise ApplyError(f"create/replace {key_of(obj)}: HTTP {e.status}: {status_message(e)}") from None
        raise AssertionError("unreachable")

    def delete(self, api_version: str, key: ObjKey, deadline: Deadline | None = None) -> bool:
        """Delete (background propagation); False when it was already gone."""
        res = self.resource(api_version, key.kind, deadline)
        try:
            self.call(f"delete {key}", lambda: self.dyn.delete(
                res, name=key.name, namespace=key.namespace or None, body={"propagationPolicy": "Background"},
                **self._kw()), deadline)
        except ApiException as e:
            if e.status != 404:
                raise ApplyError(f"delete {key}: {status_message(e)}") from None
            return False
        return True

    def merge_patch_labels(self, api_version: str, kind: str, name: str, labels: Mapping[str, str | None],
                           deadline: Deadline | None = None) -> None:
        res = self.resource(api_version, kind, deadline)
        self.call(f"label {kind} {name}", lambda: self.dyn.patch(
            res, name=name, body={"metadata": {"labels": labels}}, content_type="application/merge-patch+json",
            field_manager=FIELD_MANAGER, **self._kw()), deadline)

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             deadline: Deadline | None = None) -> list[dict[str, Any]]:
        res = self.resource(api_version, kind, deadline)
        kw: dict[str, Any] = {**self._kw()}
        if label_selector:
            kw["label_selector"] = label_selector
        lst = self.call(f"list {kind}", lambda: self.dyn.get(res, namespace=namespace, **kw), deadline).to_dict()
        return [i for i in lst.get("items") or [] if isinstance(i, dict)]

    def nodes(self, deadline: Deadline | None = None) -> list[dict[str, Any]]:
        return self.list_objects("v1", "Node", deadline=deadline)

    # -------------------------------------------------------------------------------- everything labelled
    def _listable(self, deadline: Deadline) -> list[tuple[str, str, str]]:
        """(groupVersion, kind, plural) of every resource that can be listed and deleted (preferred version of
        each group)."""
        out: list[tuple[str, str, str]] = []
        gvs = ["v1"]
        groups = self.call("discover groups", lambda: self.dyn.request("get", "/apis"), deadline).to_dict()
        for g in groups.get("groups") or []:
            pv = (g.get("preferredVersion") or {}).get("groupVersion")
            if pv:
                gvs.append(pv)
        for gv in gvs:
            path = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            try:  # one attempt: an unavailable aggregated API (metrics-server down: 503) must not stall a listing
                lst = self.dyn.request("get", path, **self._kw()).to_dict()
            except ApiException:
                continue  # nothing of ours can live in an API that does not answer
            group = gv.rpartition("/")[0] if "/" in gv else ""
            for r in lst.get("resources") or []:
                verbs = set(r.get("verbs") or [])
                if "/" in r["name"] or not {"list", "delete"} <= verbs or (group, r["name"]) in _NEVER_LISTED:
                    continue
                out.append((gv, r["kind"], r["name"]))
        return out

    def list_labelled(self, selector: str, *, with_namespaces_and_crds: bool = False,
                      deadline: Deadline | None = None) -> list[dict[str, Any]]:
        """Every object matching the label ``selector`` in every listable resource (Namespaces and CRDs too when
        asked), each with its apiVersion and kind set."""
        deadline = _deadline(deadline)
        targets = self._listable(deadline)
        if with_namespaces_and_crds:
            targets += [("v1", "Namespace", "namespaces"),
                        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions")]
        found: list[dict[str, Any]] = []
        for gv, kind, plural in targets:
            path = f"/api/v1/{plural}" if gv == "v1" else f"/apis/{gv}/{plural}"
            def get(p: str = path) -> Any:
                return self.dyn.request("get", p, label_selector=selector, **self._kw())
            try:
                lst = self.call(f"list {plural}", get, deadline).to_dict()
            except ApiException as e:
                if e.status in (404, 405, 403):
                    continue
                raise ApplyError(f"list {plural}: {status_message(e)}") from None
            for item in lst.get("items") or []:
                item.setdefault("apiVersion", gv)
                item.setdefault("kind", kind)
                found.append(item)
        return found

    def list_raw(self, path: str, label_selector: str, deadline: Deadline | None = None) -> list[dict[str, Any]]:
        """Items of a GET on an API path (for resources read without discovery, e.g. helm's release Secrets)."""
        lst = self.call(f"list {path}", lambda: self.dyn.request(
            "get", path, label_selector=label_selector, **self._kw()), deadline).to_dict()
        return [i for i in lst.get("items") or [] if isinstance(i, dict)]
