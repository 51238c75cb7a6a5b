"""The Helm adapter: the official Helm v4 Go SDK in-process, through ``helm-python-sdk`` (import ``helm_python``,
ctypes over ``libhelm_c``): no helm binary, no Go toolchain, nothing to install on site.

The library is imported on first use; when it cannot load (another platform, a libc too old, the package
missing) :func:`unavailable` says exactly why, and the chart step becomes ``pending`` with the equivalent
``helm`` command. Helm's release records (Secrets ``owner=helm``) can still be read through the cluster adapter
then (:func:`deployed_without_library`), so a command an operator ran completes the step.

Every release this agent installs carries the label ``hydra-bundle.io/release-of=<bundle>`` (Helm v4 release
labels), which is how prune finds the releases of a bundle.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import ApplyError, Cancelled, brief
from ..retry import Deadline
from .site import SiteConfig

if TYPE_CHECKING:
    from .kube import Kube

_OLD_SERVER = {"disable_openapi_validation": True}  # < 1.25: its OpenAPI schema knows no CEL rules
_lock = threading.Lock()
_library: ModuleType | None = None
_reason: str | None = None
log = logging.getLogger("hydra_bundle.agent")


def library() -> ModuleType | None:
    """``helm_python``, loaded once (None when it cannot load: :func:`unavailable` says why)."""
    global _library, _reason
    with _lock:
        if _library is None and _reason is None:
            try:
                import helm_python

                helm_python.helm_c_version()  # loads libhelm_c: a missing or foreign .so fails here, not later
                helm_python.enable_logging(logging.WARNING, logging.getLogger("hydra_bundle.helm"))
                _library = helm_python
            except Exception as e:  # ImportError, OSError from ctypes, HelmLibraryError
                _reason = f"the Helm library (helm-python-sdk) cannot load: {type(e).__name__}: {brief(e)}"
        return _library


def unavailable() -> str | None:
    """Why the Helm library cannot be used here, or None when it can."""
    library()
    return _reason


@dataclass
class ReleaseInfo:
    """A release as Helm stores it (the fields we use)."""

    name: str
    namespace: str
    revision: int
    status: str                       # deployed | failed | pending-install | pending-upgrade | …
    chart_name: str
    chart_version: str
    labels: dict[str, str] = field(default_factory=dict)
    manifest: str = ""

    @classmethod
    def of(cls, r: dict[str, Any]) -> ReleaseInfo:
        return cls(str(r.get("name")), str(r.get("namespace")), int(r.get("revision") or 0),
                   str(r.get("status") or ""), str(r.get("chart_name") or ""), str(r.get("chart_version") or ""),
                   {str(k): str(v) for k, v in (r.get("labels") or {}).items()}, str(r.get("manifest") or ""))

    @property
    def chart(self) -> str:
        return f"{self.chart_name}-{self.chart_version}"

    def json(self) -> dict[str, Any]:
        return {"release": f"{self.namespace}/{self.name}", "revision": self.revision, "status": self.status,
                "chart": self.chart}


class Helm:
    """Releases on one cluster (the site's kubeconfig, or the in-cluster service account)."""

    def __init__(self, site: SiteConfig, cancel: threading.Event | None = None):
        lib = library()
        if lib is None:
            raise ApplyError(_reason or "the Helm library cannot load")
        self.lib = lib
        self.site = site
        self.cancel = cancel or threading.Event()

    def _config(self, namespace: str) -> Any:
        kw: dict[str, Any] = {"namespace": namespace}
        if self.site.kubeconfig is not None:
            kw["kubeconfig_path"] = str(self.site.kubeconfig)
        if self.site.kube_context:
            kw["kube_context"] = self.site.kube_context
        return self.lib.Config(**kw)

    @contextmanager
    def _action(self, what: str) -> Iterator[Any]:
        """A cancellation context tied to the agent's stop event, and Helm's errors as ApplyError."""
        ctx = self.lib.HelmContext()
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                if self.cancel.is_set():
                    ctx.cancel()
                    return

        t = threading.Thread(target=watch, daemon=True, name="helm-cancel")
        t.start()
        try:
            yield ctx
        except self.lib.HelmCancelledError:
            if self.cancel.is_set():
                raise Cancelled(f"{what}: cancelled: the agent is stopping") from None
            raise ApplyError(f"{what}: no answer within the step's timeout") from None
        except self.lib.HelmError as e:
            raise ApplyError(f"{what}: {_helm_message(e)}") from e
        finally:
            done.set()
            t.join(1)
            ctx.close()

    def status(self, name: str, namespace: str) -> ReleaseInfo | None:
        """The release's latest revision, or None when there is no such release."""
        with self._config(namespace) as cfg:
            try:
                return ReleaseInfo.of(cfg.status(name))
            except self.lib.HelmNotFoundError:
                return None
            except self.lib.HelmError as e:
                raise ApplyError(f"helm status {namespace}/{name}: {_helm_message(e)}") from e

    def user_values(self, name: str, namespace: str) -> dict[str, Any]:
        with self._config(namespace) as cfg:
            try:
                return dict(cfg.get_values(name) or {})
            except self.lib.HelmError as e:
                raise ApplyError(f"helm get values {namespace}/{name}: {_helm_message(e)}") from e

    def install(self, chart: Path | str, version: str, name: str, namespace: str, values: dict[str, Any], *,
                labels: dict[str, str], deadline: Deadline, create_namespace: bool = True, plain_http: bool = False,
                old_server: bool = False) -> ReleaseInfo:
        """Install, without waiting (the step waits for readiness with our own rules and undoes a failure: Helm's
        rollback-on-failure would imply its own wait)."""
        opts: dict[str, Any] = {"timeout_seconds": max(int(deadline.left), 1), "labels": labels}
        if create_namespace:
            opts["create_namespace"] = True
        if old_server:
            opts.update(_OLD_SERVER, server_side_apply=False)
        return self._write("helm_install", f"helm install {namespace}/{name}", chart, version, name, namespace,
                           values, opts, plain_http)

    def upgrade(self, chart: Path | str, version: str, name: str, namespace: str, values: dict[str, Any], *,
                labels: dict[str, str], deadline: Deadline, plain_http: bool = False,
                old_server: bool = False) -> ReleaseInfo:
        """Upgrade to a new revision with exactly ``values`` (no wait; see :meth:`install`)."""
        opts: dict[str, Any] = {"timeout_seconds": max(int(deadline.left), 1), "labels": labels, "reset_values": True}
        if old_server:
            opts.update(_OLD_SERVER, server_side_apply="false")
        return self._write("helm_upgrade", f"helm upgrade {namespace}/{name}", chart, version, name, namespace,
                           values, opts, plain_http)

    def _write(self, action: str, what: str, chart: Path | str, version: str, name: str, namespace: str,
               values: dict[str, Any], opts: dict[str, Any], plain_http: bool) -> ReleaseInfo:
        """``helm_install``/``helm_upgrade`` of the C ABI with the options this adapter needs. The binding's
        ``Config.install``/``upgrade`` do not pass Helm's ``disable_openapi_validation`` and ``server_side_apply``,
        which servers older than 1.25 need for CRDs with CEL rules (the same gap ``applier`` closes for
        manifests); everything else is the same call the binding makes (helm-python-sdk 0.2.2 is pinned)."""
        native = self.lib._native
        with self._config(namespace) as cfg, self._chart(chart, version, plain_http) as (src, where), \
                self._action(what) as ctx:
            handle, ref = self.lib.Config._chart_args(src)
            payload = native.call_string(action, cfg._raw(), ctx._raw(), handle, ref, name, json.dumps(values),
                                         json.dumps({**opts, **where}))
            return ReleaseInfo.of(json.loads(payload))

    def rollback(self, name: str, namespace: str, revision: int, deadline: Deadline) -> None:
        with self._config(namespace) as cfg:
            try:
                cfg.rollback(name, version=revision, timeout=max(int(deadline.left), 1))
            except self.lib.HelmError as e:
                raise ApplyError(f"helm rollback {namespace}/{name} to revision {revision}: "
                                 f"{_helm_message(e)}") from e

    def uninstall(self, name: str, namespace: str, deadline: Deadline) -> None:
        with self._config(namespace) as cfg:
            try:
                cfg.uninstall(name, timeout=max(int(deadline.left), 1), ignore_not_found=True)
            except self.lib.HelmError as e:
                raise ApplyError(f"helm uninstall {namespace}/{name}: {_helm_message(e)}") from e

    def labelled(self, key: str, value: str) -> list[ReleaseInfo]:
        """Every release (all namespaces, any state) carrying the release label ``key=value``."""
        with self._config("default") as cfg:
            try:
                found = cfg.list(all_namespaces=True, all_states=True)
            except self.lib.HelmError as e:
                raise ApplyError(f"helm list: {_helm_message(e)}") from e
        return [r for r in map(ReleaseInfo.of, found) if r.labels.get(key) == value]

    @contextmanager
    def _chart(self, chart: Path | str, version: str, plain_http: bool) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(chart, extra arguments): a chart file from the content store, loaded here, or an ``oci://``
        reference the library pulls (with its version)."""
        if isinstance(chart, str):
            yield chart, {"chart_version": version, "plain_http": plain_http}
            return
        try:
            loaded = self.lib.Chart.load(str(chart))
        except self.lib.HelmError as e:
            raise ApplyError(f"cannot load chart {chart}: {_helm_message(e)}") from e
        with loaded:
            yield loaded, {}


def _helm_message(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:500] if text else type(e).__name__


def decode_release(secret: dict[str, Any]) -> dict[str, Any] | None:
    """The release record Helm keeps in a ``helm.sh/release.v1`` Secret (base64 of gzipped JSON, inside the
    Secret's own base64), or None when it does not decode."""
    data = (secret.get("data") or {}).get("release")
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(base64.b64decode(data))
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        rel = json.loads(raw)
    except (ValueError, OSError):
        return None
    return rel if isinstance(rel, dict) else None


def deployed_without_library(kube: Kube, name: str, namespace: str, chart_name: str, version: str,
                             values: dict[str, Any], deadline: Deadline) -> str | None:
    """Without the library: has someone (an operator running the pending command) deployed this chart version
    with these values? Reads Helm's release Secrets through the cluster adapter. Returns the revision, or None."""
    items = kube.list_raw(f"/api/v1/namespaces/{namespace}/secrets", f"owner=helm,name={name},status=deployed",
                          deadline)
    for item in items:
        r = decode_release(item)
        md = ((r or {}).get("chart") or {}).get("metadata") or {}
        if r is None or md.get("name") != chart_name or md.get("version") != version:
            continue
        if (r.get("config") or {}) == json.loads(json.dumps(values)):
            return str(r.get("version") or (item.get("metadata") or {}).get("labels", {}).get("version") or "?")
    return None
