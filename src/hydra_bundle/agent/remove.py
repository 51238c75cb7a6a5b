"""``agent remove NAME [--purge]``: the reverse plan of a bundle name as journaled, resumable steps on the bundle
the site runs (``agent status`` shows them beside its apply steps):

    remove:releases     Helm releases labelled as the bundle's (and those its chart steps name) uninstalled
    remove:objects      every object labelled as the bundle's deleted, Datasets included, and waited for
    remove:node-labels  the labels its ``label_nodes`` steps set taken off the nodes again
    remove:sql          --purge: the rows its ``sql`` steps seeded deleted (by their declared keys)
    remove:crds         --purge: its CustomResourceDefinitions deleted (and with them every such object)
    remove:namespaces   --purge: its Namespaces deleted (the cluster's own never)
    remove:unpublish    its references and model/file paths no longer served (registry and file server)

Without ``--purge`` CRDs, Namespaces and SQL rows stay: others' objects may live in them (a CRD deleted deletes
every object of its kind, a Namespace everything in it) and rows may be the application's data by now. Every
step converges (run again after a crash or a failure, it finds what is left and finishes), and every bundle of
the name (every retained version) ends ``removed``. What each step would do is :func:`preview` (``agent plan
--remove NAME``), from the same reads of the cluster, without changing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..apply import remove as cluster
from ..apply.helm import unavailable as helm_unavailable
from ..apply.plan import ApplyPlan, build_plan, load_deploy
from ..apply.runtime import Runtime
from ..apply.step import Action, StepResult
from ..apply.steps import ChartStep, LabelNodesStep, SqlStep
from ..apply.unseed import declared_rows, delete_rows, describe
from ..errors import HydraError
from ..k8s.objects import BundleInfo, key_of
from ..retry import Deadline
from ..spec.deploy import SqlSeed
from ..states import BundleState, Outcome, StepState
from . import changes, lineage
from .config import AgentConfig
from .deploy import NO_SITE
from .journal import REMOVE_PREFIX, BundleRow, Journal
from .pipeline import Pipeline, Result
from .published import Published
from .runner import SkipStep, StepContext, StepDef, StepPending, run_steps
from .unpublish import unpublish

RELEASES, OBJECTS, NODE_LABELS, SQL, CRDS, NAMESPACES, UNPUBLISH = (
    REMOVE_PREFIX + n for n in ("releases", "objects", "node-labels", "sql", "crds", "namespaces", "unpublish"))
_CLUSTER_ACTIONS = {"manifests", "label_nodes", "chart", "warmup", "tls"}


@dataclass
class Scope:
    """What ``agent remove NAME`` works on: every retained bundle of the name, and their apply plans on this site
    (the releases, node labels and rows their steps name)."""

    name: str
    head: BundleRow                   # the bundle whose journal carries the remove steps
    rows: list[BundleRow]
    purge: bool
    plans: list[ApplyPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def actions(self) -> set[str]:
        out: set[str] = set()
        for r in self.rows:
            try:
                d = load_deploy(r.index())
            except HydraError:
                continue
            out |= {st.action for st in d.steps} if d is not None else set()
        return out

    @property
    def releases(self) -> set[tuple[str, str]]:
        return {s.release.key for p in self.plans for s in p.steps if isinstance(s, ChartStep)}

    @property
    def label_sets(self) -> list[tuple[dict[str, str], list[str] | None]]:
        return [(s.labels, s.nodes) for p in self.plans for s in p.steps if isinstance(s, LabelNodesStep)]

    @property
    def seeds(self) -> list[SqlSeed]:
        return [s.seed for p in self.plans for s in p.steps if isinstance(s, SqlStep)]

    def step_names(self) -> list[str]:
        acts = self.actions
        out = []
        if acts & _CLUSTER_ACTIONS:
            out += [RELEASES] if "chart" in acts else []
            out.append(OBJECTS)
            out += [NODE_LABELS] if "label_nodes" in acts else []
        if self.purge and "sql" in acts:
            out.append(SQL)
        if self.purge and acts & _CLUSTER_ACTIONS:
            out += [CRDS, NAMESPACES]
        return [*out, UNPUBLISH]

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "bundle": self.head.id, "version": self.head.version,
                "versions": [r.version for r in self.rows], "purge": self.purge}


def scope(j: Journal, config: AgentConfig, name: str, purge: bool) -> Scope:
    rows = lineage.retained(j, name)
    head = next((r for r in rows if r.state == BundleState.REMOVING), None) or lineage.live(j, rows) or max(
        rows, key=lambda r: (lineage.published_at(j, r.id) or 0, r.received_at or 0))
    sc = Scope(name, head, rows, purge)
    site = config.site
    if site is None:
        return sc

    def read(digest: str) -> bytes:
        from ..oci.layout import blob_path

        try:
            return blob_path(config.store_dir, digest).read_bytes()
        except OSError:
            raise HydraError(f"{digest} is not in the content store") from None

    for r in rows:
        try:
            sc.plans.append(build_plan(r.index(), site, read, digest=r.id))
        except HydraError as e:  # its chart releases, node labels and rows are not known: the labels still are
            sc.notes.append(f"{r.version}: its apply plan cannot be built ({e}); what carries the bundle's labels "
                            "is removed all the same")
    return sc


# ------------------------------------------------------------------------------------------------ the steps

def _runtime(ctx: StepContext, sc: Scope) -> Runtime:
    rt = ctx.scratch.get(REMOVE_PREFIX)
    if isinstance(rt, Runtime):
        return rt
    site = ctx.config.site
    if site is None:
        ctx.result = {"state": str(StepState.PENDING), "summary": NO_SITE}
        raise StepPending(NO_SITE)
    rt = Runtime(site, BundleInfo(sc.name, sc.head.version or "", sc.head.id), state_dir=ctx.config.state_dir / "apply",
                 cancel=ctx.stop, log=lambda msg: ctx.log.info("remove", extra={"kv": {"bundle": sc.name,
                                                                                      "message": msg}}))
    ctx.cleanups.append(rt.close)
    ctx.scratch[REMOVE_PREFIX] = rt
    return rt


def _finish(ctx: StepContext, res: StepResult) -> str:
    ctx.result = res.json()
    if res.state == StepState.PENDING:
        import shlex

        raise StepPending(f"{res.summary}: {shlex.join(res.command)}" if res.command else res.summary)
    return res.summary


def _step(sc: Scope, name: str) -> Callable[[StepContext], str | None]:
    def run(ctx: StepContext) -> str | None:
        def emit(msg: str) -> None:
            ctx.journal.step_progress(ctx.bundle_id, name, msg)
            ctx.progress(0)

        if name == UNPUBLISH:
            ids = [r.id for r in sc.rows]
            refs, paths = ctx.published.served_by(ids)
            n_refs, _, n_blobs = unpublish(ctx.journal, ctx.published, ctx.store, ids)
            ctx.result = StepResult(StepState.DONE, "", [f"unpublished {x}" for x in refs + paths]).json()
            return f"{n_refs} reference(s), {len(paths)} model/file name(s) and {n_blobs} blob(s) no longer served"
        rt = _runtime(ctx, sc)
        deadline = Deadline(rt.site.timeout)
        if name == SQL:
            if rt.site.mysql is None:
                raise HydraError("sql: site.mysql is not set in the agent config: the seeded rows cannot be deleted")
            done = delete_rows(rt.site.mysql, sc.seeds, deadline, rt.sleep, rt.log)
            return _finish(ctx, StepResult(StepState.DONE, f"{len(done)} row(s) deleted", done))
        if name == RELEASES:
            return _finish(ctx, cluster.uninstall_releases(rt, sc.name, sc.releases, deadline, emit))
        if name == NODE_LABELS:
            return _finish(ctx, cluster.unlabel_nodes(rt.kube(), sc.label_sets, deadline, emit))
        group = {OBJECTS: "objects", CRDS: "crds", NAMESPACES: "namespaces"}[name]
        return _finish(ctx, cluster.delete_objects(rt.kube(), sc.name, group, deadline, emit, rt.poll_interval,
                                                   rt.sleep))
    return run


def _not_run(ctx: StepContext) -> str | None:
    raise SkipStep("not run: the bundle is being removed")


def remove(pipe: Pipeline, name: str, purge: bool, user: str | None = None) -> tuple[Result, Scope]:
    """Run (or resume) the removal of ``name``; PipelineBusy when another run holds the lock."""
    user = user or changes.operator()
    j = pipe.journal
    with pipe.lock.held(wait=False):
        sc = scope(j, pipe.config, name, purge)
        head = sc.head
        names = sc.step_names()
        have = {s.name: s.state for s in j.steps(head.id)}
        if head.state == BundleState.REMOVED and all(have.get(n) in (StepState.DONE, StepState.SKIPPED)
                                                     for n in names):
            return Result(Outcome.DUPLICATE, head.id, name, head.version, "removed",
                          "already removed: nothing of it is applied or served"), sc
        pipe.lock.owner(head.id)
        j.event(head.id, name, head.version, "remove", f"started by {user}" + (" (--purge)" if purge else ""))
        defs = [StepDef(n, _not_run) for n in have if not n.startswith(REMOVE_PREFIX) or n not in names]
        defs += [StepDef(n, _step(sc, n)) for n in names]
        ctx = StepContext(pipe.config, j, pipe.published, pipe.store, head.id, head.index(), None, pipe.stop,
                          pipe.progress, status=pipe.status)
        out = run_steps(ctx, defs)
        if out.state == Outcome.COMPLETE:
            for r in sc.rows:
                j.set_state(r.id, BundleState.REMOVED, "removed", f"removed by {user}" + (" with --purge" if purge
                                                                                          else ""))
            changes.record(j, name, changes.Action.REMOVE, (head.id, head.version), (None, None),
                           "--purge" if purge else None, user)
            return Result(Outcome.COMPLETE, head.id, name, head.version), sc
        j.set_state(head.id, BundleState.REMOVING, f"remove-{out.state}", out.detail)
        return Result(out.state, head.id, name, head.version, out.step, out.detail), sc


# ------------------------------------------------------------------------------------------------ the preview

def _kept(objs: list[dict[str, Any]], why: str) -> list[str]:
    return [f"{key_of(o)} stays ({why})" for o in objs]


def preview(config: AgentConfig, j: Journal, published: Published, sc: Scope) -> dict[str, Any]:
    """What each remove step would do now, read from the cluster, the database rows declared and the published
    view; plus what stays. Nothing is changed."""
    steps: dict[str, list[Action]] = {n: [] for n in sc.step_names()}
    kept: list[str] = []
    rt = None
    site = config.site
    try:
        if site is not None and (OBJECTS in steps or RELEASES in steps):
            rt = Runtime(site, BundleInfo(sc.name, sc.head.version or "", sc.head.id))
            kube = rt.kube()
            deadline = Deadline(min(site.timeout, 60.0))
            if RELEASES in steps:
                reason = helm_unavailable()
                if reason:
                    steps[RELEASES] = [Action(RELEASES, "helm", f"release {ns}/{rel}",
                                              f"pending: {reason}; an operator runs `helm uninstall {rel} "
                                              f"--namespace {ns}`")
                                       for ns, rel in cluster.releases_without_library(kube, sc.name, sc.releases,
                                                                                       deadline)]
                else:
                    steps[RELEASES] = [Action(RELEASES, "helm", f"release {ns}/{rel}", f"uninstall ({chart})")
                                       for ns, rel, chart in cluster.releases_to_remove(rt, sc.name, sc.releases)]
            found = cluster.labelled(kube, sc.name, deadline)
            groups = {g: [o for o in found if cluster.group_of(o) == g] for g in ("objects", "crds", "namespaces")}
            steps[OBJECTS] = [Action(OBJECTS, "delete", str(key_of(o))) for o in reversed(groups["objects"])]
            if NODE_LABELS in steps:
                steps[NODE_LABELS] = [Action(NODE_LABELS, "unlabel", f"Node {n}", key) for labels, nodes in
                                      sc.label_sets for n, key in cluster.labelled_nodes(kube, labels, nodes, deadline)]
            if sc.purge:
                steps[CRDS] = [Action(CRDS, "delete", str(key_of(o)), "and every object of its kind")
                               for o in groups["crds"]]
                steps[NAMESPACES] = [
                    Action(NAMESPACES, "delete", str(key_of(o)), "and everything in it")
                    if key_of(o).name not in cluster.PROTECTED_NAMESPACES else
                    Action(NAMESPACES, "keep", str(key_of(o)), "the cluster's own: never deleted")
                    for o in groups["namespaces"]]
            else:
                kept += _kept(groups["crds"], "--purge deletes it, and with it every object of its kind")
                kept += _kept(groups["namespaces"], "--purge deletes it, and everything in it")
        elif site is None and (OBJECTS in steps or RELEASES in steps):
            for n in (RELEASES, OBJECTS, NODE_LABELS):
                if n in steps:
                    steps[n] = [Action(n, "pending", "(the cluster)", NO_SITE)]
    finally:
        if rt is not None:
            rt.close()
    rows = declared_rows(site.mysql if site else None, sc.seeds)
    if SQL in steps:
        steps[SQL] = [Action(SQL, "sql-delete", describe(*r), "if present") for r in rows]
    else:
        kept += [f"row {describe(*r)} stays (--purge deletes it)" for r in rows]
    refs, paths = published.served_by([r.id for r in sc.rows])
    steps[UNPUBLISH] = [Action(UNPUBLISH, "unpublish", x) for x in refs + paths]
    kept.append("the content store keeps the files (a rollback or re-drop needs no new copy; `agent gc` frees them)")
    states = {s.name: s.state for s in j.steps(sc.head.id)}
    return {**sc.json(), "steps": [{"journalStep": n, "journalState": str(states[n]) if n in states else None,
                                    "actions": [a.json() for a in acts]} for n, acts in steps.items()],
            "kept": kept, "notes": sc.notes}


def preview_text(doc: dict[str, Any]) -> str:
    lines = [f"remove plan for {doc['name']} (versions {', '.join(v or '?' for v in doc['versions'])}; journaled on "
             f"{doc['version']} {doc['bundle'][:19]}){' with --purge' if doc['purge'] else ''}"]
    for i, st in enumerate(doc["steps"], 1):
        state = f"  [{st['journalState']}]" if st["journalState"] else ""
        lines.append(f"{i:>2}. {st['journalStep']}{state}")
        if not st["actions"]:
            lines.append("      nothing to do")
        for a in st["actions"]:
            lines.append(f"      {a['op']:<11} {a['target']}" + (f"  ({a['detail']})" if a.get("detail") else ""))
    lines += [f"keep: {k}" for k in doc["kept"]] + [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)
