"""What a bundle needs of a site, read offline from its apply plan, its index and its spec's ``requirements:``: the
APIs its objects use and the CRDs it ships itself, the storage classes it names and those it creates, whether it
uses LoadBalancer addresses, its SQL tables, its images' architectures, the memory and size of its models. The
preflight checks (``preflight.py``) hold these against the cluster, MySQL and the disks.

Charts are read from their ``.tgz``: CRDs and StorageClasses in ``crds/``, ``templates/`` and ``files/`` that
parse as YAML count as shipped; a templated one cannot be read without rendering, so an API only such a chart
could provide is a warning, not a failure. A chart whose values set ``<…storageClass…>.name`` to a class creates
that class (csi-driver-nfs: ``storageClass: {create: true, name: nfs-csi}``).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..bundle.index import BundleIndex
from ..k8s.objects import CRD_KIND
from ..spec.deploy import SeedTable
from ..spec.requirements import Requirements
from .plan import ApplyPlan, load_deploy
from .steps import ChartStep, KubeStep, ManifestsStep, SqlStep, TlsStep, WaitForStep, WarmupStep

ChartBytes = Callable[[str], bytes | None]   # chart digest → the .tgz, None when not in the store
MAX_CHART_BYTES = 64 << 20
MAX_CHART_FILE = 8 << 20


@dataclass(frozen=True)
class ApiNeed:
    api_version: str          # group/version ("v1", "apps/v1")
    kind: str | None          # None: the group/version must be served
    where: str                # the step (or requirements) that needs it


@dataclass
class ChartContent:
    """CRDs and StorageClasses a chart ships (as far as its files can be read without rendering)."""

    crds: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (group, kind) → versions
    crd_names: set[str] = field(default_factory=set)
    storage_classes: set[str] = field(default_factory=set)
    templated_crds: bool = False
    templated_storage_classes: bool = False


@dataclass
class Needs:
    requirements: Requirements
    kube: bool                                            # some step talks to the cluster
    bundle: str = ""                                      # its name (objects labelled with it are its own)
    apis: list[ApiNeed] = field(default_factory=list)
    shipped_apis: dict[tuple[str, str], set[str]] = field(default_factory=dict)   # (group, kind) → versions
    shipped_by: dict[tuple[str, str], str] = field(default_factory=dict)          # (group, kind) → step
    shipped_crds: dict[str, str] = field(default_factory=dict)                    # CRD name → step
    maybe_crds_from: list[str] = field(default_factory=list)       # chart steps with templated (or unread) CRDs
    maybe_classes_from: list[str] = field(default_factory=list)    # … with templated (or unread) StorageClasses
    storage_classes: dict[str, str] = field(default_factory=dict)  # name → who needs it
    created_classes: dict[str, str] = field(default_factory=dict)  # name → step creating it
    load_balancer: list[str] = field(default_factory=list)         # LoadBalancer Services / address pools
    sql: list[tuple[str | None, list[SeedTable]]] = field(default_factory=list)  # (database, tables)
    images: dict[str, list[str]] = field(default_factory=dict)      # image ref → platforms carried
    models: dict[str, int] = field(default_factory=dict)            # warmed-up model → bytes
    unread_charts: list[str] = field(default_factory=list)          # chart steps whose .tgz was not readable

    def shipped(self, api_version: str, kind: str | None) -> str | None:
        """The step that ships this API (a CRD in the bundle), or None."""
        group, _, version = api_version.rpartition("/")
        for (g, k), versions in self.shipped_apis.items():
            if g == group and version in versions and (kind is None or k == kind):
                return self.shipped_by[(g, k)]
        return None


def _crd_key(obj: dict[str, Any]) -> tuple[str, str, set[str]] | None:
    spec = obj.get("spec") or {}
    group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
    if not isinstance(group, str) or not isinstance(kind, str):
        return None
    versions = {str(v.get("name")) for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("name")}
    if spec.get("version"):
        versions.add(str(spec["version"]))
    return group, kind, versions


def chart_content(tgz: bytes) -> ChartContent:
    """CRDs and StorageClasses in a chart archive (module docstring)."""
    out = ChartContent()
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:*") as tar:
        for m in tar:
            if not m.isfile() or m.size > MAX_CHART_FILE or not m.name.endswith((".yaml", ".yml", ".tpl")):
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            text = f.read().decode("utf-8", "replace")
            if CRD_KIND not in text and "StorageClass" not in text:
                continue
            for doc in text.split("\n---"):
                crd, sc = f"kind: {CRD_KIND}" in doc, "kind: StorageClass" in doc
                if not (crd or sc):
                    continue
                try:
                    obj = None if "{{" in doc else yaml.safe_load(doc)
                except yaml.YAMLError:
                    obj = None
                if not isinstance(obj, dict):
                    out.templated_crds |= crd
                    out.templated_storage_classes |= sc
                    continue
                name = str((obj.get("metadata") or {}).get("name") or "")
                if obj.get("kind") == CRD_KIND:
                    key = _crd_key(obj)
                    if key is not None:
                        out.crds.setdefault(key[:2], set()).update(key[2])
                        out.crd_names.add(name)
                elif obj.get("kind") == "StorageClass" and name:
                    out.storage_classes.add(name)
    return out


def _class_names_in_values(values: Any, path: str = "") -> set[str]:
    """``…storageClass….name: X`` anywhere in chart values: the chart creates class X."""
    found: set[str] = set()
    if isinstance(values, dict):
        for k, v in values.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "name" and isinstance(v, str) and "storageclass" in path.lower():
                found.add(v)
            found |= _class_names_in_values(v, sub)
    elif isinstance(values, list):
        for v in values:
            found |= _class_names_in_values(v, path)
    return found


def _api_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    av, kind = obj.get("apiVersion"), obj.get("kind")
    return (av, kind) if isinstance(av, str) and isinstance(kind, str) else None


def _requirements(index: BundleIndex) -> Requirements:
    return Requirements.model_validate((index.spec or {}).get("requirements") or {})


def _from_index(n: Needs, index: BundleIndex) -> Needs:
    """What the index alone says: requirements, images with their platforms, warmed-up models' sizes."""
    req = n.requirements
    for a in req.apis:
        parts = a.split("/")
        kind = parts[-1] if parts[-1][:1].isupper() else None
        n.apis.append(ApiNeed("/".join(parts[:-1]) if kind else a, kind, "requirements.apis"))
    for sc in req.storage_classes:
        n.storage_classes.setdefault(sc, "requirements.storage_classes")
    n.images = {i.ref: list(i.platforms) or list(index.platforms) for i in index.components.images}
    deploy = load_deploy(index)
    warmed = {st.warmup.model for st in (deploy.steps if deploy else []) if st.warmup is not None}
    for m in index.components.models:
        if m.name in warmed or m.name in req.models:
            n.models[m.name] = sum(f.size for f in m.files)
    return n


