"""Agent-kit test support: this host's dependency wheels, downloaded once and kept across runs, and wheelhouses
for ``--agent-wheelhouse`` holding them plus one hydra-bundle wheel (this tree's, or another version).

The dependency wheels are resolved exactly as a build resolves them (``resolve_wheels``: the agent's requirements
for this host's target, the versions installed here as constraints) into ``~/.cache/hydra-bundle-tests/kit``
(``HYDRA_BUNDLE_TEST_CACHE`` moves it), keyed by those inputs: PyPI is asked once per dependency change, and a
build from a wheelhouse runs pip with ``--no-index``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from hydra_bundle.builder.kit import (
    PLATFORMS,
    KitOptions,
    constraints,
    own_wheel,
    requirements,
    resolve_wheels,
    target_name,
)
from tests.support.kitwheels import versioned_wheel

HOST_PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST_PLATFORM = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}.get(platform.machine(), "linux/amd64")
HOST_TARGET = target_name(HOST_PLATFORM, HOST_PYTHON)


def cache_root() -> Path:
    base = os.environ.get("HYDRA_BUNDLE_TEST_CACHE") or str(Path.home() / ".cache" / "hydra-bundle-tests")
    return Path(base) / "kit"


def dependency_wheels() -> list[Path]:
    """The runtime dependency wheels (and pip) for this host's target; downloaded on first use only."""
    import importlib.metadata

    metadata = importlib.metadata.distribution("hydra-bundle").read_text("METADATA") or ""
    reqs = requirements(metadata, HOST_PYTHON, PLATFORMS[HOST_PLATFORM][0])
    target_dir = cache_root() / HOST_TARGET.replace("/", "-").replace(" ", "-")
    return resolve_wheels(target_dir, HOST_PLATFORM, HOST_PYTHON, reqs, constraints(), KitOptions(),
                          lambda msg: print(msg, file=sys.stderr))


def wheelhouse(dest: Path, version: str | None = None, broken: bool = False) -> Path:
    """``dest``: links to the dependency wheels plus hydra-bundle's wheel (this tree's code; ``version`` renumbers
    it, ``broken`` makes its ``agent run`` fail at import)."""
    dest.mkdir(parents=True, exist_ok=True)
    for w in dependency_wheels():
        link = dest / w.name
        if not link.exists():
            link.symlink_to(w)
    own = dest.parent / f".own-{dest.name}"
    wheel = versioned_wheel(own, version, broken) if version else own_wheel(own)
    (dest / wheel.name).unlink(missing_ok=True)
    (dest / wheel.name).symlink_to(wheel)
    return dest
