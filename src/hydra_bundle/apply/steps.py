"""The apply steps (one class per ``deploy`` action, plus prune). Built by ``plan.build_plan``; each is
self-contained: ``plan()`` lists its actions offline, ``run(rt, progress)`` converges and can be re-run."""

from __future__ import annotations

import base64
import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import (
    Action,
    ApplyError,
    BundleInfo,
    Deadline,
    Progress,
    ProgressEvent,
    Runtime,
    Step,
    StepResult,
    no_progress,
    poll_delays,
)
from .deploy_spec import SqlSeed
from .helm import HelmRelease, command_text, deployed_without_helm, helm_env, upgrade_install, write_values
from .objects import CRD_KIND, ObjKey, key_of, mark_ours, sort_for_apply

if TYPE_CHECKING:
    from .kube import Kube
from .rewrite import ImageChange
from .tls import Material, SiteCA, fingerprint, from_files
from .warmup import DATASET_API, DATASET_CRD, DATASET_KIND, dataset_readiness, namespace_object

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
BUILTIN_API_VERSIONS = {
    "Pod": "v1", "Service": "v1", "Namespace": "v1", "PersistentVolumeClaim": "v1", "ConfigMap": "v1",
    "Secret": "v1", "ServiceAccount": "v1", "Node": "v1",
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1",
    "Job": "batch/v1", "CronJob": "batch/v1", "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "Gateway": "gateway.networking.k8s.io/v1", "HTTPRoute": "gateway.networking.k8s.io/v1",
    "Dataset": DATASET_API, "IPAddressPool": "metallb.io/v1beta1", "L2Advertisement": "metallb.io/v1beta1",
}


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


def _emit(progress: Progress, step: str):  # type: ignore[no-untyped-def]
    def f(msg: str, done: int | None = None, total: int | None = None) -> None:
        progress(ProgressEvent(step, msg, done, total))
    return f


class KubeStep(Step):
    def kube(self, rt: Runtime, deadline: Deadline) -> Kube:
        k = rt.kube()
        k.deadline = deadline
        k.sleep = rt.sleep
        return k

    def begin(self, rt: Runtime) -> tuple[Deadline, Kube, StepResult | None]:
        """Start a run: the step's deadline, the kube adapter bound to it, and the skip result (``when``)."""
        deadline = Deadline(self.timeout)
        kube = self.kube(rt, deadline)
        return deadline, kube, self.skipped(rt)

    def skipped(self, rt: Runtime) -> StepResult | None:
        why = self._skip_reason(rt)
        return StepResult("skipped", f"skipped: {why}") if why else None


def _tally(outcomes: list[tuple[str, str]]) -> tuple[str, list[str]]:
    counts: dict[str, int] = {}
    changes = []
    for op, what in outcomes:
        counts[op] = counts.get(op, 0) + 1
        if op != "unchanged":
            changes.append(f"{op} {what}")
    summary = ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "nothing to do"
    return summary, changes


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
        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        ordered = self.ordered()
        total = len(ordered)
        outcomes: list[tuple[str, str]] = []
        notes: list[str] = []
        done = 0

        def apply(p: PreparedObject) -> None:
            nonlocal done
            emit(f"apply {p.key}", done, total)
            o = kube.apply(p.obj)
            outcomes.append((o.op, str(o.key)))
            notes.extend(o.notes)
            done += 1
            emit(f"{o.op} {o.key}", done, total)

        crds = [p for p in ordered if p.obj["kind"] == CRD_KIND]
        for p in crds:
            apply(p)
        if crds:
            kube.wait_ready([p.obj for p in crds], deadline,
                            lambda m, d, t: emit(f"CRDs Established: {m}", d, t), rt.poll_interval)
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
                outputs = kube.wait_ready([kube.normalize(copy.deepcopy(o)) for o in workloads], deadline,
                                          lambda m, d, t: emit(f"rollout: {m}", d, t), rt.poll_interval)
        summary, changes = _tally(outcomes)
        return StepResult("done", f"{total} objects: {summary}", changes, notes, outputs=outputs)


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
        _, kube, skip = self.begin(rt)
        if skip:
            return skip
        names = self.nodes
        if not names:
            nodes = kube.nodes()
            if not nodes:
                raise ApplyError("the cluster has no nodes to label")
            names = [n["metadata"]["name"] for n in nodes if kube.schedulable(n)] or \
                [n["metadata"]["name"] for n in nodes]
        emit = _emit(progress, self.name)
        changes = kube.label_nodes(sorted(names), self.labels, emit)
        return StepResult("done", f"{len(names)} node(s): {len(changes)} labelled, "
                                  f"{len(names) - len(changes)} already labelled", changes)


