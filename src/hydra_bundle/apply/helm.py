"""Charts: ``helm upgrade --install`` from the site registry, or the exact command when there is no helm.

The chart is pulled as ``oci://SITE/<path> --version V`` (``--plain-http`` when the site registry is http).
Values = the spec chart's ``values`` ⊕ the step's ``values`` (deep merge) with ``image_values`` rewritten to
the site registry and ``registry_values`` set to it, written to a values file next to the agent's state so a
pending command stays runnable. A re-run is a no-op when helm reports the same chart version deployed with the
same values (no new revision).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ApplyError, brief
from ..retry import Deadline
from .rewrite import rewrite_image

if TYPE_CHECKING:
    from .kube import Kube


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_path(values: dict[str, Any], path: str, value: Any) -> None:
    node = values
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def chart_values(spec_values: dict[str, Any], step_values: dict[str, Any], image_values: dict[str, str],
                 registry_values: list[str], site_registry: str) -> dict[str, Any]:
    """The values helm gets (see the module docstring)."""
    values = deep_merge(spec_values, step_values)
    for path, ref in image_values.items():
        set_path(values, path, rewrite_image(ref, site_registry))
    for path in registry_values:
        set_path(values, path, site_registry)
    return values


@dataclass
class HelmRelease:
    release: str
    namespace: str
    chart: str                 # oci://SITE/path/name
    version: str
    values: dict[str, Any]
    plain_http: bool = True
    skip_verify: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    wait: bool = True
    timeout: float = 600.0
    create_namespace: bool = True

    @property
    def chart_name(self) -> str:
        return self.chart.rstrip("/").rsplit("/", 1)[-1]

    def _common(self) -> list[str]:
        out = ["--namespace", self.namespace]
        if self.kubeconfig:
            out += ["--kubeconfig", self.kubeconfig]
        if self.kube_context:
            out += ["--kube-context", self.kube_context]
        return out

    def upgrade_args(self, values_file: Path | str) -> list[str]:
        """Arguments after the helm binary for ``helm upgrade --install``."""
        args = ["upgrade", "--install", self.release, self.chart, "--version", self.version, *self._common()]
        if self.create_namespace:
            args.append("--create-namespace")
        args += ["--values", str(values_file)]
        if self.plain_http:
            args.append("--plain-http")
        elif self.skip_verify:
            args.append("--insecure-skip-tls-verify")
        if self.wait:
            args.append("--wait")
        args += ["--timeout", f"{int(self.timeout)}s"]
        return args

    def list_args(self) -> list[str]:
        return ["list", "--filter", f"^{self.release}$", *self._common(), "--output", "json"]

    def get_values_args(self) -> list[str]:
        return ["get", "values", self.release, *self._common(), "--output", "json"]


def write_values(path: Path, values: dict[str, Any]) -> Path:
    """Write the values file atomically (0600: values may hold site details)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(values, f, allow_unicode=True, sort_keys=False)
    os.replace(tmp, path)
    return path


def command_text(helm: str, args: list[str]) -> str:
    return shlex.join([helm, *args])


def helm_env(home: Path | None) -> dict[str, str] | None:
    """helm's cache/config/data dirs under ``home`` (the agent's state dir: its sandbox may not let helm write to
    $HOME); variables the operator set win."""
    if home is None:
        return None
    env = dict(os.environ)
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env.setdefault(var, str(home / sub))
    return env


def _run(helm: str, args: list[str], timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([helm, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        raise ApplyError(f"helm {args[0]}: no answer after {timeout:.0f}s") from None
    except OSError as e:
        raise ApplyError(f"cannot run {helm}: {brief(e)}") from None


def deployed(helm: str, rel: HelmRelease, env: dict[str, str] | None = None) -> bool:
    """True when the release is deployed with this chart version and exactly these values."""
    p = _run(helm, rel.list_args(), 120, env)
    if p.returncode != 0:
        return False
    try:
        rows = json.loads(p.stdout or "[]") or []
    except ValueError:
        return False
    row = next((r for r in rows if r.get("name") == rel.release), None)
    if not row or row.get("status") != "deployed" or row.get("chart") != f"{rel.chart_name}-{rel.version}":
        return False
    p = _run(helm, rel.get_values_args(), 120, env)
    if p.returncode != 0:
        return False
    try:
        have = json.loads(p.stdout or "null") or {}
    except ValueError:
        return False
    return bool(have == json.loads(json.dumps(rel.values)))


def upgrade_install(helm: str, rel: HelmRelease, values_file: Path, env: dict[str, str] | None = None) -> str:
    """Run helm; returns 'unchanged' or 'installed/upgraded'. ApplyError with helm's message on failure."""
    if deployed(helm, rel, env):
        return "unchanged"
    p = _run(helm, rel.upgrade_args(values_file), rel.timeout + 120, env)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout or "").strip().splitlines()[-8:])
        raise ApplyError(f"helm upgrade --install {rel.release} failed (exit {p.returncode}): {tail}")
    return "installed/upgraded"


def decode_release(secret: dict[str, Any]) -> dict[str, Any] | None:
    """The release record helm 3 keeps in a ``helm.sh/release.v1`` Secret (base64 of gzipped JSON, inside the
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


def deployed_without_helm(kube: Kube, rel: HelmRelease, deadline: Deadline) -> str | None:
    """Without a helm binary: has someone (an operator running the pending command) deployed this chart version
    with these values? Reads helm's release Secrets through the API. Returns the revision, or None."""
    items = kube.list_raw(f"/api/v1/namespaces/{rel.namespace}/secrets",
                          f"owner=helm,name={rel.release},status=deployed", deadline)
    for item in items:
        r = decode_release(item)
        md = ((r or {}).get("chart") or {}).get("metadata") or {}
        if r is None or md.get("name") != rel.chart_name or md.get("version") != rel.version:
            continue
        if (r.get("config") or {}) == json.loads(json.dumps(rel.values)):
            return str(r.get("version") or (item.get("metadata") or {}).get("labels", {}).get("version") or "?")
    return None
