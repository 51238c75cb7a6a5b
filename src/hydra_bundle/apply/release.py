"""A chart release as the deploy step wants it: which chart (the ``.tgz`` in the content store, or its
``oci://`` reference in the site registry), which release name and namespace, and the values.

Values = the spec chart's ``values`` ⊕ the step's ``values`` (deep merge) with ``image_values`` rewritten to the
site registry and ``registry_values`` set to it. When the Helm library cannot load, the same release is given to
the operator as one ``helm upgrade --install`` command (values in a file next to the agent's state)."""

from __future__ import annotations

import copy
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .rewrite import rewrite_image


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
    """The values the release gets (see the module docstring)."""
    values = deep_merge(spec_values, step_values)
    for path, ref in image_values.items():
        set_path(values, path, rewrite_image(ref, site_registry))
    for path in registry_values:
        set_path(values, path, site_registry)
    return values


def values_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``+ path: value`` / ``- path`` / ``~ path: old → new`` lines between two values trees (dotted paths)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"+ {path}: {_short(new[k])}")
            elif k not in new:
                out.append(f"- {path}")
            else:
                out += values_diff(old[k], new[k], path)
        return out
    if old != new:
        return [f"~ {prefix or '(all values)'}: {_short(old)} → {_short(new)}"]
    return []


def _short(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass
class HelmRelease:
    release: str
    namespace: str
    chart: str                 # oci://SITE/path/name: where the site registry serves it
    chart_name: str            # the name in its Chart.yaml (what Helm's release record says)
    version: str
    values: dict[str, Any]
    chart_digest: str = ""     # the chart .tgz in the content store (installed from there when present)
    plain_http: bool = True
    skip_verify: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    wait: bool = True
    timeout: float = 600.0
    create_namespace: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.release

    def cli_args(self, values_file: Path | str) -> list[str]:
        """``helm upgrade --install`` arguments for an operator with a helm binary (the library could not load)."""
        args = ["upgrade", "--install", self.release, self.chart, "--version", self.version,
                "--namespace", self.namespace]
        if self.kubeconfig:
            args += ["--kubeconfig", self.kubeconfig]
        if self.kube_context:
            args += ["--kube-context", self.kube_context]
        if self.create_namespace:
            args.append("--create-namespace")
        args += ["--values", str(values_file)]
        if self.plain_http:
            args.append("--plain-http")
        elif self.skip_verify:
            args.append("--insecure-skip-tls-verify")
        if self.wait:
            args.append("--wait")
        args += ["--atomic", "--timeout", f"{int(self.timeout)}s"]
        return args


def write_values(path: Path, values: dict[str, Any]) -> Path:
    """Write the values file atomically (0600: values may hold site details)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(values, f, allow_unicode=True, sort_keys=False)
    os.replace(tmp, path)
    return path


def command_text(args: list[str]) -> str:
    return shlex.join(["helm", *args])