# ====================================================================== charts

def pull_secret_object(name: str, namespace: str, registry_host: str) -> dict[str, Any]:
    """A docker-registry Secret for the site registry (anonymous pulls: no credentials in it)."""
    import json

    cfg = json.dumps({"auths": {registry_host: {}}}, separators=(",", ":")).encode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace},
            "data": {".dockerconfigjson": base64.b64encode(cfg).decode()}}


class ChartStep(KubeStep):
    kind = "chart"

    def __init__(self, name: str, release: HelmRelease, *, bundle: BundleInfo, pre_objects: list[dict[str, Any]],
                 when: str = "always", timeout: float = 600.0):
        super().__init__(name, when=when, timeout=timeout)
        self.release = release
        self.bundle = bundle
        self.pre_objects = pre_objects           # namespace + pull secrets, already marked ours

    def desired(self) -> list[tuple[ObjKey, str]]:
        return [(key_of(o), o["apiVersion"]) for o in self.pre_objects]

    def values_path(self, rt: Runtime | None) -> Path:
        base = (rt.state_dir if rt is not None and rt.state_dir is not None else None)
        if base is None:
            base = Path(tempfile.gettempdir()) / "hydra-bundle"
        return base / "helm" / f"{self.bundle.name}-{self.release.namespace}-{self.release.release}.values.yaml"

    def plan(self) -> list[Action]:
        out = [self._action("apply", str(key_of(o)), "for the chart's pods") for o in self.pre_objects]
        r = self.release
        out.append(self._action("helm", f"release {r.namespace}/{r.release}",
                                command_text("helm", r.upgrade_args("<state_dir>/helm/…values.yaml"))))
        return out

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline = Deadline(self.timeout)
        emit = _emit(progress, self.name)
        if self.when != "always" or self.pre_objects:
            kube = self.kube(rt, deadline)
            skip = self.skipped(rt)
            if skip:
                return skip
            outcomes = []
            for o in sort_for_apply(self.pre_objects):
                res = kube.apply(o)
                outcomes.append((res.op, str(res.key)))
                emit(f"{res.op} {res.key}")
            _, changes = _tally(outcomes)
        else:
            changes = []
        values_file = write_values(self.values_path(rt), self.release.values)
        helm = rt.helm_binary()
        r = self.release
        if helm is None:
            notes = []
            try:  # did an operator run the command? (helm's release Secret says so; a short look only)
                revision = deployed_without_helm(self.kube(rt, Deadline(min(10.0, self.timeout))), r)
            except ApplyError as e:
                revision = None
                notes.append(f"could not check whether the release is deployed already: {e}")
            if revision is not None:
                return StepResult("done", f"release {r.namespace}/{r.release}: {r.chart_name} {r.version} deployed "
                                          f"(revision {revision}, installed outside the agent: no helm here)", changes)
            cmd = ["helm", *r.upgrade_args(values_file)]
            return StepResult("pending", f"helm is not installed here: install release {r.namespace}/{r.release} "
                                         f"by running the command (or set site.helm); the step notices the "
                                         f"release once it is deployed", changes, notes, command=cmd)
        emit(f"helm upgrade --install {r.release} ({r.chart} {r.version})")
        what = upgrade_install(helm, r, values_file, helm_env(rt.state_dir / "helm-home" if rt.state_dir else None))
        if what != "unchanged":
            changes.append(f"helm {what} {r.namespace}/{r.release} {r.chart_name} {r.version}")
        return StepResult("done", f"release {r.namespace}/{r.release}: {what}", changes)


# ====================================================================== sql

