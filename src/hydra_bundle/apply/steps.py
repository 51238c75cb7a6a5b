"""The apply steps: one class per ``deploy`` action, plus prune. Built by ``plan.build_plan``; each is
self-contained: ``plan()`` lists its actions offline, ``run(rt, progress)`` converges and can be re-run (the
contract is :mod:`.step`'s)."""

from __future__ import annotations

import base64
import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ApplyError
from ..k8s.nodes import schedulable
from ..k8s.objects import (
    CRD_KIND,
    RELEASE_LABEL,
    WORKLOAD_KINDS,
    BundleInfo,
    ObjKey,
    key_of,
    mark_ours,
    namespace_object,
    sort_for_apply,
)
from ..retry import Deadline, poll_delays
from ..spec.deploy import SqlSeed
from ..states import StepState
from .helm import ReleaseInfo, deployed_without_library
from .helm import unavailable as helm_unavailable
from .prune import prune
from .release import HelmRelease, command_text, values_diff, write_values
from .rewrite import ImageChange
from .runtime import Runtime
from .step import Action, ApplyStep, Progress, ProgressEvent, StepResult, no_progress
from .tls import Material, SiteCA, fingerprint, from_files
from .warmup import DATASET_API, DATASET_CRD, DATASET_KIND, dataset_readiness

if TYPE_CHECKING:
    from .applier import Applier
    from .helm import Helm
    from .kube import Kube

Emit = Callable[..., None]
HELM_CHECK_SECONDS = 10.0


@dataclass
class PreparedObject:
    """A manifest object after substitution, image rewriting and our labels."""

    obj: dict[str, Any]
    where: str                                  # manifests/<name>/<file>:<line>
    images: list[ImageChange] = field(default_factory=list)
    replaced_manager: str | None = None         # a managed-by label we overrode (e.g. Helm)

    @property
    def key(self) -> ObjKey:
        return key_of(self.obj)


def _emit(progress: Progress, step: str) -> Emit:
    def f(msg: str, done: int | None = None, total: int | None = None) -> None:
        progress(ProgressEvent(step, msg, done, total))
    return f


class _Tally:
    """What a step applied: counts by outcome, the changes, the notes (CEL rules not enforced …)."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def apply(self, applier: Applier, obj: dict[str, Any], deadline: Deadline, emit: Emit | None = None) -> str:
        o = applier.apply(obj, deadline)
        self.ops.append((o.op, str(o.key)))
        self.notes.extend(o.notes)
        if emit is not None:
            emit(f"{o.op} {o.key}")
        return o.op

    @property
    def changes(self) -> list[str]:
        return [f"{op} {what}" for op, what in self.ops if op != "unchanged"]

    @property
    def summary(self) -> str:
        counts: dict[str, int] = {}
        for op, _ in self.ops:
            counts[op] = counts.get(op, 0) + 1
        return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "nothing to do"


class KubeStep(ApplyStep):
    """A step that talks to the cluster: the run starts with its deadline and the ``when`` check."""

    def begin(self, rt: Runtime) -> tuple[Deadline, Kube, StepResult | None]:
        """The step's deadline, the cluster adapter, and the skip result when ``when`` does not hold."""
        return Deadline(self.timeout), rt.kube(), self.skipped(rt)


# ====================================================================== manifests

