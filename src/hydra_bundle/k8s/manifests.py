"""Kubernetes manifests with site variables: ``${site.domain}``, ``${site.vars.NAME}``, ``${bundle.version}``.

Safe by construction: the YAML is parsed first, then variables are replaced inside string scalars (a value
can never change the document's structure), nothing is evaluated. Rules:

- only names under ``site.`` and ``bundle.`` are variables; any other ``${…}`` (shell in a ConfigMap) is kept;
- an unknown ``site.``/``bundle.`` name is an error naming the file and line;
- a scalar that is exactly one variable takes the variable's type (``addresses: ${site.metallb.addresses}``
  becomes a list); inside a longer string the value must be a string, number or boolean;
- ``$${`` writes a literal ``${``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import SubstError

VAR = re.compile(r"\$\$\{|\$\{((?:site|bundle)\.[A-Za-z0-9_.]*)\}")
_WHOLE = re.compile(r"^\$\{((?:site|bundle)\.[A-Za-z0-9_.]*)\}$")


def site_variables(*, cluster_name: str, domain: str, registry: str, file_server: str, storage_class: str,
                   metallb_addresses: list[str] | None = None, extra: dict[str, Any] | None = None,
                   bundle_name: str = "", bundle_version: str = "") -> dict[str, Any]:
    """Every ``${…}`` variable a site defines for manifests and values (``SiteConfig.variables`` fills it in;
    ``lint`` uses placeholder values)."""
    out: dict[str, Any] = {"site.cluster_name": cluster_name, "site.domain": domain, "site.registry": registry,
                           "site.file_server": file_server, "site.storage_class": storage_class}
    if metallb_addresses is not None:
        out["site.metallb.addresses"] = list(metallb_addresses)
    for k, v in (extra or {}).items():
        out[f"site.vars.{k}"] = v
    if bundle_name:
        out["bundle.name"] = bundle_name
    if bundle_version:
        out["bundle.version"] = bundle_version
    return out


def _unknown(name: str, variables: dict[str, Any]) -> str:
    known = ", ".join(sorted(variables)) or "none"
    return f"unknown variable ${{{name}}} (defined: {known})"


def substitute(value: str, variables: dict[str, Any], where: str | Callable[[int], str]) -> Any:
    """Replace variables in one string. ``where`` (``file:line``, or a function of the match offset returning
    it, for multi-line scalars) prefixes errors."""
    if "${" not in value:
        return value

    def at(offset: int) -> str:
        return where(offset) if callable(where) else where

    m = _WHOLE.match(value)
    if m:
        name = m.group(1)
        if name not in variables:
            raise SubstError([f"{at(0)}: {_unknown(name, variables)}"])
        return variables[name]

    def repl(mm: re.Match[str]) -> str:
        if mm.group(0) == "$${":
            return "${"
        name = mm.group(1)
        if name not in variables:
            raise SubstError([f"{at(mm.start())}: {_unknown(name, variables)}"])
        v = variables[name]
        if isinstance(v, list | dict):
            raise SubstError([f"{at(mm.start())}: ${{{name}}} is a list; use it as the whole value, not inside a "
                              f"string"])
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    return VAR.sub(repl, value)


def substitute_data(data: Any, variables: dict[str, Any], where: str) -> Any:
    """Walk dicts/lists (values only, not keys); ``where`` names the place (``spec deploy.steps[2].chart``)."""
    if isinstance(data, str):
        return substitute(data, variables, where)
    if isinstance(data, dict):
        return {k: substitute_data(v, variables, f"{where}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_data(v, variables, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


@dataclass
class ManifestDoc:
    """One Kubernetes object from a manifest file, after substitution."""

    obj: dict[str, Any]
    file: str
    line: int        # first line of the document
    index: int       # document number in the file (0-based)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _construct(node: yaml.Node, loader: yaml.SafeLoader, variables: dict[str, Any], fname: str,
               problems: list[str]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                problems.append(f"{fname}:{k.start_mark.line + 1}: YAML merge keys are not supported")
                continue
            key = loader.construct_object(k, deep=True)
            if key in out:
                problems.append(f"{fname}:{k.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _construct(v, loader, variables, fname, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, variables, fname, problems) for item in node.value]
    value = loader.construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        # block scalars (| >) start on the line after the indicator; count lines inside the value
        first = node.start_mark.line + 1 + (1 if getattr(node, "style", None) in ("|", ">") else 0)
        try:
            return substitute(value, variables, lambda off: f"{fname}:{first + value.count(chr(10), 0, off)}")
        except SubstError as e:
            problems.extend(e.problems)
    return value


def parse_manifests(text: str, fname: str, variables: dict[str, Any]) -> list[ManifestDoc]:
    """Every object in a multi-document YAML file (``kind: List`` expanded), variables substituted.

    Errors (YAML, unknown variables, documents that are not objects) name ``file:line``."""
    problems: list[str] = []
    docs: list[ManifestDoc] = []
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        line = (e.problem_mark.line + 1) if e.problem_mark else 1
        raise SubstError([f"{fname}:{line}: not valid YAML: {e.problem}"]) from None
    except yaml.YAMLError as e:
        raise SubstError([f"{fname}:1: not valid YAML: {e}"]) from None
    for i, node in enumerate(nodes):
        line = node.start_mark.line + 1
        obj = _construct(node, yaml.SafeLoader(""), variables, fname, problems)
        if obj is None:
            continue
        if not isinstance(obj, dict):
            problems.append(f"{fname}:{line}: document {i} is not a mapping (a Kubernetes object)")
            continue
        items = obj.get("items") if obj.get("kind") == "List" else [obj]
        for o in items if isinstance(items, list) else []:
            where = f"{fname}:{line}"
            if not isinstance(o, dict):
                problems.append(f"{where}: List item is not an object")
                continue
            missing = [k for k in ("apiVersion", "kind") if not isinstance(o.get(k), str) or not o.get(k)]
            md = o.get("metadata")
            if not isinstance(md, dict) or not isinstance(md.get("name"), str) or not md.get("name"):
                missing.append("metadata.name")
            if missing:
                problems.append(f"{where}: document {i}: missing {', '.join(missing)}")
                continue
            docs.append(ManifestDoc(o, fname, line, i))
    if problems:
        raise SubstError(problems)
    return docs
