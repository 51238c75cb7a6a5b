"""Bundle index + site values → the ordered apply steps (what ``agent plan BUNDLE`` prints, and what the
agent's journal runs). Building a plan reads manifests from the content store but touches no cluster or
database; every problem (unknown variable, bad YAML, missing manifest) is raised here, before anything runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..bundle.index import BundleIndex
from ..errors import ApplyError, Cancelled, SpecError
from ..k8s.kinds import default_api_version
from ..k8s.manifests import parse_manifests, substitute_data
from ..k8s.objects import MANAGED_BY, MANAGED_BY_LABEL, BundleInfo, ObjKey, mark_ours, namespace_object
from ..spec.deploy import DeploySpec, SqlSeed, TlsSecret
from .choices import condition_text, decide, unmatched_site_names, values_json, values_lines
from .release import HelmRelease, chart_values
from .rewrite import add_pull_secret, chart_site_repository, pull_secret, rewrite_workload_images
from .runtime import Runtime
from .site import SiteConfig
from .sitevalues import overlay
from .step import Action, ApplyStep
from .steps import (
    ChartStep,
    KubeStep,
    LabelNodesStep,
    ManifestsStep,
    PreparedObject,
    PruneStep,
    SqlStep,
    TlsStep,
    WaitForStep,
    WarmupStep,
    pull_secret_object,
)
from .warmup import dataset_object

ReadBlob = Callable[[str], bytes]


@dataclass
class ApplyPlan:
    bundle: BundleInfo
    steps: list[ApplyStep]
    notes: list[str] = field(default_factory=list)
    now: dict[str, Action] = field(default_factory=dict)  # step → what it would do on the cluster right now

    def preview(self, rt: Runtime) -> None:
        """Ask the cluster what each chart step would do now (install, upgrade with the values diff, nothing);
        a cluster that does not answer is noted, not an error."""
        for s in self.steps:
            if isinstance(s, ChartStep) and s.off is None:   # a step that is off here would do nothing
                try:
                    self.now[s.name] = s.preview(rt)
                except (ApplyError, Cancelled) as e:
                    self.now[s.name] = Action(s.name, "helm", f"release {s.release.namespace}/{s.release.release}",
                                              f"cannot tell install from upgrade: {e}")

    def json(self) -> dict[str, Any]:
        steps = []
        for s in self.steps:
            d = s.describe()
            d.update(values_json(s))
            if s.name in self.now:
                d["now"] = self.now[s.name].json()
            steps.append(d)
        return {"bundle": {"name": self.bundle.name, "version": self.bundle.version, "digest": self.bundle.digest},
                "steps": steps, "notes": self.notes}

    def text(self) -> str:
        lines = [f"apply plan for {self.bundle.name} {self.bundle.version}"]
        if not self.steps:
            lines.append("  nothing to apply (the spec has no deploy steps)")
        for i, s in enumerate(self.steps, 1):
            cond = f"  [skipped: {s.off}]" if s.off else condition_text(s)
            lines.append(f"{i:>2}. {s.name} ({s.kind}, timeout {s.timeout:.0f}s){cond}")
            for act in ([] if s.off else s.plan()):
                lines.append(f"      {act.op:<11} {act.target}" + (f"  ({act.detail})" if act.detail else ""))
            lines += values_lines(s)
            if s.name in self.now:
                lines.append(f"      {'now':<11} {self.now[s.name].detail}")
            lines += [f"      note        {n}" for n in s.notes]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def dumps(self) -> str:
        return json.dumps(self.json(), indent=2, ensure_ascii=False)


def _first_error(e: ValueError) -> str:
    """``field[.sub]: message`` of a pydantic error (or the plain message)."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc") or ())
        return f"{loc}: " + str(first.get("msg", e)).removeprefix("Value error, ")
    return ": " + str(e)


