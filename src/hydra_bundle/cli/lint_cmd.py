"""``hydra-bundle lint``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..builder.cache import default_cache_dir
from ..lint import lint
from ..spec.buildvars import parse_sets
from .common import emit_json, handle_errors


@click.command("lint")
@click.argument("spec", type=click.Path(path_type=Path), default="bundle-spec.yaml")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Build variable value (repeatable).")
@click.option("--search", "search", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory holding pinned content (CRDs, charts) to check offline, found by sha256 or "
                   "<chart>-<version>.tgz (repeatable).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Build cache to look in [default: ~/.cache/hydra-bundle].")
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def lint_cmd(spec: Path, sets: tuple[str, ...], search: tuple[Path, ...], cache_dir: Path | None, strict: bool,
             as_json: bool) -> None:
    """Check SPEC offline: schema, pins, manifests, site variables, and that every image is listed."""
    rep = lint(spec, parse_sets(sets), cache_dir or default_cache_dir(), search)
    failed = bool(rep.errors or (strict and rep.warnings))
    if as_json:
        emit_json({"ok": not failed, "errors": rep.errors, "warnings": rep.warnings, "notes": rep.notes,
                   "siteVars": sorted(rep.site_vars)})
    else:
        for e in rep.errors:
            click.echo(e, err=True)
        for w in rep.warnings:
            click.echo(f"warning: {w}", err=True)
        for n in rep.notes:
            click.echo(f"note: {n}", err=True)
        click.echo(f"{spec}: {'FAILED' if failed else 'OK'} ({len(rep.errors)} errors, {len(rep.warnings)} warnings)")
    if failed:
        sys.exit(1)