def needs_offline(index: BundleIndex) -> Needs:
    """Needs without a site (no plan can be built): the index, the requirements, which steps use what."""
    deploy = load_deploy(index)
    steps = deploy.steps if deploy else []
    n = Needs(_requirements(index), kube=any(st.action != "sql" for st in steps), bundle=index.name)
    n.sql = [(st.sql.database, list(st.sql.tables)) for st in steps if st.sql is not None]
    return _from_index(n, index)


def needs_of(plan: ApplyPlan, index: BundleIndex, chart_bytes: ChartBytes) -> Needs:
    """Everything the preflight checks need to know about the bundle, without touching the site."""
    n = Needs(_requirements(index), kube=any(isinstance(s, KubeStep) for s in plan.steps), bundle=plan.bundle.name)
    journal = "apply:"

    def ship_crd(obj: dict[str, Any], step: str) -> None:
        key = _crd_key(obj)
        if key is not None:
            n.shipped_apis.setdefault(key[:2], set()).update(key[2])
            n.shipped_by.setdefault(key[:2], step)
        name = (obj.get("metadata") or {}).get("name")
        if isinstance(name, str):
            n.shipped_crds.setdefault(name, step)

    def use(obj: dict[str, Any], step: str) -> None:
        api = _api_of(obj)
        if api is None:
            return
        if api[1] == CRD_KIND:
            ship_crd(obj, step)
        n.apis.append(ApiNeed(api[0], api[1], step))
        if api[1] == "StorageClass":
            name = (obj.get("metadata") or {}).get("name")
            if isinstance(name, str):
                n.created_classes.setdefault(name, step)
        spec = obj.get("spec") or {}
        if api[1] == "PersistentVolumeClaim" and isinstance(spec.get("storageClassName"), str):
            n.storage_classes.setdefault(spec["storageClassName"], step)
        if api[1] == "Service" and spec.get("type") == "LoadBalancer":
            md = obj.get("metadata") or {}
            n.load_balancer.append(f"Service {md.get('namespace') or 'default'}/{md.get('name')} ({step})")
        if api[1] == "IPAddressPool":
            n.load_balancer.append(f"IPAddressPool {(obj.get('metadata') or {}).get('name')} ({step})")

    for s in plan.steps:
        step = journal + s.name
        if s.off is not None:   # will not run on this site (optional, not enabled; when: false): needs nothing
            continue
        if isinstance(s, ManifestsStep):
            for p in s.objects:
                use(p.obj, step)
        elif isinstance(s, WarmupStep):
            use(s.namespace, step)
            use(s.dataset, step)
            sc = s.dataset["spec"]["volumeClaimTemplate"]["spec"].get("storageClassName")
            if isinstance(sc, str):
                n.storage_classes.setdefault(sc, f"{step} (Dataset {s.dataset['metadata']['name']})")
        elif isinstance(s, TlsStep):
            n.apis.append(ApiNeed("v1", "Secret", step))
        elif isinstance(s, WaitForStep):
            for t in s.targets:
                use(t, step)
        elif isinstance(s, ChartStep):
            for o in s.pre_objects:
                use(o, step)
            for name in _class_names_in_values(s.release.values):
                n.created_classes.setdefault(name, f"{step} (values)")
            data = chart_bytes(s.release.chart_digest) if s.release.chart_digest else None
            try:
                if data is None or len(data) > MAX_CHART_BYTES:
                    raise OSError("not readable")
                cc = chart_content(data)
            except (tarfile.TarError, OSError, EOFError):
                n.unread_charts.append(step)
                n.maybe_crds_from.append(step)
                n.maybe_classes_from.append(step)
                continue
            for (g, k), versions in cc.crds.items():
                n.shipped_apis.setdefault((g, k), set()).update(versions)
                n.shipped_by.setdefault((g, k), step)
            for name in cc.crd_names:
                n.shipped_crds.setdefault(name, step)
            for name in cc.storage_classes:
                n.created_classes.setdefault(name, step)
            if cc.templated_crds:
                n.maybe_crds_from.append(step)
            if cc.templated_storage_classes:
                n.maybe_classes_from.append(step)
        elif isinstance(s, SqlStep):
            n.sql.append((s.seed.database or s.site_database, list(s.seed.tables)))
    return _from_index(n, index)
