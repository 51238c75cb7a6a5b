"""One source per kind of content (like Hauler's getters): registry images, ``docker-daemon:`` images, charts,
manifests and files, models. The rest of the builder never asks where bytes came from: each source yields
BlobTasks and, once the cache holds them, a finished component."""

from __future__ import annotations

from ...spec.model import BundleSpec
from ..context import Context
from .charts import ChartSource
from .docker import DockerDaemonSource
from .files import FileSource
from .images import ImageSource
from .models import ModelSource

Source = ImageSource | DockerDaemonSource | ChartSource | FileSource | ModelSource


def make_sources(spec: BundleSpec, ctx: Context) -> list[Source]:
    out: list[Source] = []
    out += [DockerDaemonSource(s, ctx) if s.ref.startswith("docker-daemon:") else ImageSource(s, ctx)
            for s in spec.images]
    out += [ChartSource(s, ctx) for s in spec.charts]
    out += [FileSource(s, ctx, "manifests") for s in spec.manifests]
    out += [FileSource(s, ctx, "files") for s in spec.files]
    out += [ModelSource(s, ctx) for s in spec.models]
    return out
