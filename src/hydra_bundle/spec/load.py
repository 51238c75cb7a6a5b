"""Load ``bundle-spec.yaml``: build variables substituted on the parsed YAML, then the schema, every problem
reported as ``file:line: field.path: message``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .buildvars import resolve
from .model import BundleSpec
from .yamlmodel import LineOf, load_yaml_model


def load_spec(path: str | os.PathLike[str], variables: dict[str, str] | None = None,
              use_examples: bool = False) -> BundleSpec:
    """Load a bundle spec. ``variables`` are ``--set`` build variables; with ``use_examples`` (lint) a
    variable without a value takes its declared ``example``."""
    examples: list[str] = []

    def transform(data: Any, line_of: LineOf) -> Any:
        out, used = resolve(data, variables or {}, str(path), line_of, use_examples)
        examples.extend(used)
        return out

    spec = load_yaml_model(path, BundleSpec, context={"base_dir": str(Path(path).resolve().parent)},
                           transform=transform)
    spec._path = Path(path).resolve()
    spec._raw = Path(path).read_bytes()
    spec._examples_used = examples
    return spec
