"""Build variables: ``${vars.NAME}`` in any string of the spec, declared under ``vars:`` and given with
``--set NAME=VALUE`` (for inputs only the operator knows, such as the runbook's NFS installer URL and pin).

Substitution happens on the parsed YAML (a value can never change the document's structure) before the
schema is checked, so a bad value is reported at the line that uses it. ``${site.…}`` is left alone: those
are the agent's site values, substituted on site.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import SpecError
from .yamlmodel import LineOf, fmt_loc

_VAR = re.compile(r"\$\{vars\.([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_sets(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, val = v.partition("=")
        if not sep or not _NAME.match(name):
            raise SpecError([f"--set {v!r}: expected NAME=VALUE"])
        out[name] = val
    return out


def resolve(data: Any, given: dict[str, str], fname: str, line_of: LineOf, use_examples: bool = False
            ) -> tuple[Any, list[str]]:
    """Substitute ``${vars.NAME}`` in ``data``. Returns (data, names that used their ``example``)."""
    if not isinstance(data, dict):
        return data, []
    declared = data.get("vars") or {}
    problems: list[str] = []
    if not isinstance(declared, dict):
        return data, []
    for name in given:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(f"{fname}:1: vars: --set {name}: not declared under vars: (declared: {known})")
    values: dict[str, str] = {}
    examples_used: list[str] = []
    for name, decl in declared.items():
        decl = decl if isinstance(decl, dict) else {}
        if name in given:
            values[name] = given[name]
        elif decl.get("default") is not None:
            values[name] = str(decl["default"])
        elif use_examples and decl.get("example") is not None:
            values[name] = str(decl["example"])
            examples_used.append(name)

    def walk(node: Any, loc: tuple[str | int, ...]) -> Any:
        if isinstance(node, dict):
            return {k: (v if loc == () and k == "vars" else walk(v, (*loc, k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${vars." in node:
            def repl(m: re.Match[str]) -> str:
                name = m.group(1)
                if name not in declared:
                    problems.append(f"{fname}:{line_of(loc)}: {_fmt(loc)}: unknown build variable vars.{name} "
                                    f"(declare it under vars:)")
                    return m.group(0)
                if name not in values:
                    problems.append(f"{fname}:{line_of(loc)}: {_fmt(loc)}: build variable vars.{name} has no "
                                    f"value: pass --set {name}=VALUE")
                    return m.group(0)
                return values[name]
            return _VAR.sub(repl, node)
        return node

    out = walk(data, ())
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return out, examples_used


def _fmt(loc: tuple[str | int, ...]) -> str:
    return fmt_loc(loc)
