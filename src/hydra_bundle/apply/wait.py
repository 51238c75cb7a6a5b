"""Waiting for objects to be ready: poll the live objects (:func:`hydra_bundle.k8s.readiness.readiness` judges
each) with a short first wait that grows to the poll interval, until the deadline names the laggards."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ApplyError
from ..k8s.objects import ObjKey, key_of
from ..k8s.readiness import readiness
from ..retry import Deadline, poll_delays

if TYPE_CHECKING:
    from .kube import Kube


def wait_ready(kube: Kube, objs: list[dict[str, Any]], deadline: Deadline,
               progress: Callable[[str, int, int], None], poll: float = 1.0) -> dict[str, Any]:
    """Poll until every object is ready; ApplyError naming the laggards at the deadline. Returns the outputs of
    the objects that report some (LoadBalancer addresses), by object."""
    pending = {key_of(o): o for o in objs}
    total = len(pending)
    outputs: dict[str, Any] = {}
    last: dict[ObjKey, str] = {}
    delays = poll_delays(poll)
    while True:
        for key, o in list(pending.items()):
            md = o["metadata"]
            live = kube.get(o["apiVersion"], o["kind"], md["name"], md.get("namespace"), deadline)
            if live is None:
                last[key] = "does not exist"
                continue
            ok, msg, out = readiness(live)
            last[key] = msg
            if ok:
                del pending[key]
                if out:
                    outputs[str(key)] = out
        progress(", ".join(f"{k}: {last[k]}" for k in list(pending)[:3]) or "all ready", total - len(pending), total)
        if not pending:
            return outputs
        if deadline.expired:
            raise ApplyError(f"timed out after {deadline.seconds:.0f}s waiting for "
                             + "; ".join(f"{k} ({last.get(k, '?')})" for k in pending))
        kube.sleep(min(next(delays), max(deadline.left, 0.01)))
