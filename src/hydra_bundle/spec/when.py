"""A deploy step's ``when:``: the three literals (``always``, ``gpu``, ``no-gpu``) or a small expression over the
site's values and the cluster's GPUs, e.g. ``"not site.vars.mesh"``, ``"'istio' in site.enable and not gpu"``.

No code runs: the text is parsed with :mod:`ast` and only this grammar is accepted —

- ``site.NAME`` for NAME in :data:`SITE_NAMES` (``site.vars.X`` for any site variable; an unset one is ``null``),
  and ``gpu`` (some node advertises ``nvidia.com/gpu``; simulated GPU nodes do not count);
- constants (strings, numbers, ``true``/``false``/``null`` or Python's spellings) and lists of them;
- comparisons ``==``, ``!=``, ``in``, ``not in`` (``x in null`` is false), and ``and``, ``or``, ``not``.

Evaluation is three-valued so a plan can decide what it can before the cluster is asked: ``gpu`` is
:data:`UNKNOWN` until the step runs, and ``site.x == 'a' and gpu`` is already false on a site where x is 'b'.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LITERALS = ("always", "no-gpu", "gpu")
MAX_LENGTH = 500
# the site values an expression may name (``SiteConfig.facts()`` provides exactly these)
SITE_NAMES = ("cluster_name", "domain", "registry", "registry_scheme", "file_server", "storage_class",
              "in_cluster", "mysql", "metallb", "tls", "enable", "vars")
_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class _Unknown:
    """The value of ``gpu`` before the cluster has been asked."""

    def __repr__(self) -> str:
        return "unknown"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Condition:
    """A parsed ``when:``. ``text`` is what the spec says (kept as is in the signed index and in plans)."""

    text: str
    tree: ast.expr | None                      # None for ``always``
    site_names: tuple[str, ...] = field(default=())   # ``site.domain``, ``site.vars.x`` … in order of appearance
    uses_gpu: bool = False

    @property
    def literal(self) -> bool:
        return self.text in LITERALS

    def evaluate(self, site: Mapping[str, Any], gpu: Callable[[], bool] | None = None) -> Any:
        """True, False, or :data:`UNKNOWN` when the answer needs ``gpu`` and ``gpu`` is None. ``gpu()`` is only
        called when the answer depends on it."""
        if self.tree is None:
            return True
        memo: dict[str, Any] = {}

        def ask_gpu() -> Any:
            if gpu is None:
                return UNKNOWN
            if "gpu" not in memo:
                memo["gpu"] = bool(gpu())
            return memo["gpu"]

        v = _eval(self.tree, site, ask_gpu)
        return v if v is UNKNOWN else _truth(v)

    def bindings(self, site: Mapping[str, Any]) -> dict[str, Any]:
        """The site values the expression names, for a skip reason and the journal."""
        return {n: lookup(site, n) for n in self.site_names}


def lookup(site: Mapping[str, Any], dotted: str) -> Any:
    """``site.vars.x`` → site["vars"]["x"] (None when unset)."""
    node: Any = site
    for part in dotted.split(".")[1:]:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def parse_when(text: str) -> Condition:
    """Parse a ``when:`` value; ValueError with a message naming what is not allowed."""
    text = text.strip()
    if text == "always":
        return Condition(text, None)
    if text == "no-gpu":
        return Condition(text, ast.UnaryOp(ast.Not(), ast.Name("gpu", ast.Load())), (), True)
    if not text:
        raise ValueError("is empty (give always, gpu, no-gpu or an expression such as \"not site.vars.mesh\")")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"{text!r} is not an expression (column {e.offset or 1}): use always, gpu, no-gpu, or "
                         f"site.*/gpu with ==, !=, in, not in, and, or, not") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression is nested too deeply") from None
    names: list[str] = []
    uses_gpu = _check(tree, text, names)
    return Condition(text, tree, tuple(dict.fromkeys(names)), uses_gpu)


def _where(node: ast.AST, text: str) -> str:
    col: int | None = getattr(node, "col_offset", None)
    seg = ast.get_source_segment(text, node) if col is not None else None
    return f"{seg!r} (column {col + 1})" if seg and col is not None else repr(type(node).__name__)


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _check(node: ast.expr, text: str, names: list[str]) -> bool:
    """Refuse anything outside the grammar; collect the site names; True when ``gpu`` is used."""
    if isinstance(node, ast.BoolOp):
        return any([_check(v, text, names) for v in node.values])
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not):
            raise ValueError(f"{_where(node, text)}: only `not` may prefix a value")
        return _check(node.operand, text, names)
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                raise ValueError(f"{_where(node, text)}: only ==, !=, in and not in compare values")
        return any([_check(v, text, names) for v in (node.left, *node.comparators)])
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, str | int | float | bool) and node.value is not None:
            raise ValueError(f"{_where(node, text)}: not a plain value")
        return False
    if isinstance(node, ast.List | ast.Tuple):
        for e in node.elts:
            if not isinstance(e, ast.Constant):
                raise ValueError(f"{_where(e, text)}: lists hold plain values only")
            _check(e, text, names)
        return False
    if isinstance(node, ast.Name):
        if node.id == "gpu":
            return True
        if node.id in _CONSTANTS:
            return False
        if node.id == "site":
            raise ValueError(f"{_where(node, text)}: name a site value, e.g. site.domain")
        raise ValueError(f"{_where(node, text)}: unknown name {node.id!r} (use site.<name>, gpu, true, false, null)")
    if isinstance(node, ast.Attribute):
        dotted = _dotted(node)
        parts = (dotted or "").split(".")
        if not dotted or parts[0] != "site":
            raise ValueError(f"{_where(node, text)}: only site.<name> values may be named")
        if parts[1] not in SITE_NAMES:
            raise ValueError(f"{_where(node, text)}: unknown site value {parts[1]!r} (known: "
                             f"{', '.join(SITE_NAMES)}; site.vars.<name> for site variables)")
        if len(parts) != (3 if parts[1] == "vars" else 2):
            want = "site.vars.<name>" if parts[1] == "vars" else f"site.{parts[1]}"
            raise ValueError(f"{_where(node, text)}: write {want}")
        names.append(dotted)
        return False
    raise ValueError(f"{_where(node, text)}: not allowed in when: (only site.*, gpu, plain values, ==, !=, in, "
                     f"not in, and, or, not)")


def _truth(v: Any) -> bool:
    return bool(v)


def _eval(node: ast.expr, site: Mapping[str, Any], gpu: Callable[[], Any]) -> Any:
    if isinstance(node, ast.BoolOp):
        is_and = isinstance(node.op, ast.And)
        unknown = False
        for sub in node.values:
            v = _eval(sub, site, gpu)
            if v is UNKNOWN:
                unknown = True
            elif _truth(v) != is_and:     # a false under `and`, a true under `or`, decides
                return not is_and
        return UNKNOWN if unknown else is_and
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, site, gpu)
        return v if v is UNKNOWN else not _truth(v)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, site, gpu)
        result: Any = True
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, site, gpu)
            if left is UNKNOWN or right is UNKNOWN:
                r: Any = UNKNOWN
            elif isinstance(op, ast.Eq | ast.NotEq):
                r = (left == right) == isinstance(op, ast.Eq)
            else:
                inside = _contains(right, left)
                r = inside if isinstance(op, ast.In) else not inside
            if r is False:
                return False
            if r is UNKNOWN:
                result = UNKNOWN
            left = right
        return result
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, site, gpu) for e in node.elts]
    if isinstance(node, ast.Name):
        return gpu() if node.id == "gpu" else _CONSTANTS[node.id]
    assert isinstance(node, ast.Attribute)
    return lookup(site, _dotted(node) or "")


def _contains(container: Any, item: Any) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    if isinstance(container, list | tuple | set | dict):
        return item in container
    return False
