"""The step contract the agent journals: a name, an offline ``plan()``, an idempotent ``run()``, progress events.

Contract (what the agent's journal does with a step):

- ``step.name`` is unique within a bundle's plan; ``step.kind`` is one of manifests, label-nodes, chart, sql,
  warmup, wait-for, tls, prune. ``step.plan()`` returns the :class:`Action` list; it never touches the network.
  ``step.notes`` are operator notes from the spec (shown with the plan; the agent adds them to the result of a
  done or pending step).
- ``step.run(rt, progress)`` does the work and returns a :class:`StepResult` (``done`` | ``pending`` |
  ``skipped``; ``pending`` carries the exact ``command`` an operator must run). Running it again after a crash
  or on a later ``agent apply`` converges to the same end state (server-side apply, select-then-upsert in one
  transaction, ``helm upgrade --install``).
- Failures raise :class:`ApplyError`; :class:`TransientError` (a subclass) means "infrastructure not reachable
  (API server, MySQL) within the step's timeout": the journal should retry the step later; :class:`Cancelled`
  (a subclass) means ``Runtime.cancel`` was set while the step waited: run it again on the next start.
- ``progress`` receives :class:`ProgressEvent` (message, done/total); it may raise to abort (the step stops
  between actions; nothing is left half-written that a re-run would not fix).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import HydraError

if TYPE_CHECKING:
    from .deploy_spec import SiteConfig
    from .kube import Kube


class ApplyError(HydraError):
    """A step failed; the message says what and where."""


class TransientError(ApplyError):
    """The API server or database was not reachable within the step's timeout; retry the step later."""


class Cancelled(ApplyError):
    """``Runtime.cancel`` was set (the agent is stopping); the step can simply be run again later."""


@dataclass(frozen=True)
class Action:
    """One thing a step will do, for ``agent plan`` (text and --json)."""

    step: str
    op: str               # apply | wait | label-node | secret | helm | sql-upsert | dataset | prune | check
    target: str           # "Gateway default/gateway", "mysql hydra.vendor name='alibaba'", …
    detail: str = ""
    when: str | None = None

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class StepResult:
    state: Literal["done", "pending", "skipped"]
    summary: str
    changes: list[str] = field(default_factory=list)   # what changed ("created Gateway default/gateway")
    notes: list[str] = field(default_factory=list)     # warnings the operator should read (CEL not enforced…)
    command: list[str] | None = None                   # pending: the exact command to run
    outputs: dict[str, Any] = field(default_factory=dict)  # e.g. LoadBalancer addresses, Dataset phase

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "summary": self.summary}
        for k in ("changes", "notes", "command", "outputs"):
            v = getattr(self, k)
            if v:
                out[k] = v
        return out


@dataclass(frozen=True)
class ProgressEvent:
    step: str
    message: str
    done: int | None = None
    total: int | None = None


Progress = Callable[[ProgressEvent], None]


def no_progress(_: ProgressEvent) -> None:
    pass


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    digest: str = ""      # the index digest (or spec digest) recorded in an annotation on every object


class Step:
    """Base class of every apply step (see the module docstring for the contract)."""

    kind = "step"

    def __init__(self, name: str, *, when: str = "always", timeout: float = 600.0):
        self.name = name
        self.when = when
        self.timeout = timeout
        self.notes: list[str] = []      # operator notes from the spec (``notes:``), site values substituted

    def plan(self) -> list[Action]:
        raise NotImplementedError

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON for ``agent plan --json`` and the journal: name, kind, condition, timeout, actions."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "timeout": self.timeout,
                               "actions": [a.json() for a in self.plan()]}
        if self.when != "always":
            out["when"] = self.when
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def _action(self, op: str, target: str, detail: str = "") -> Action:
        return Action(self.name, op, target, detail, WHEN_TEXT.get(self.when))

    def _skip_reason(self, rt: Runtime) -> str | None:
        """None when the step's condition holds, else why it is skipped."""
        if self.when == "always":
            return None
        gpus = rt.gpu_nodes()
        if self.when == "no-gpu" and gpus:
            verb = "advertises" if len(gpus) == 1 else "advertise"
            return f"the cluster has GPUs ({', '.join(gpus[:3])} {verb} nvidia.com/gpu)"
        if self.when == "gpu" and not gpus:
            return "no node advertises nvidia.com/gpu"
        return None


WHEN_TEXT = {"no-gpu": "no node advertises nvidia.com/gpu", "gpu": "some node advertises nvidia.com/gpu"}


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


class Runtime:
    """What steps need at run time; one per apply run, built by the agent. Connections are made lazily, so a
    bundle with only SQL never needs a cluster and vice versa. ``close()`` when done."""

    def __init__(self, site: SiteConfig, bundle: BundleInfo, *, state_dir: Path | None = None,
                 log: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
                 kube_factory: Callable[[], Kube] | None = None, poll_interval: float = 1.0,
                 tls_dir: Path | None = None):
        self.site = site
        self.bundle = bundle
        self.state_dir = state_dir      # where helm values files are kept (pending commands reference them)
        self.tls_dir = tls_dir          # the site CA (tls steps without site.tls files)
        self.log = log or (lambda _msg: None)
        self.cancel = cancel or threading.Event()
        self.poll_interval = poll_interval
        self._kube_factory = kube_factory
        self._kube: Kube | None = None
        self._gpu_nodes: list[str] | None = None

    # -- connections ----------------------------------------------------------------------------------
    def kube(self) -> Kube:
        if self._kube is None:
            if self._kube_factory is not None:
                self._kube = self._kube_factory()
            else:
                from .kube import Kube

                self._kube = Kube.from_site(self.site, log=self.log)
        return self._kube

    def gpu_nodes(self) -> list[str]:
        """Nodes with real (not simulated) nvidia.com/gpu; evaluated once per run so steps agree."""
        if self._gpu_nodes is None:
            self._gpu_nodes = self.kube().gpu_nodes()
        return self._gpu_nodes

    def helm_binary(self) -> str | None:
        if self.site.helm is not None:
            p = self.site.helm
            if not p.is_file():
                raise ApplyError(f"site.helm: {p} does not exist")
            return str(p)
        return shutil.which("helm")

    # -- timing ---------------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled("cancelled: the agent is stopping")

    def close(self) -> None:
        if self._kube is not None:
            self._kube.close()
            self._kube = None


def poll_delays(poll: float, first: float = 0.1) -> Iterator[float]:
    """Waits between readiness checks: 0.1, 0.2, 0.4 … up to ``poll`` seconds. Most objects are ready within
    moments of being applied, so a fixed 1 s first wait was most of an apply's time; slow ones still settle
    into one check per ``poll``."""
    d = min(first, poll)
    while True:
        yield d
        d = min(d * 2, poll)


def brief(e: BaseException) -> str:
    """One line for an exception (urllib3/pymysql messages can be long)."""
    s = str(e).strip().splitlines()
    text = s[0] if s else type(e).__name__
    return text[:300]