def _manifest_objects(index: BundleIndex, name: str, read_blob: ReadBlob, variables: dict[str, Any],
                      site: SiteConfig, bundle: BundleInfo) -> list[PreparedObject]:
    comp = next((m for m in index.components.manifests if m.name == name), None)
    if comp is None:
        raise ApplyError(f"deploy: manifest {name!r} is not in the bundle")
    fname = f"manifests/{name}/{comp.file.path}"
    try:
        text = read_blob(comp.file.digest).decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([f"{fname}:1: not UTF-8 text"]) from None
    out = []
    secret_in: dict[str, str] = {}   # namespace → where the first workload needing the pull Secret is
    for doc in parse_manifests(text, fname, variables):
        try:
            changes = rewrite_workload_images(doc.obj, site.registry)
        except Exception as e:  # an image reference that does not parse
            raise SpecError([f"{doc.where}: {e}"]) from None
        if changes and site.registry_auth is not None and add_pull_secret(doc.obj):
            secret_in.setdefault((doc.obj.get("metadata") or {}).get("namespace") or "default", doc.where)
        prior = ((doc.obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)
        p = PreparedObject(mark_ours(doc.obj, bundle), doc.where, changes)
        p.replaced_manager = prior if prior not in (None, MANAGED_BY) else None
        out.append(p)
    if site.registry_auth is not None:
        body = site.registry_auth.dockerconfigjson(site.registry.partition("/")[0])
        for ns, where in secret_in.items():   # before the workloads that use it (apply order sorts by kind too)
            out.insert(0, PreparedObject(mark_ours(pull_secret(ns, body), bundle), where, []))
    return out


_KUBE_ACTIONS = {"manifests", "label_nodes", "chart", "warmup", "wait_for", "tls"}


def load_deploy(index: BundleIndex) -> DeploySpec | None:
    raw = (index.spec or {}).get("deploy")
    if not raw:
        return None
    try:
        return DeploySpec.model_validate(raw)
    except Exception as e:
        raise ApplyError(f"the bundle's deploy section does not validate: {e}") from None


def step_names(index: BundleIndex) -> list[str]:
    """The names :func:`build_plan` will give its steps, in order, from the signed index alone (no blobs, no
    site): what a journal can record before the bundle is ingested."""
    deploy = load_deploy(index)
    if deploy is None:
        return []
    names = [st.step_name for st in deploy.steps]
    if deploy.prune and any(st.action in _KUBE_ACTIONS for st in deploy.steps):
        names.append("prune")
    return names


def build_plan(index: BundleIndex, site: SiteConfig, read_blob: ReadBlob, *, digest: str = "") -> ApplyPlan:
    """The ordered steps for this bundle on this site (+ a final prune step when ``deploy.prune``).

    ``read_blob(digest) -> bytes`` reads a blob from the agent's content store (manifests are small).
    ``digest`` (the index digest) is recorded on every object as an annotation."""
    bundle = BundleInfo(index.name, index.version, digest)
    deploy = load_deploy(index)
    if deploy is None:
        return ApplyPlan(bundle, [], ["the bundle's spec has no deploy section"])
    variables = site.variables(index.name, index.version)
    spec_charts = {c["name"]: c for c in (index.spec or {}).get("charts") or []}
    comp_charts = {c.name: c for c in index.components.charts}
    steps: list[ApplyStep] = []
    keep: list[tuple[ObjKey, str]] = []
    seen_objects: dict[ObjKey, str] = {}
    notes: list[str] = []
    for i, st in enumerate(deploy.steps):
        name = st.step_name
        timeout = st.timeout or deploy.timeout or site.timeout
        where = f"spec deploy.steps[{i}]"
        common: dict[str, Any] = {"when": st.when, "timeout": timeout}
        if st.manifests is not None:
            objs: list[PreparedObject] = []
            for m in st.manifests:
                objs += _manifest_objects(index, m, read_blob, variables, site, bundle)
            for p in objs:
                if p.key in seen_objects:
                    raise SpecError([f"{p.where}: {p.key} is already defined at {seen_objects[p.key]}"])
                seen_objects[p.key] = p.where
                if p.replaced_manager:
                    notes.append(f"{p.where}: {p.key} said app.kubernetes.io/managed-by={p.replaced_manager}; "
                                 f"it is managed by hydra-bundle now")
            step: ApplyStep = ManifestsStep(name, objs, wait=st.wait, **common)
        elif st.label_nodes is not None:
            step = LabelNodesStep(name, st.label_nodes.labels, st.label_nodes.nodes,
                                  site_nodes=site.simulated_gpu_nodes, **common)
        elif st.chart is not None:
            c = st.chart
            spec_c = spec_charts.get(c.name) or {}
            comp = comp_charts.get(c.name)
            if comp is None:
                raise ApplyError(f"{where}: chart {c.name!r} is not in the bundle")
            release = c.release or spec_c.get("release") or c.name
            namespace = c.namespace or spec_c.get("namespace") or "default"
            values = chart_values(spec_c.get("values") or {}, c.values, c.image_values, c.registry_values,
                                  site.registry)
            values, values_files = overlay(values, site.values, name, release)
            values = substitute_data(values, variables, f"{where}.chart.values")
            repo = chart_site_repository(comp.source, comp.name, site.registry_prefix)
            chart_name = str(spec_c.get("chart") or (comp.source.rstrip("/").rsplit("/", 1)[-1]
                                                     if comp.source.startswith("oci://") else comp.name))
            rel = HelmRelease(release=release, namespace=namespace, chart=f"oci://{site.registry_host}/{repo}",
                              chart_name=chart_name, version=comp.version, values=values,
                              chart_digest=comp.chartDigest, plain_http=site.plain_http,
                              skip_verify=site.registry_skip_verify,
                              kubeconfig=str(site.kubeconfig) if site.kubeconfig else None,
                              kube_context=site.kube_context, wait=st.wait, timeout=timeout,
                              create_namespace=c.create_namespace)
            pre: list[dict[str, Any]] = []
            if c.pull_secrets:
                pre.append(mark_ours(namespace_object(namespace), bundle))
                pre += [mark_ours(pull_secret_object(s, namespace, site.registry_host), bundle)
                        for s in c.pull_secrets]
            step = ChartStep(name, rel, bundle=bundle, pre_objects=pre, **common)
            if values_files:
                step.choices["valuesFiles"] = [vf.json() for vf in values_files]
        elif st.sql is not None:
            seed = SqlSeed.model_validate(substitute_data(st.sql.model_dump(), variables, f"{where}.sql"))
            step = SqlStep(name, seed, site_database=site.mysql.database if site.mysql else None, **common)
        elif st.warmup is not None:
            ds = mark_ours(dataset_object(st.warmup, site), bundle)
            ds = substitute_data(ds, variables, f"{where}.warmup")
            step = WarmupStep(name, ds, mark_ours(namespace_object(st.warmup.namespace), bundle), wait=st.wait,
                              **common)
        elif st.tls is not None:
            raw = substitute_data(st.tls.model_dump(), variables, f"{where}.tls")
            try:
                tls = TlsSecret.model_validate(raw).checked()
            except ValueError as e:
                raise SpecError([f"{where}.tls{_first_error(e)}"]) from None
            files = site.tls
            step = TlsStep(name, tls.secret, tls.namespace, tls.hosts, bundle=bundle,
                           cert_file=files.cert_file if files else None, key_file=files.key_file if files else None,
                           **common)
        else:
            assert st.wait_for is not None
            targets = []
            for j, t in enumerate(st.wait_for):
                api_version = t.api_version or default_api_version(t.kind)
                if api_version is None:
                    raise SpecError([f"{where}.wait_for[{j}]: give api_version for kind {t.kind}"])
                md: dict[str, Any] = {"name": t.name}
                if t.namespace:
                    md["namespace"] = t.namespace
                targets.append({"apiVersion": api_version, "kind": t.kind, "metadata": md})
            step = WaitForStep(name, targets, **common)
        step.notes = [str(substitute_data(n, variables, f"{where}.notes[{j}]")) for j, n in enumerate(st.notes)]
        step.off, choices = decide(st, site)
        step.choices.update(choices)
        if step.off is None:   # what a step that is off here would own is not kept: prune removes it
            keep += step.desired()
        steps.append(step)
    notes += unmatched_site_names(deploy, site)
    if deploy.prune and any(isinstance(s, KubeStep) for s in steps):
        releases = {s.release.key for s in steps if isinstance(s, ChartStep) and s.off is None}
        steps.append(PruneStep(bundle, keep, timeout=deploy.timeout or site.timeout, releases=releases))
    return ApplyPlan(bundle, steps, notes)
