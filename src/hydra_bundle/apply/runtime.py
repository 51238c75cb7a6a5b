"""What apply steps need at run time: the site, the owning bundle, connections made on first use, and a sleep
the agent can cancel. One per apply run, built by the agent; ``close()`` when done."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Cancelled
from ..k8s.nodes import gpu_nodes
from ..k8s.objects import BundleInfo
from ..retry import Deadline
from .site import SiteConfig

if TYPE_CHECKING:
    from .applier import Applier
    from .helm import Helm
    from .kube import Kube

GPU_CHECK_SECONDS = 60.0


class Runtime:
    """Connections are made lazily, so a bundle with only SQL never needs a cluster and vice versa."""

    def __init__(self, site: SiteConfig, bundle: BundleInfo, *, state_dir: Path | None = None,
                 log: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
                 kube_factory: Callable[[Runtime], Kube] | None = None, poll_interval: float = 1.0,
                 tls_dir: Path | None = None, blob_file: Callable[[str], Path | None] | None = None):
        self.site = site
        self.bundle = bundle
        self.state_dir = state_dir      # where helm values files are kept (pending commands reference them)
        self.tls_dir = tls_dir          # the site CA (tls steps without site.tls files)
        self.log = log or (lambda _msg: None)
        self.cancel = cancel or threading.Event()
        self.poll_interval = poll_interval
        self.blob_file = blob_file or (lambda _digest: None)  # a blob of the content store (charts install from it)
        self._kube_factory = kube_factory
        self._kube: Kube | None = None
        self._applier: Applier | None = None
        self._helm: Helm | None = None
        self._gpu_nodes: list[str] | None = None

    def kube(self) -> Kube:
        """The cluster adapter (built on first use from ``site``; retries sleep with :meth:`sleep`)."""
        if self._kube is None:
            if self._kube_factory is not None:
                self._kube = self._kube_factory(self)
            else:
                from .kube import Kube

                self._kube = Kube.from_site(self.site, log=self.log, sleep=self.sleep)
        return self._kube

    def applier(self) -> Applier:
        """Applies objects through :meth:`kube`; what it learns about the server holds for the whole run."""
        if self._applier is None:
            from .applier import Applier

            self._applier = Applier(self.kube())
        return self._applier

    def helm(self) -> Helm:
        """Releases through the in-process Helm library (ApplyError when it cannot load: ``helm.unavailable``)."""
        if self._helm is None:
            from .helm import Helm

            self._helm = Helm(self.site, self.cancel)
        return self._helm

    def gpu_nodes(self) -> list[str]:
        """Nodes with real (not simulated) nvidia.com/gpu; evaluated once per run so steps agree."""
        if self._gpu_nodes is None:
            self._gpu_nodes = gpu_nodes(self.kube().nodes(Deadline(GPU_CHECK_SECONDS)))
        return self._gpu_nodes

    def sleep(self, seconds: float) -> None:
        """Wait, unless the agent is stopping (then :class:`~hydra_bundle.errors.Cancelled`)."""
        if self.cancel.wait(seconds):
            raise Cancelled("cancelled: the agent is stopping")

    def close(self) -> None:
        if self._kube is not None:
            self._kube.close()
            self._kube = self._applier = None
