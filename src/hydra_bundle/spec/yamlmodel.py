"""YAML → pydantic with positions: every problem is reported as ``file:line: field.path: message``.

PyYAML's composer keeps marks on nodes; we build plain Python data from the node tree while recording
the line of every key and sequence item, then map pydantic's error locations back to those lines.
Duplicate keys (silently merged by PyYAML) are reported as errors too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..errors import SpecError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]  # pydantic error locations: field names, list indexes, dict keys of any scalar type
LineOf = Callable[[Loc], int]                   # the YAML line of a location
Transform = Callable[[Any, LineOf], Any]        # rewrites the parsed data before validation (build variables)


class _Positions:
    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}

    def line(self, loc: Loc) -> int:
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc, 1)


MAX_NODES = 1_000_000  # after alias expansion ("billion laughs" documents are refused, not expanded)
MAX_DEPTH = 64


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0
        self.active: set[int] = set()   # ids of the collection nodes being built (a recursive alias loops back)


def _scalar(node: yaml.Node, fname: str) -> Any:
    try:
        return yaml.SafeLoader.construct_object(_LOADER, node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:  # !!int abc, !foo, !!timestamp 2020-13-45
        what = getattr(e, "problem", None) or str(e)
        raise SpecError([f"{fname}:{node.start_mark.line + 1}: cannot read {node.tag!r} value: {what}"]) from None


def _construct(node: yaml.Node, loc: Loc, pos: _Positions, problems: list[str], fname: str,
               budget: _Budget | None = None) -> Any:
    budget = budget or _Budget()
    budget.nodes += 1
    line = node.start_mark.line + 1
    if budget.nodes > MAX_NODES:
        raise SpecError([f"{fname}:{line}: document has more than {MAX_NODES} values (YAML aliases expanded)"])
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        return _scalar(node, fname)
    if len(loc) >= MAX_DEPTH or id(node) in budget.active:
        why = f"nested deeper than {MAX_DEPTH} levels" if len(loc) >= MAX_DEPTH else "recursive YAML alias"
        raise SpecError([f"{fname}:{line}: {fmt_loc(loc)}: {why}"])
    budget.active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                sub = (*loc, i)
                pos.lines[sub] = item.start_mark.line + 1
                items.append(_construct(item, sub, pos, problems, fname, budget))
            return items
        out: dict[Any, Any] = {}
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                problems.append(f"{fname}:{k.start_mark.line + 1}: {fmt_loc(loc)}: YAML merge keys are not supported")
                continue
            key = _scalar(k, fname) if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(k, yaml.ScalarNode) or isinstance(key, list | dict | set):
                problems.append(f"{fname}:{k.start_mark.line + 1}: {fmt_loc(loc)}: keys must be scalars")
                continue
            if key in out:
                problems.append(f"{fname}:{k.start_mark.line + 1}: {fmt_loc((*loc, key))}: duplicate key")
            sub = (*loc, key)
            pos.lines[sub] = k.start_mark.line + 1
            out[key] = _construct(v, sub, pos, problems, fname, budget)
        return out
    finally:
        budget.active.discard(id(node))


_LOADER = yaml.SafeLoader("")


def fmt_loc(loc: Loc) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def parse_yaml(text: str, fname: str) -> tuple[Any, _Positions]:
    pos = _Positions()
    problems: list[str] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError([f"{fname}:1: not valid YAML: nested too deeply"]) from None
    except yaml.MarkedYAMLError as e:
        line = (e.problem_mark.line + 1) if e.problem_mark else 1
        raise SpecError([f"{fname}:{line}: not valid YAML: {e.problem}"]) from None
    except yaml.YAMLError as e:
        raise SpecError([f"{fname}:1: not valid YAML: {e}"]) from None
    if node is None:
        raise SpecError([f"{fname}:1: file is empty"])
    data = _construct(node, (), pos, problems, fname)
    if problems:
        raise SpecError(problems)
    return data, pos


def _message(err: ErrorDetails) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    return msg


def validate(model: type[M], data: Any, pos: _Positions, fname: str, context: dict[str, Any] | None = None) -> M:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        problems = []
        seen = set()
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            line = pos.line(loc)
            text = f"{fname}:{line}: {fmt_loc(loc)}: {_message(err)}"
            if text not in seen:
                seen.add(text)
                problems.append(text)
        raise SpecError(problems) from None


def load_yaml_model(path: str | os.PathLike[str], model: type[M], context: dict[str, Any] | None = None,
                    transform: Transform | None = None) -> M:
    """Load and validate a YAML file; every problem names ``file:line: field``.

    A model may define ``cross_checks()`` returning ``[(loc, message)]`` for rules that span items.
    ``transform(data, line_of)`` may rewrite the parsed data before validation (build variables)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError([f"{p}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise SpecError([f"{p}:1: not UTF-8 text"]) from None
    data, pos = parse_yaml(text, str(path))
    if transform is not None:
        data = transform(data, pos.line)
    obj = validate(model, data, pos, str(path), context)
    if hasattr(obj, "_lines"):
        obj._lines = pos
    checks = getattr(obj, "cross_checks", None)
    if checks:
        problems = [f"{path}:{pos.line(loc)}: {fmt_loc(loc)}: {msg}" for loc, msg in checks()]
        if problems:
            raise SpecError(problems)
    return obj