class SqlStep(Step):
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

        if self.when != "always":
            k = rt.kube()
            k.deadline = Deadline(self.timeout)
            k.sleep = rt.sleep
            why = self._skip_reason(rt)
            if why:
                return StepResult("skipped", f"skipped: {why}")
        if rt.site.mysql is None:
            raise ApplyError("sql: site.mysql is not set in the agent config (dsn + password_file)")
        changes, unchanged = seed(rt.site.mysql, self.seed, Deadline(self.timeout), rt,
                                  _emit(progress, self.name))
        n = sum(len(t.rows) for t in self.seed.tables)
        return StepResult("done", f"{n} row(s): {len(changes)} written, {unchanged} already up to date "
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
            kube.resource(DATASET_API, DATASET_KIND, wait=5)
        except ApplyError:
            raise ApplyError(f"the Dataset API ({DATASET_CRD}) is not installed: install the BaizeAI dataset chart "
                             f"(a chart step before this one; if it is pending, run its command) and re-run") from None
        outcomes = []
        for o in (self.namespace, self.dataset):
            res = kube.apply(o)
            outcomes.append((res.op, str(res.key)))
            emit(f"{res.op} {res.key}")
        summary, changes = _tally(outcomes)
        if not self.wait:
            return StepResult("done", summary, changes)
        md = self.dataset["metadata"]
        key = key_of(self.dataset)
        last = ""
        delays = poll_delays(rt.poll_interval)
        while True:
            live = kube.get(DATASET_API, DATASET_KIND, md["name"], md["namespace"])
            if live is None:
                raise ApplyError(f"{key} disappeared while waiting for it")
            ready, msg = dataset_readiness(live)
            if msg != last:
                emit(f"{key}: {msg}", 1 if ready else 0, 1)
                last = msg
            if ready:
                return StepResult("done", f"{key} READY ({summary})", changes,
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
        deadline, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        outputs = kube.wait_ready([kube.normalize(copy.deepcopy(t)) for t in self.targets], deadline,
                                  lambda m, d, t: emit(m, d, t), rt.poll_interval)
        lines = [f"{k}: {', '.join(v.get('addresses', []))}" for k, v in outputs.items() if v.get("addresses")]
        return StepResult("done", f"{len(self.targets)} ready" + (f"; {'; '.join(lines)}" if lines else ""),
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
        _, kube, skip = self.begin(rt)
        if skip:
            return skip
        emit = _emit(progress, self.name)
        m = self.material(rt)
        outcomes = []
        if kube.get("v1", "Namespace", self.namespace) is None:
            res = kube.apply(mark_ours(namespace_object(self.namespace), self.bundle))
            outcomes.append((res.op, str(res.key)))
        secret = mark_ours({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                            "metadata": {"name": self.secret, "namespace": self.namespace},
                            "data": {"tls.crt": base64.b64encode(m.cert_pem).decode(),
                                     "tls.key": base64.b64encode(m.key_pem).decode()}}, self.bundle)
        res = kube.apply(secret)
        outcomes.append((res.op, str(res.key)))
        emit(f"{res.op} {res.key}")
        _, changes = _tally(outcomes)
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
        return StepResult("done", f"{self.key}: {res.op} (certificate for {', '.join(m.hosts)} from {m.source}, "
                                  f"valid until {m.not_after:%Y-%m-%d})", changes, notes, outputs=outputs)


# ====================================================================== prune

class PruneStep(KubeStep):
    kind = "prune"

    def __init__(self, bundle: BundleInfo, keep: list[tuple[ObjKey, str]], *, timeout: float = 600.0):
        super().__init__("prune", timeout=timeout)
        self.bundle = bundle
        self.keep = keep

    def plan(self) -> list[Action]:
        return [self._action("prune", f"objects labelled hydra-bundle.io/bundle={self.bundle.name}",
                             f"delete those this version does not contain (keeps {len(self.keep)}; never Nodes, "
                             f"Namespaces or CRDs)")]

    def run(self, rt: Runtime, progress: Progress = no_progress) -> StepResult:
        deadline = Deadline(self.timeout)
        kube = self.kube(rt, deadline)
        emit = _emit(progress, self.name)
        keep: set[ObjKey] = set()
        for key, api_version in self.keep:
            keep.add(key)
            try:
                keep.add(kube.normalize_key(key, api_version))
            except ApplyError:
                pass  # kind unknown to the server (e.g. a pending chart's CRD): nothing of it to prune
        deleted, kept = kube.prune(self.bundle.name, keep, lambda m: emit(m))
        return StepResult("done", f"{len(deleted)} deleted" + (f", {len(kept)} left for an operator" if kept else ""),
                          [f"deleted {d}" for d in deleted], kept)
