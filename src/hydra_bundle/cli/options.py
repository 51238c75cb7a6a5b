"""Options shared by the commands that fetch content (``build``, ``lock``) and their parsing into
:class:`~hydra_bundle.builder.build.BuildOptions`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import UsageError

if TYPE_CHECKING:
    from ..builder.build import BuildOptions

F = TypeVar("F", bound=Callable[..., Any])

_source_options = [
    click.option("--insecure-registry", "insecure", multiple=True, metavar="HOST:PORT",
                 help="Reach this registry over plain HTTP (repeatable)."),
    click.option("--mirror", "mirrors", multiple=True, metavar="SRC=DST",
                 help="Pull SRC registry content through DST (host[:port][/prefix]); repeatable."),
    click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
                 help="Content-addressed blob cache [default: ~/.cache/hydra-bundle]."),
    click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH",
                 help="Override the spec's platforms (repeatable), e.g. --platform linux/arm64."),
    click.option("--jobs", "-j", type=click.IntRange(1, 32), default=4, show_default=True,
                 help="Parallel downloads."),
    click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="CA bundle for HTTPS registries and servers."),
    click.option("--set", "sets", multiple=True, metavar="NAME=VALUE",
                 help="Value of a build variable declared under `vars:` in the spec (repeatable)."),
    click.option("--quiet", "-q", is_flag=True, help="No progress output."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
]


def source_options(fn: F) -> F:
    for opt in reversed(_source_options):
        fn = opt(fn)
    return fn


def build_options(cache_dir: Path | None, insecure: tuple[str, ...], mirrors: tuple[str, ...],
             platforms: tuple[str, ...], jobs: int, tls_ca: str | None, **kw: Any) -> BuildOptions:
    from ..builder.build import BuildOptions  # here: `verify`/`inspect` never import the builder
    from ..builder.cache import default_cache_dir

    return BuildOptions(cache_dir=cache_dir or default_cache_dir(), insecure=parse_insecure(insecure),
                        mirrors=parse_mirrors(mirrors), platforms=list(platforms) or None, jobs=jobs,
                        verify_tls=tls_ca or True, **kw)


def parse_insecure(values: Iterable[str]) -> set[str]:
    out = set()
    for v in values:
        if "/" in v or not v:
            raise UsageError(f"--insecure-registry {v!r}: expected HOST:PORT")
        out.add(v)
    return out


def parse_mirrors(values: Iterable[str]) -> dict[str, str]:
    """``REGISTRY=HOST[:PORT][/PREFIX]`` for registries; ``URLPREFIX=URLPREFIX`` (both http[s]://) for files,
    charts and models fetched over HTTP (Artifactory/Nexus generic remotes, hf-mirror)."""
    out = {}
    for v in values:
        src, sep, dst = v.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise UsageError(f"--mirror {v!r}: expected SRC=DST, e.g. docker.io=harbor.example.com/dockerhub")
        if "://" in src:
            if "://" not in dst:
                raise UsageError(f"--mirror {v!r}: a URL prefix must map to a URL prefix")
            out[src] = dst
        else:
            out[src] = dst.removeprefix("https://").removeprefix("http://").rstrip("/")
    return out