class ManifestsStep(KubeStep):
    kind = "manifests"

    def __init__(self, name: str, objects: list[PreparedObject], *, wait: bool = True, when: str = "always",
                 timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.objects = objects
        self.wait = wait

    def ordered(self) -> list[PreparedObject]:
        by_id = {id(p.obj): p for p in self.objects}
        return [by_id[id(o)] for o in sort_for_apply([p.obj for p in self.objects])]

    def desired(self) -> list[tuple[ObjKey, str]]:
        return [(p.key, p.obj["apiVersion"]) for p in self.objects]

    def plan(self) -> list[Action]:
        out = []
        ordered = self.ordered()
        crds = [p for p in ordered if p.obj["kind"] == CRD_KIND]
        for i, p in enumerate(ordered):
            detail = f"from {p.where}"
            if p.images:
                detail += "; images " + ", ".join(f"{c.old} → {c.new}" for c in p.images)
            out.append(self._action("apply", str(p.key), detail))
            if p.obj["kind"] == CRD_KIND and (i + 1 == len(ordered) or ordered[i + 1].obj["kind"] != CRD_KIND):
                out += [self._action("wait", str(c.key), "until Established") for c in crds]
        if self.wait:
            out += [self._action("wait", str(p.key), "rollout complete") for p in ordered
                    if p.obj["kind"] in WORKLOAD_KINDS]
        return out

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        from .wait import wait_ready

        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        applier = rt.applier()
        ordered = self.ordered()
        total = len(ordered)
        tally = _Tally()

        def apply(p: PreparedObject) -> None:
            emit(f"apply {p.key}", len(tally.ops), total)
            op = tally.apply(applier, p.obj, deadline)
            emit(f"{op} {p.key}", len(tally.ops), total)

        crds = [p for p in ordered if p.obj["kind"] == CRD_KIND]
        for p in crds:
            apply(p)
        if crds:
            wait_ready(kube, [p.obj for p in crds], deadline, lambda m, d, t: emit(f"CRDs Established: {m}", d, t),
                       rt.poll_interval)
        for p in ordered:
            if p.obj["kind"] == "Namespace":
                apply(p)
        for p in ordered:
            if p.obj["kind"] not in (CRD_KIND, "Namespace"):
                apply(p)
        outputs: dict[str, Any] = {}
        if self.wait:
            workloads = [p.obj for p in ordered if p.obj["kind"] in WORKLOAD_KINDS]
            if workloads:
                outputs = wait_ready(kube, [kube.normalize(copy.deepcopy(o), deadline) for o in workloads], deadline,
                                     lambda m, d, t: emit(f"rollout: {m}", d, t), rt.poll_interval)
        return StepResult(StepState.DONE, f"{total} objects: {tally.summary}", tally.changes, tally.notes,
                          outputs=outputs)


# ====================================================================== node labels

class LabelNodesStep(KubeStep):
    kind = "label-nodes"

    def __init__(self, name: str, labels: dict[str, str], nodes: list[str] | None, *, when: str = "always",
                 timeout: float = 600.0, site_nodes: list[str] | None = None):
        super().__init__(name, when=when, timeout=timeout)
        self.labels = labels
        self.nodes = nodes or site_nodes or None

    def plan(self) -> list[Action]:
        lbl = ", ".join(f"{k}={v}" for k, v in self.labels.items())
        targets = self.nodes or ["(every schedulable node)"]
        return [self._action("label-node", f"Node {n}", lbl) for n in targets]

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        names = self.nodes
        if not names:
            nodes = kube.nodes(deadline)
            if not nodes:
                raise ApplyError("the cluster has no nodes to label")
            names = [n["metadata"]["name"] for n in nodes if schedulable(n)] or [n["metadata"]["name"] for n in nodes]
        emit = _emit(progress, self.name)
        changes = []
        names = sorted(names)
        for i, name in enumerate(names):  # nodes are not ours: merge-patched labels only, never pruned
            node = kube.get("v1", "Node", name, deadline=deadline)
            if node is None:
                raise ApplyError(f"node {name} does not exist")
            have = (node.get("metadata") or {}).get("labels") or {}
            missing = {k: v for k, v in self.labels.items() if have.get(k) != v}
            if missing:
                kube.merge_patch_labels("v1", "Node", name, missing, deadline)
                changes.append(f"labelled node {name} " + ", ".join(f"{k}={v}" for k, v in missing.items()))
            emit(f"node {name}", i + 1, len(names))
        return StepResult(StepState.DONE, f"{len(names)} node(s): {len(changes)} labelled, "
                                          f"{len(names) - len(changes)} already labelled", changes)


# ====================================================================== charts

def pull_secret_object(name: str, namespace: str, registry_host: str) -> dict[str, Any]:
    """A docker-registry Secret for the site registry (anonymous pulls: no credentials in it)."""
    cfg = json.dumps({"auths": {registry_host: {}}}, separators=(",", ":")).encode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(cfg).decode()}}


