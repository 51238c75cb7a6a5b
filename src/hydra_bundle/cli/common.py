"""Shared CLI plumbing: one clear line per error, exit codes, reporters, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import HydraError, SpecError
from ..progress import PlainReporter, QuietReporter, Reporter, RichReporter

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn typed errors into one line on stderr (one per problem for specs) and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            for p in e.problems:
                click.echo(p, err=True)
            sys.exit(e.exit_code)
        except HydraError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def reporter(quiet: bool, as_json: bool) -> Reporter:
    if quiet or as_json:
        return QuietReporter()
    return RichReporter() if sys.stderr.isatty() else PlainReporter()


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False))
