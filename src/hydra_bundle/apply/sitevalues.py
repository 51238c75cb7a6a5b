"""Per-site values files (``site.values``): what a site changes in a chart's values without rebuilding the bundle
(a replica count, a node selector, an internal hostname).

``site.values`` maps a deploy step name (``chart-istiod``) or a Helm release name (``istiod``) to one file or a
list of them; the step name wins when both are given. Each file is a YAML mapping, deep-merged in order over the
values the bundle gives the release (the spec chart's ``values`` ⊕ the step's ``values`` ⊕ the rewritten image and
registry paths), so the site has the last word; ``${site.*}`` variables are substituted afterwards, as in the
bundle's values. The files are read when the plan is built; their sha256 goes into the plan and the journal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from ..spec.yamlmodel import parse_yaml
from .release import deep_merge


@dataclass(frozen=True)
class ValuesFile:
    key: str            # the site.values key that selected it
    path: Path
    sha256: str

    def json(self) -> dict[str, str]:
        return {"key": self.key, "path": str(self.path), "sha256": self.sha256}


def files_for(site_values: dict[str, list[Path]], step_name: str, release: str) -> tuple[str, list[Path]] | None:
    """(key, files) of the site values that apply to a chart step, or None."""
    for key in (step_name, release):
        if key in site_values:
            return key, site_values[key]
    return None


def read_values_file(key: str, path: Path) -> tuple[dict[str, Any], ValuesFile]:
    """One values file: a YAML mapping (empty means none). Errors name ``site.values.KEY`` and the file's line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError([f"site.values.{key}: cannot read {path}: {e.strerror or e}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([f"{path}:1: site.values.{key}: not UTF-8 text"]) from None
    vf = ValuesFile(key, path, "sha256:" + hashlib.sha256(data).hexdigest())
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        return {}, vf
    values, _ = parse_yaml(text, str(path))
    if values is None:
        return {}, vf
    if not isinstance(values, dict):
        raise SpecError([f"{path}:1: site.values.{key}: a values file is a mapping (key: value), not a "
                         f"{type(values).__name__}"])
    return values, vf


def overlay(values: dict[str, Any], site_values: dict[str, list[Path]], step_name: str,
            release: str) -> tuple[dict[str, Any], list[ValuesFile]]:
    """The bundle's values with the site's files merged over them, and which files those were."""
    found = files_for(site_values, step_name, release)
    if found is None:
        return values, []
    key, paths = found
    used = []
    for p in paths:
        over, vf = read_values_file(key, p)
        values = deep_merge(values, over)
        used.append(vf)
    return values, used


def flat(values: Any, prefix: str = "") -> list[str]:
    """``a.b.c: value`` lines, one per leaf (lists and empty mappings are leaves), for ``agent plan``."""
    if isinstance(values, dict) and values:
        out = []
        for k, v in values.items():
            out += flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    text = yaml.safe_dump(values, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    text = text.removesuffix("...").strip()
    return [f"{prefix or '(values)'}: {text}"]