class ChartStep(KubeStep):
    """Install or upgrade one Helm release in-process (the Helm library), from the chart in the content store.

    Atomic: a release that fails to install is uninstalled, an upgrade that fails (Helm's own failure, or its
    workloads not ready by the step's deadline) is rolled back to the previous revision, and the step fails with
    the reason. A release already at this chart version with exactly these values is left alone (no new
    revision). Without the library the step is pending with the equivalent ``helm`` command."""

    kind = "chart"

    def __init__(self, name: str, release: HelmRelease, *, bundle: BundleInfo, pre_objects: list[dict[str, Any]],
                 when: str = "always", timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.release = release
        self.bundle = bundle
        self.pre_objects = pre_objects           # namespace + pull secrets, already marked ours

    def desired(self) -> list[tuple[ObjKey, str]]:
        return [(key_of(o), o["apiVersion"]) for o in self.pre_objects]

    @property
    def labels(self) -> dict[str, str]:
        """The release label that makes it this bundle's (prune finds releases by it)."""
        return {RELEASE_LABEL: self.bundle.name}

    def values_path(self, rt: Runtime | None) -> Path:
        base = (rt.state_dir if rt is not None and rt.state_dir is not None else None)
        if base is None:
            base = Path(tempfile.gettempdir()) / "hydra-bundle"
        return base / "helm" / f"{self.bundle.name}-{self.release.namespace}-{self.release.release}.values.yaml"

    def plan(self) -> list[Action]:
        out = [self._action("apply", str(key_of(o)), "for the chart's pods") for o in self.pre_objects]
        r = self.release
        out.append(self._action("helm", f"release {r.namespace}/{r.release}",
                                f"install or upgrade {r.chart_name} {r.version} (Helm library, in-process; rolled "
                                f"back on failure)"))
        return out

    def preview(self, rt: Runtime) -> Action:
        """What ``run`` would do to the release now: install, upgrade (with the values diff) or nothing."""
        r = self.release
        target = f"release {r.namespace}/{r.release}"
        reason = helm_unavailable()
        if reason:
            return self._action("helm", target, f"pending: {reason}; an operator runs "
                                                f"`{command_text(r.cli_args('<values file>'))}`")
        helm = rt.helm()
        cur = helm.status(r.release, r.namespace)
        if cur is None:
            return self._action("helm", target, f"install {r.chart_name} {r.version} (revision 1)")
        diff = values_diff(helm.user_values(r.release, r.namespace), _json(r.values))
        chart = f"{r.chart_name}-{r.version}"
        if cur.status == "deployed" and cur.chart == chart and not diff:
            return self._action("helm", target, f"unchanged ({cur.chart}, revision {cur.revision})")
        what = f"upgrade revision {cur.revision} ({cur.status}) → {cur.revision + 1}"
        if cur.chart != chart:
            what += f"; chart {cur.chart} → {chart}"
        return self._action("helm", target, what + ("; values: " + "; ".join(diff) if diff else "; same values"))

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline = Deadline(self.timeout)
        emit = _emit(progress, self.name)
        changes: list[str] = []
        if self.when != "always" or self.off is not None or self.pre_objects:
            skip = self.skipped(rt)
            if skip:
                return skip
            tally = _Tally()
            for o in sort_for_apply(self.pre_objects):
                tally.apply(rt.applier(), o, deadline, emit)
            changes = tally.changes
        reason = helm_unavailable()
        if reason:
            return self._without_library(rt, reason, deadline, changes)
        r = self.release
        helm = rt.helm()
        stored = rt.blob_file(r.chart_digest) if r.chart_digest else None
        chart: Path | str = stored if stored is not None else r.chart  # the store's .tgz, else the site registry
        want = _json(r.values)
        cur = helm.status(r.release, r.namespace)
        if cur is not None and cur.status == "deployed" and cur.chart == f"{r.chart_name}-{r.version}" \
                and helm.user_values(r.release, r.namespace) == want:
            op = "unchanged"
        elif cur is None or (cur.revision == 1 and cur.status != "deployed"):
            if cur is not None:  # a first install that failed or was interrupted: start it over
                emit(f"helm uninstall {r.namespace}/{r.release} ({cur.status} revision 1)")
                helm.uninstall(r.release, r.namespace, deadline)
            emit(f"helm install {r.namespace}/{r.release} ({r.chart_name} {r.version})")
            op = "installed"
        else:
            emit(f"helm upgrade {r.namespace}/{r.release} ({cur.chart} → {r.chart_name}-{r.version})")
            op = "upgraded"
        outputs: dict[str, Any] = {}
        rel = cur
        old = op != "unchanged" and rt.kube().server_version(deadline) < (1, 25)  # CRDs with CEL rules need care
        try:
            if op == "installed":
                rel = helm.install(chart, r.version, r.release, r.namespace, want, labels=self.labels,
                                   deadline=deadline, create_namespace=r.create_namespace, plain_http=r.plain_http,
                                   old_server=old)
            elif op == "upgraded":
                rel = helm.upgrade(chart, r.version, r.release, r.namespace, want, labels=self.labels,
                                   deadline=deadline, plain_http=r.plain_http, old_server=old)
            assert rel is not None
            if r.wait:
                outputs = self._wait(rt, rel, deadline, emit)
        except ApplyError as e:  # atomic: back to the previous revision, or nothing
            raise ApplyError(self._undo(helm, op, cur, e, deadline)) from None
        if op != "unchanged":
            changes.append(f"helm {op} {r.namespace}/{r.release} {r.chart_name} {r.version} (revision "
                           f"{rel.revision})")
        return StepResult(StepState.DONE, f"release {r.namespace}/{r.release}: {op} ({rel.chart}, revision "
                                          f"{rel.revision}, {rel.status})", changes,
                          outputs={**rel.json(), **outputs})

    def _wait(self, rt: Runtime, rel: ReleaseInfo, deadline: Deadline, emit: Emit) -> dict[str, Any]:
        """Wait until the release's workloads are rolled out (the same readiness rules as manifests)."""
        from .wait import wait_ready

        kube = rt.kube()
        objs = []
        for o in yaml.safe_load_all(rel.manifest or ""):
            if isinstance(o, dict) and o.get("kind") in WORKLOAD_KINDS and isinstance(o.get("metadata"), dict):
                o["metadata"].setdefault("namespace", rel.namespace)
                objs.append(kube.normalize(o, deadline))
        if not objs:
            return {}
        return wait_ready(kube, objs, deadline, lambda m, d, t: emit(f"rollout: {m}", d, t), rt.poll_interval)

    def _undo(self, helm: Helm, op: str, before: ReleaseInfo | None, e: ApplyError, deadline: Deadline) -> str:
        """Make a release that did not become ready atomic: back to the previous revision, or uninstalled."""
        r = self.release
        spare = Deadline(max(deadline.left, 60.0))
        try:
            if op == "upgraded" and before is not None:
                helm.rollback(r.release, r.namespace, before.revision, spare)
                return f"{e}; release {r.namespace}/{r.release} rolled back to revision {before.revision}"
            if op == "installed":
                helm.uninstall(r.release, r.namespace, spare)
                return f"{e}; release {r.namespace}/{r.release} uninstalled again (atomic install)"
        except ApplyError as undo:
            return f"{e}; and undoing it failed: {undo}"
        return str(e)

    def _without_library(self, rt: Runtime, reason: str, deadline: Deadline, changes: list[str]) -> StepResult:
        """Pending with the exact ``helm`` command, unless an operator already deployed exactly this release."""
        r = self.release
        values_file = write_values(self.values_path(rt), r.values)
        notes = [reason]
        try:  # did an operator run the command? (Helm's release Secret says so; a short look only)
            revision = deployed_without_library(rt.kube(), r.release, r.namespace, r.chart_name, r.version,
                                                r.values, deadline.within(HELM_CHECK_SECONDS))
        except ApplyError as e:
            revision = None
            notes.append(f"could not check whether the release is deployed already: {e}")
        if revision is not None:
            return StepResult(StepState.DONE, f"release {r.namespace}/{r.release}: {r.chart_name} {r.version} "
                                              f"deployed (revision {revision}, installed outside the agent)", changes,
                              notes, outputs={"release": f"{r.namespace}/{r.release}", "revision": revision})
        return StepResult(StepState.PENDING, f"{reason}: install release {r.namespace}/{r.release} by running the "
                                             f"command; the step notices the release once it is deployed", changes,
                          notes, command=["helm", *r.cli_args(values_file)])


def _json(values: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm stores and returns them (JSON types)."""
    out = json.loads(json.dumps(values))
    assert isinstance(out, dict)
    return out


# ====================================================================== sql

class SqlStep(ApplyStep):
    kind = "sql"

    def __init__(self, name: str, seed: SqlSeed, *, when: str = "always", timeout: float = 600.0,
                 site_database: str | None = None):
        super().__init__(name, when=when, timeout=timeout)
        self.seed = seed
        self.site_database = site_database      # the database of site.mysql.dsn (for the plan text)

    def plan(self) -> list[Action]:
        db = self.seed.database or self.site_database or "(site.mysql database)"
        out = []
        for t in self.seed.tables:
            for row in t.rows:
                key = ", ".join(f"{k}={row[k]!r}" for k in t.key)
                out.append(self._action("sql-upsert", f"{db}.{t.table} {key}",
                                        f"columns {', '.join(row)}; insert if absent, update if different"))
        return out

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        from .mysql import seed

        skip = self.skipped(rt)
        if skip:
            return skip
        if rt.site.mysql is None:
            raise ApplyError("sql: site.mysql is not set in the agent config (dsn + password_file)")
        changes, unchanged = seed(rt.site.mysql, self.seed, Deadline(self.timeout), rt, _emit(progress, self.name))
        n = sum(len(t.rows) for t in self.seed.tables)
        return StepResult(StepState.DONE, f"{n} row(s): {len(changes)} written, {unchanged} already up to date "
                                          f"(one transaction)", changes)


# ====================================================================== warm-up

class WarmupStep(KubeStep):
    kind = "warmup"

    def __init__(self, name: str, dataset: dict[str, Any], namespace: dict[str, Any], *, wait: bool = True,
                 when: str = "always", timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.dataset = dataset
        self.namespace = namespace
        self.wait = wait

    def desired(self) -> list[tuple[ObjKey, str]]:
        return [(key_of(self.namespace), "v1"), (key_of(self.dataset), DATASET_API)]

    def plan(self) -> list[Action]:
        src = self.dataset["spec"]["source"]["uri"]
        sc = self.dataset["spec"]["volumeClaimTemplate"]["spec"]["storageClassName"]
        out = [self._action("apply", str(key_of(self.namespace))),
               self._action("apply", str(key_of(self.dataset)), f"HTTP source {src}, storage class {sc}")]
        if self.wait:
            out.append(self._action("wait", str(key_of(self.dataset)), "status.phase READY (dataset controller)"))
        return out

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        try:
            kube.resource(DATASET_API, DATASET_KIND, deadline, wait=5)
        except ApplyError:
            raise ApplyError(f"the Dataset API ({DATASET_CRD}) is not installed: install the BaizeAI dataset chart "
                             f"(a chart step before this one; if it is pending, run its command) and re-run") from None
        tally = _Tally()
        for o in (self.namespace, self.dataset):
            tally.apply(rt.applier(), o, deadline, emit)
        if not self.wait:
            return StepResult(StepState.DONE, tally.summary, tally.changes)
        md = self.dataset["metadata"]
        key = key_of(self.dataset)
        last = ""
        delays = poll_delays(rt.poll_interval)
        while True:
            live = kube.get(DATASET_API, DATASET_KIND, md["name"], md["namespace"], deadline)
            if live is None:
                raise ApplyError(f"{key} disappeared while waiting for it")
            ready, msg = dataset_readiness(live)
            if msg != last:
                emit(f"{key}: {msg}", 1 if ready else 0, 1)
                last = msg
            if ready:
                return StepResult(StepState.DONE, f"{key} READY ({tally.summary})", tally.changes,
                                  outputs={"dataset": str(key), "pvc": (live.get("status") or {}).get("pvcName")})
            if deadline.expired:
                raise ApplyError(f"timed out after {self.timeout:.0f}s waiting for {key} to be READY ({msg}); "
                                 f"is the dataset controller running and can it reach "
                                 f"{self.dataset['spec']['source']['uri']}?")
            rt.sleep(min(next(delays), max(deadline.left, 0.01)))


# ====================================================================== wait_for

class WaitForStep(KubeStep):
    kind = "wait-for"

    def __init__(self, name: str, targets: list[dict[str, Any]], *, when: str = "always", timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.targets = targets     # minimal objects: apiVersion, kind, metadata.name/namespace

    def plan(self) -> list[Action]:
        return [self._action("wait", str(key_of(t)), "ready") for t in self.targets]

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        from .wait import wait_ready

        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        outputs = wait_ready(kube, [kube.normalize(copy.deepcopy(t), deadline) for t in self.targets], deadline,
                             emit, rt.poll_interval)
        lines = [f"{k}: {', '.join(v.get('addresses', []))}" for k, v in outputs.items() if v.get("addresses")]
        return StepResult(StepState.DONE, f"{len(self.targets)} ready" + (f"; {'; '.join(lines)}" if lines else ""),
                          outputs=outputs)


# ====================================================================== tls

class TlsStep(KubeStep):
    kind = "tls"

    def __init__(self, name: str, secret: str, namespace: str, hosts: list[str], *, bundle: BundleInfo,
                 cert_file: Path | None = None, key_file: Path | None = None, when: str = "always",
                 timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.secret, self.namespace, self.hosts = secret, namespace, hosts
        self.bundle = bundle
        self.cert_file, self.key_file = cert_file, key_file

    @property
    def key(self) -> ObjKey:
        return ObjKey("", "Secret", self.namespace, self.secret)

    def desired(self) -> list[tuple[ObjKey, str]]:
        return [(self.key, "v1")]

    def source(self) -> str:
        if self.cert_file is not None:
            return f"site.tls files {self.cert_file}, {self.key_file}"
        return "the site CA (state_dir/tls, created once; `hydra-bundle agent ca` exports it)"

    def plan(self) -> list[Action]:
        return [self._action("secret", str(self.key), f"kubernetes.io/tls for {', '.join(self.hosts)}; "
                                                      f"certificate from {self.source()}")]

    def material(self, rt: Runtime) -> Material:
        if self.cert_file is not None and self.key_file is not None:
            return from_files(self.cert_file, self.key_file, self.hosts)
        if rt.tls_dir is None:
            raise ApplyError("tls: no directory for the site CA (Runtime.tls_dir)")
        return SiteCA(rt.tls_dir, rt.site.cluster_name).leaf(f"{self.namespace}-{self.secret}", self.hosts)

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        m = self.material(rt)
        tally = _Tally()
        if kube.get("v1", "Namespace", self.namespace, deadline=deadline) is None:
            tally.apply(rt.applier(), mark_ours(namespace_object(self.namespace), self.bundle), deadline)
        secret = mark_ours({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                            "metadata": {"name": self.secret, "namespace": self.namespace},
                            "data": {"tls.crt": base64.b64encode(m.cert_pem).decode(),
                                     "tls.key": base64.b64encode(m.key_pem).decode()}}, self.bundle)
        op = tally.apply(rt.applier(), secret, deadline, emit)
        changes = tally.changes
        if m.issued:
            changes.insert(0, f"issued a certificate for {', '.join(m.hosts)} (site CA, valid until "
                              f"{m.not_after:%Y-%m-%d})")
        outputs: dict[str, Any] = {"secret": f"{self.namespace}/{self.secret}", "hosts": m.hosts,
                                   "notAfter": m.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "source": m.source}
        notes = list(m.notes)
        if m.ca_pem is not None:
            fp = fingerprint(m.ca_pem)
            outputs["caSha256"] = fp
            notes.append(f"clients must trust the site CA to reach https://{m.hosts[0]}/ without warnings: "
                         f"`hydra-bundle agent ca > hydra-site-ca.pem` (SHA-256 {fp})")
        return StepResult(StepState.DONE, f"{self.key}: {op} (certificate for {', '.join(m.hosts)} from {m.source}, "
                                          f"valid until {m.not_after:%Y-%m-%d})", changes, notes, outputs=outputs)


# ====================================================================== prune

class PruneStep(KubeStep):
    """Delete what an earlier version of the bundle applied and this one no longer has: labelled objects
    (``prune.py``) and Helm releases labelled as this bundle's."""

    kind = "prune"

    def __init__(self, bundle: BundleInfo, keep: list[tuple[ObjKey, str]], *, timeout: float = 600.0,
                 releases: set[tuple[str, str]] | None = None):
        super().__init__("prune", timeout=timeout)
        self.bundle = bundle
        self.keep = keep
        self.releases = releases or set()       # (namespace, release) of this version's chart steps

    def plan(self) -> list[Action]:
        return [self._action("prune", f"objects labelled hydra-bundle.io/bundle={self.bundle.name}",
                             f"delete those this version does not contain (keeps {len(self.keep)}; never Nodes, "
                             f"Namespaces or CRDs)"),
                self._action("prune", f"Helm releases labelled {RELEASE_LABEL}={self.bundle.name}",
                             f"uninstall those this version does not contain (keeps {len(self.releases)})")]

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline, kube, _ = self.begin(rt)
        emit = _emit(progress, self.name)
        deleted, kept = prune(kube, self.bundle.name, self.keep, deadline, emit)
        changes = [f"deleted {d}" for d in deleted]
        reason = helm_unavailable()
        if reason:
            kept.append(f"Helm releases were not checked: {reason}")
        else:
            helm = rt.helm()
            for rel in helm.labelled(RELEASE_LABEL, self.bundle.name):
                if (rel.namespace, rel.name) in self.releases:
                    continue
                emit(f"helm uninstall {rel.namespace}/{rel.name}")
                helm.uninstall(rel.name, rel.namespace, deadline)
                changes.append(f"uninstalled release {rel.namespace}/{rel.name} ({rel.chart})")
        n = len(changes)
        return StepResult(StepState.DONE, f"{n} deleted" + (f", {len(kept)} left for an operator" if kept else ""),
                          changes, kept)
