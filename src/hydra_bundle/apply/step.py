"""The contract of an apply step, which the agent journals: a name, an offline ``plan()``, an idempotent
``run()``, progress events.

- ``step.name`` is unique within a bundle's plan; ``step.kind`` is one of manifests, label-nodes, chart, sql,
  warmup, wait-for, tls, prune. ``step.plan()`` returns the :class:`Action` list; it never touches the network.
  ``step.notes`` are operator notes from the spec (shown with the plan; the agent adds them to the result of a
  done or pending step).
- ``step.run(rt, progress)`` does the work and returns a :class:`StepResult` (``done`` | ``pending`` |
  ``skipped``; ``pending`` carries the exact ``command`` an operator must run). Running it again after a crash
  or on a later ``agent apply`` converges to the same end state (server-side apply, select-then-upsert in one
  transaction, ``helm upgrade --install``).
- Failures raise :class:`~hydra_bundle.errors.ApplyError` (:class:`~hydra_bundle.errors.TransientError` when the
  API server or MySQL was out of reach within the step's timeout: the journal retries the step later);
  :class:`~hydra_bundle.errors.Cancelled` means the agent is stopping: run the step again on the next start.
- ``progress`` receives :class:`ProgressEvent` (message, done/total); it may raise to abort (the step stops
  between actions; nothing is left half-written that a re-run would not fix).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..k8s.objects import ObjKey
from ..spec.when import parse_when
from ..states import StepState

if TYPE_CHECKING:
    from .runtime import Runtime

WHEN_TEXT = {"no-gpu": "no node advertises nvidia.com/gpu", "gpu": "some node advertises nvidia.com/gpu"}


def when_text(when: str) -> str | None:
    """How a plan shows a condition: the literals in words, an expression as written (None for ``always``)."""
    return WHEN_TEXT.get(when) or (None if when == "always" else when)


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
    state: StepState                                   # DONE, PENDING or SKIPPED
    summary: str
    changes: list[str] = field(default_factory=list)   # what changed ("created Gateway default/gateway")
    notes: list[str] = field(default_factory=list)     # warnings the operator should read (CEL not enforced…)
    command: list[str] | None = None                   # pending: the exact command to run
    outputs: dict[str, Any] = field(default_factory=dict)  # e.g. LoadBalancer addresses, Dataset phase

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": str(self.state), "summary": self.summary}
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


class ApplyStep:
    """Base class of every apply step (see the module docstring for the contract)."""

    kind = "step"

    def __init__(self, name: str, *, when: str = "always", timeout: float = 600.0):
        self.name = name
        self.when = when
        self.timeout = timeout
        self.notes: list[str] = []      # operator notes from the spec (``notes:``), site values substituted
        self.off: str | None = None     # why the plan already knows the step will not run here (optional, when:)
        self.choices: dict[str, Any] = {}   # optional/when/values-files decisions, journaled with the result

    def plan(self) -> list[Action]:
        raise NotImplementedError

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        raise NotImplementedError

    def desired(self) -> list[tuple[ObjKey, str]]:
        """(key, apiVersion) of every object this step owns: what prune keeps."""
        return []

    def describe(self) -> dict[str, Any]:
        """JSON for ``agent plan --json`` and the journal: name, kind, condition, timeout, actions."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "timeout": self.timeout,
                               "actions": [a.json() for a in self.plan()]}
        if self.when != "always":
            out["when"] = self.when
        if self.notes:
            out["notes"] = list(self.notes)
        if self.off is not None:
            out["skipped"] = self.off
        if self.choices:
            out["choices"] = self.choices
        return out

    def _action(self, op: str, target: str, detail: str = "") -> Action:
        return Action(self.name, op, target, detail, when_text(self.when))

    def skipped(self, rt: Runtime) -> StepResult | None:
        """A ``skipped`` result when the step is off on this site or its ``when`` condition does not hold, else
        None."""
        if self.off is not None:
            return StepResult(StepState.SKIPPED, f"skipped: {self.off}")
        if self.when == "always":
            return None
        if self.when not in WHEN_TEXT:
            return self._expression_skip(rt)
        gpus = rt.gpu_nodes()
        why = None
        if self.when == "no-gpu" and gpus:
            verb = "advertises" if len(gpus) == 1 else "advertise"
            why = f"the cluster has GPUs ({', '.join(gpus[:3])} {verb} nvidia.com/gpu)"
        elif self.when == "gpu" and not gpus:
            why = "no node advertises nvidia.com/gpu"
        return StepResult(StepState.SKIPPED, f"skipped: {why}") if why else None

    def _expression_skip(self, rt: Runtime) -> StepResult | None:
        """A ``when:`` expression the plan could not decide from the site alone (it names ``gpu``)."""
        cond = parse_when(self.when)
        facts = rt.site.facts()
        asked: dict[str, bool] = {}

        def gpu() -> bool:
            asked["gpu"] = bool(rt.gpu_nodes())
            return asked["gpu"]

        value = bool(cond.evaluate(facts, gpu))
        self.choices["when"] = {"expression": cond.text, "site": cond.bindings(facts), "value": value, **asked}
        if value:
            return None
        return StepResult(StepState.SKIPPED, f"skipped: when: {cond.text} is false here "
                                             f"({shown_bindings(cond.bindings(facts), asked.get('gpu'))})")


def shown_bindings(bindings: dict[str, Any], gpu: bool | None = None) -> str:
    """``site.vars.mesh="dce", gpu=false``: the values a ``when:`` expression was decided on."""
    parts = [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in bindings.items()]
    if gpu is not None:
        parts.append(f"gpu={json.dumps(gpu)}")
    return ", ".join(parts) or "no site values"

