"""The apply steps in the agent's journal: one step ``apply:<name>`` per ``deploy`` step of the spec (plus
``apply:prune``), run through the apply library (``hydra_bundle.apply``) against ``site:`` of the agent config.

The planner runs when a bundle is admitted, before ingest, so it only names the steps (``step_names``: from the
signed index alone). The first apply step that runs builds the :class:`~hydra_bundle.apply.plan.ApplyPlan`
(manifests read from the content store, site values substituted) and one :class:`Runtime` shared by the steps
of that run (closed when the run ends). Results map onto the journal:

    StepResult done     → step done, detail = summary
    StepResult skipped  → SkipStep (e.g. ``when: no-gpu`` on a cluster with GPUs)
    StepResult pending  → StepPending, detail = summary + the exact command (the runner goes on)
    Cancelled           → the run ends (the agent is stopping; the step resumes on the next start)
    ApplyError          → failed (TransientError too: API server or MySQL unreachable; retried later)

Each step's result (changes, notes, outputs such as a LoadBalancer address, the pending command) is kept with
the step in the journal; ``agent status`` shows it. Without ``site:`` every apply step is ``pending`` with the
reason: nothing is silently skipped. Unfinished apply steps of a bundle superseded by a later-admitted bundle of
the same name are skipped (saying so) instead of being retried: stale content is never re-applied over newer
content, unless an operator asks for exactly that with ``agent apply``.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..apply.plan import ApplyPlan, build_plan, step_names
from ..apply.runtime import Runtime
from ..apply.step import ApplyStep, ProgressEvent, StepResult
from ..bundle.index import BundleIndex
from ..errors import ApplyError, Cancelled, HydraError
from ..states import StepState
from .config import AgentConfig
from .runner import SkipStep, StepContext, StepDef, StepPending

PREFIX = "apply:"
NO_SITE_SHORT = "no site: section in the agent config"
NO_SITE = (f"{NO_SITE_SHORT} (cluster, domain, registry, file server, kubeconfig, mysql): add it and restart the "
           "agent, or run `hydra-bundle agent apply NAME`")
APPLY_ELSEWHERE = ("apply: false in the agent config: another agent of the site applies (set apply: true to "
                   "apply here, then `hydra-bundle agent apply NAME`)")
KEEPALIVE = 10.0          # seconds between watchdog feeds while a step blocks (helm, slow API calls)
DETAIL_EVERY = 0.5        # at most two journal writes per second for a running step's progress


def journal_steps(index: BundleIndex, config: AgentConfig) -> list[StepDef]:
    """One ``apply:<name>`` step per deploy step of the signed spec (named from the index alone)."""
    try:
        names = step_names(index)
    except ApplyError as e:  # the signed spec's deploy section does not validate (a newer spec format?)
        msg = str(e)

        def fail(_ctx: StepContext) -> str:
            raise HydraError(msg)
        return [StepDef(PREFIX + "deploy", fail)]
    return [StepDef(PREFIX + n, _runner(n)) for n in names]


def _runner(name: str) -> Callable[[StepContext], str | None]:
    return lambda ctx: run(ctx, name)


@dataclass
class Session:
    """What the apply steps of one run share."""

    plan: ApplyPlan
    runtime: Runtime
    steps: dict[str, ApplyStep]


def session(ctx: StepContext) -> Session:
    s = ctx.scratch.get(PREFIX)
    if isinstance(s, Session):
        return s
    cfg = ctx.config
    site = cfg.site
    assert site is not None

    def read_blob(digest: str) -> bytes:
        path = ctx.store.path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise HydraError(f"{digest} is not in the content store (was the bundle ingested?)") from None

    ap = build_plan(ctx.index, site, read_blob, digest=ctx.bundle_id)
    def blob_file(digest: str) -> Path | None:
        return ctx.store.path(digest) if ctx.store.has(digest) else None

    rt = Runtime(site, ap.bundle, state_dir=cfg.state_dir / "apply", tls_dir=cfg.tls_dir, blob_file=blob_file,
                 cancel=ctx.stop, log=lambda msg: ctx.log.info("apply", extra={"kv": {
                     "bundle": ctx.index.name, "version": ctx.index.version, "message": msg}}))
    ctx.cleanups.append(rt.close)
    s = Session(ap, rt, {st.name: st for st in ap.steps})
    ctx.scratch[PREFIX] = s
    return s


class Monitor:
    """A running step's progress events → the journal's step detail (at most one write per ``DETAIL_EVERY``; the
    latest text is always written), the systemd STATUS line, and the watchdog. A thread keeps the watchdog fed
    while the step blocks without events (helm --wait, API retries), but only until the step's own timeout plus a
    margin has passed: a step hung beyond that should get the agent restarted."""

    def __init__(self, ctx: StepContext, journal_name: str, limit: float):
        self.ctx = ctx
        self.name = journal_name
        self.limit = limit
        self.lock = threading.Lock()
        self.text: str | None = None       # latest progress, not yet in the journal
        self.last_write = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"monitor-{journal_name}")

    def __enter__(self) -> Monitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)

    def __call__(self, e: ProgressEvent) -> None:
        """The apply step's progress callback (runs in the step's thread)."""
        text = e.message + (f" ({e.done}/{e.total})" if e.total and e.done is not None else "")
        self.ctx.status(f"{self.ctx.index.name} {self.ctx.index.version}: {self.name}: {text}")
        with self.lock:
            self.text = text
        if time.monotonic() - self.last_write >= DETAIL_EVERY:
            self.flush()
        self.ctx.progress(0)  # feeds the watchdog; raises Cancelled when the agent stops

    def flush(self) -> None:
        with self.lock:  # held while writing: an older text never lands after a newer one
            text, self.text = self.text, None
            if text is None:
                return
            self.last_write = time.monotonic()
            self.ctx.journal.step_progress(self.ctx.bundle_id, self.name, text)

    def _loop(self) -> None:
        end = time.monotonic() + self.limit
        fed = time.monotonic()
        try:
            while not self.done.wait(DETAIL_EVERY):
                self.flush()
                now = time.monotonic()
                if now - fed >= KEEPALIVE and now < end:
                    fed = now
                    try:
                        self.ctx.progress(0)
                    except Cancelled:
                        pass
        finally:
            self.ctx.journal.db.close()  # this thread's sqlite connection


def etc_hosts(res: StepResult, domain: str) -> list[str]:
    """``<LB address> <domain>`` lines for every LoadBalancer address a step reported (runbook: map the domain
    to the gateway's LoadBalancer in /etc/hosts)."""
    lines = []
    for what, out in res.outputs.items():
        if isinstance(out, dict):
            lines += [f"{a} {domain}" for a in out.get("addresses") or [] if a and what.startswith("Service ")]
    return list(dict.fromkeys(lines))


def run(ctx: StepContext, name: str) -> str:
    newer = None if ctx.explicit else ctx.journal.superseded_by(ctx.bundle_id)
    if newer is not None:  # never re-apply stale content over a newer version of the same bundle
        raise SkipStep(f"superseded by {newer.name} {newer.version} (received later); `hydra-bundle agent apply "
                       f"{newer.name} --version {ctx.index.version}` applies this version explicitly")
    if not ctx.config.apply:  # several agents serve this site; one of the others runs the deploy steps
        raise SkipStep(APPLY_ELSEWHERE)
    if ctx.config.site is None:
        ctx.result = {"state": str(StepState.PENDING), "summary": NO_SITE}
        raise StepPending(NO_SITE)
    s = session(ctx)
    step = s.steps.get(name)
    if step is None:  # cannot happen: step_names and build_plan agree
        raise HydraError(f"the apply plan has no step {name!r}")
    journal_name = PREFIX + name
    try:
        with Monitor(ctx, journal_name, step.timeout + 120) as monitor:
            res = step.run(s.runtime, monitor)
    except (HydraError, Cancelled):
        raise
    except Exception as e:  # a bug or an unexpected client error: fail the step, keep the agent running
        ctx.log.exception("apply step crashed", extra={"kv": {"bundle": ctx.index.name, "step": journal_name}})
        raise ApplyError(f"{type(e).__name__}: {e}") from None
    if res.state != StepState.SKIPPED:
        res.notes += [n for n in step.notes if n not in res.notes]
    hosts = etc_hosts(res, s.runtime.site.domain)
    if hosts:
        res.outputs["etcHosts"] = hosts
        res.notes.append("map the gateway domain on the worker nodes and on computers with a browser "
                         "(runbook): " + "; ".join(f"echo '{h}' | sudo tee -a /etc/hosts" for h in hosts))
    ctx.result = res.json()
    if step.choices:   # optional/when decisions and the site values files (with sha256) this run used
        ctx.result["choices"] = step.choices
    if res.state == StepState.SKIPPED:
        raise SkipStep(res.summary)
    if res.state == StepState.PENDING:
        raise StepPending(f"{res.summary}: {shlex.join(res.command)}" if res.command else res.summary)
    return res.summary
