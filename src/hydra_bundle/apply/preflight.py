"""Preflight: hold what a bundle needs (``needs.py``) against this site before anything is applied, and say per
check ``pass`` / ``warn`` / ``fail`` / ``skip`` with a fix hint. A ``fail`` means an apply step would fail or hang
(a missing CRD, a storage class nobody creates, MySQL refusing the credentials, images no node can run, no node
with the memory a model needs, a store too full): the agent's ``preflight`` step then keeps the apply steps
waiting until the site is fixed. Checks that need the cluster or MySQL are ``skip`` with the reason when the
agent config has no ``site:``, or when the bundle has no step that uses them.

Nothing is changed anywhere: the cluster is only read (discovery, GET/LIST), MySQL only connected to and asked
``information_schema``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..disk import human_bytes
from ..errors import ApplyError, TransientError, brief
from ..k8s.nodes import schedulable
from ..k8s.objects import BUNDLE_LABEL
from ..retry import Deadline
from ..spec.requirements import parse_quantity
from ..states import CheckStatus
from .needs import Needs
from .site import SiteConfig

if TYPE_CHECKING:
    from .kube import Kube
    from .runtime import Runtime

TIMEOUT = 30.0                # at most this long for the cluster's answers (an unreachable API server fails)
ARCH_LABELS = ("kubernetes.io/arch", "beta.kubernetes.io/arch")
_ANY_ADDRESSES = 1 << 16      # pools larger than this are not enumerated


@dataclass
class Check:
    name: str
    status: CheckStatus
    detail: str
    hint: str | None = None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": str(self.status), "detail": self.detail}
        if self.hint:
            out["hint"] = self.hint
        return out


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def of(self, status: CheckStatus) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    @property
    def failed(self) -> list[Check]:
        return self.of(CheckStatus.FAIL)

    @property
    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of(s))} {s}" for s in CheckStatus if self.of(s))
        text = f"{len(self.checks)} checks: {counts or 'none'}"
        fails = self.failed
        if fails:
            text += "; failed: " + "; ".join(f"{c.name}: {c.detail}" for c in fails)
        return text

    def notes(self) -> list[str]:
        """One line per warn and fail, with its hint (what ``agent status`` shows under the step)."""
        return [f"{c.status} {c.name}: {c.detail}" + (f" (fix: {c.hint})" if c.hint else "")
                for c in self.checks if c.status in (CheckStatus.FAIL, CheckStatus.WARN)]

    def json(self) -> dict[str, Any]:
        return {"ok": not self.failed, "summary": self.summary, "checks": [c.json() for c in self.checks]}

    def table(self) -> str:
        width = max([5, *(len(c.name) for c in self.checks)])
        lines = [f"{'check':<{width}}  status  detail"]
        for c in self.checks:
            lines.append(f"{c.name:<{width}}  {c.status:<6}  {c.detail}")
            if c.hint and c.status != CheckStatus.PASS:
                lines.append(f"{'':<{width}}  {'':<6}  fix: {c.hint}")
        return "\n".join(lines)


@dataclass
class StoreInfo:
    """The agent's content store as the bundle meets it."""

    path: Path
    missing: int              # bytes of the bundle's blobs not in the store yet
    bundle_bytes: int         # all of the bundle's blobs
    min_free: int             # limits.min_free_bytes


# ------------------------------------------------------------------------------------------------ entry point

def run_checks(needs: Needs, site: SiteConfig | None, rt: Runtime | None, store: StoreInfo,
               no_site: str = "no site: section in the agent config") -> Report:
    """Every check for this bundle on this site, in a fixed order (module docstring)."""
    r = Report()
    cluster = ["kubernetes", "apis", *(["crds"] if needs.requirements.crds else []), "storage-classes",
               "metallb", "architectures", *(["node-memory"] if needs.requirements.node_memory else []),
               *(f"memory {m}" for m, mn in needs.requirements.models.items() if mn.memory)]
    if site is None or rt is None:
        r.checks += [Check(n, CheckStatus.SKIP, f"cannot check: {no_site}") for n in cluster]
        r.checks.append(Check("mysql", CheckStatus.SKIP, f"cannot check: {no_site}" if needs.sql else
                              "the bundle has no sql step"))
    elif not needs.kube:
        r.checks += [Check(n, CheckStatus.SKIP, "no deploy step uses the cluster") for n in cluster]
        r.checks.append(_mysql(needs, site))
    else:
        deadline = Deadline(min(TIMEOUT, site.timeout))
        try:
            r.checks += _cluster(needs, site, rt.kube(), deadline)
        except ApplyError as e:   # the API server did not answer (or the kubeconfig does not load)
            hint = ("check site.kubeconfig (or in_cluster) and that the API server answers from the agent host"
                    if isinstance(e, TransientError) or "kubeconfig" in str(e) else None)
            r.checks.append(Check(cluster[0], CheckStatus.FAIL, f"cannot ask the cluster: {brief(e)}", hint))
            r.checks += [Check(n, CheckStatus.SKIP, f"cannot check: the cluster did not answer (see {cluster[0]})")
                         for n in cluster[1:]]
        r.checks.append(_mysql(needs, site))
    r.checks.append(_store(needs, store))
    r.checks.append(_nfs(needs, site, no_site))
    return r


# ------------------------------------------------------------------------------------------------ the cluster

def _cluster(needs: Needs, site: SiteConfig, kube: Kube, deadline: Deadline) -> list[Check]:
    out = [_kubernetes(needs, kube, deadline), _apis(needs, kube, deadline)]
    if needs.requirements.crds:
        out.append(_crds(needs, kube, deadline))
    out.append(_storage_classes(needs, kube, deadline))
    out.append(_metallb(needs, site, kube, deadline))
    nodes = kube.nodes(deadline)
    out.append(_architectures(needs, nodes))
    mem = [(f"memory {m}", mn.memory, f"requirements.models.{m}.memory") for m, mn in
           needs.requirements.models.items() if mn.memory]
    if needs.requirements.node_memory:
        mem.insert(0, ("node-memory", needs.requirements.node_memory, "requirements.node_memory"))
    if mem:
        requested = _requested_memory(kube, deadline)
        out += [_memory(name, want, why, nodes, requested) for name, want, why in mem]
    return out


def _kubernetes(needs: Needs, kube: Kube, deadline: Deadline) -> Check:
    have = kube.server_version(deadline)
    git = str(((kube.discovery(deadline).version or {}).get("kubernetes") or {}).get("gitVersion")
              or f"v{have[0]}.{have[1]}")
    want = needs.requirements.min_kubernetes
    if want is not None and have < want:
        return Check("kubernetes", CheckStatus.FAIL, f"server {git}, the bundle needs {want[0]}.{want[1]} or newer",
                     "upgrade the cluster, or use a bundle built for this Kubernetes version")
    return Check("kubernetes", CheckStatus.PASS, f"server {git}" + (f" (needs {want[0]}.{want[1]}+)" if want else ""))


def _served(kube: Kube, api_version: str, kind: str | None, deadline: Deadline) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        if kind is None:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            kube.call(f"discover {api_version}", lambda: kube.dyn.request("get", path), deadline)
        else:
            kube.resource(api_version, kind, deadline, wait=0)
        return True
    except TransientError:
        raise
    except (ApplyError, ApiException):
        return False


def _apis(needs: Needs, kube: Kube, deadline: Deadline) -> Check:
    seen: dict[tuple[str, str | None], str] = {}
    for a in needs.apis:
        seen.setdefault((a.api_version, a.kind), a.where)
    missing, maybe, shipped, served = [], [], 0, 0
    for (av, kind), where in sorted(seen.items(), key=lambda t: (t[0][0], t[0][1] or "")):
        what = f"{av} {kind}" if kind else av
        if _served(kube, av, kind, deadline):
            served += 1
        elif needs.shipped(av, kind):
            shipped += 1
        elif needs.maybe_crds_from:
            maybe.append(f"{what} (for {where})")
        else:
            missing.append(f"{what} (for {where})")
    counts = f"{len(seen)} API(s): {served} served by the cluster, {shipped} shipped as CRDs in the bundle"
    if missing:
        return Check("apis", CheckStatus.FAIL, f"not served and not in the bundle: {'; '.join(missing)}",
                     "install the CustomResourceDefinition (or the operator/chart providing it) on the cluster, or "
                     "ship it in the bundle's manifests; then `hydra-bundle agent apply NAME` (the agent also "
                     "retries by itself)")
    if maybe:
        return Check("apis", CheckStatus.WARN, f"{counts}; not served yet, maybe from the templates of "
                     f"{', '.join(needs.maybe_crds_from)}: {'; '.join(maybe)}",
                     "if the apply fails on these, install their CRDs")
    return Check("apis", CheckStatus.PASS, counts)


def _crds(needs: Needs, kube: Kube, deadline: Deadline) -> Check:
    missing = []
    for name in needs.requirements.crds:
        if needs.shipped_crds.get(name):
            continue
        if kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name, deadline=deadline) is None:
            missing.append(name)
    if missing:
        return Check("crds", CheckStatus.FAIL, f"missing CustomResourceDefinition(s): {', '.join(missing)}",
                     "install them (requirements.crds of the bundle)")
    return Check("crds", CheckStatus.PASS, f"{len(needs.requirements.crds)} CRD(s) present or shipped")


def _storage_classes(needs: Needs, kube: Kube, deadline: Deadline) -> Check:
    if not needs.storage_classes:
        return Check("storage-classes", CheckStatus.SKIP, "the bundle names no storage class")
    have = sorted(str((o.get("metadata") or {}).get("name"))
                  for o in kube.list_objects("storage.k8s.io/v1", "StorageClass", deadline=deadline))
    missing, parts = [], []
    for name, who in needs.storage_classes.items():
        if name in have:
            parts.append(f"{name} (present)")
        elif name in needs.created_classes:
            parts.append(f"{name} (created by {needs.created_classes[name]})")
        else:
            missing.append(f"{name} (for {who})")
    if missing and needs.maybe_classes_from:
        return Check("storage-classes", CheckStatus.WARN,
                     f"not in the cluster: {'; '.join(missing)}; maybe created by the templates of "
                     f"{', '.join(needs.maybe_classes_from)}", "if the warm-up stays Pending, create the class")
    if missing:
        return Check("storage-classes", CheckStatus.FAIL,
                     f"missing: {'; '.join(missing)}; the cluster has {', '.join(have) or 'none'}",
                     "create the StorageClass (e.g. install the NFS CSI driver with its nfs-csi class), or set "
                     "site.storage_class (or the warmup's storage_class) to one the cluster has")
    return Check("storage-classes", CheckStatus.PASS, ", ".join(parts))


# ------------------------------------------------------------------------------------------------ MetalLB

def _ranges(addresses: Iterable[str]) -> list[tuple[int, int]]:
    out = []
    for a in addresses:
        if "-" in a:
            first, last = (ipaddress.ip_address(x.strip()) for x in a.split("-", 1))
            out.append((int(first), int(last)))
        else:
            net = ipaddress.ip_network(a.strip(), strict=False)
            out.append((int(net.network_address), int(net.broadcast_address)))
    return out


def _in(ranges: list[tuple[int, int]], ip: str) -> bool:
    try:
        n = int(ipaddress.ip_address(ip))
    except ValueError:
        return False
    return any(lo <= n <= hi for lo, hi in ranges)


def _metallb(needs: Needs, site: SiteConfig, kube: Kube, deadline: Deadline) -> Check:
    if site.metallb is None:
        return Check("metallb", CheckStatus.SKIP, "site.metallb is not set" + (
            " (LoadBalancer addresses come from the cluster's own load balancer)" if needs.load_balancer else ""))
    if not needs.load_balancer:
        return Check("metallb", CheckStatus.SKIP, "the bundle has no LoadBalancer Service or address pool")
    ranges = _ranges(site.metallb.addresses)
    size = sum(hi - lo + 1 for lo, hi in ranges)
    used: dict[str, str] = {}
    for svc in kube.list_objects("v1", "Service", deadline=deadline):
        md, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        if spec.get("type") != "LoadBalancer" or (md.get("labels") or {}).get(BUNDLE_LABEL) == needs.bundle:
            continue
        ips = [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
        ips.append(spec.get("loadBalancerIP"))
        for ip in ips:
            if isinstance(ip, str) and _in(ranges, ip):
                used[ip] = f"Service {md.get('namespace')}/{md.get('name')}"
    overlaps = []
    with contextlib.suppress(ApplyError):   # no MetalLB API yet (the bundle installs it): no pools to compare
        for other in kube.list_objects("metallb.io/v1beta1", "IPAddressPool", deadline=deadline):
            md = other.get("metadata") or {}
            if (md.get("labels") or {}).get(BUNDLE_LABEL) == needs.bundle:
                continue
            try:
                theirs = _ranges(str(a) for a in (other.get("spec") or {}).get("addresses") or [])
            except ValueError:
                continue
            if any(lo <= h2 and l2 <= hi for lo, hi in ranges for l2, h2 in theirs):
                overlaps.append(f"IPAddressPool {md.get('namespace')}/{md.get('name')}")
    pool = ", ".join(site.metallb.addresses)
    taken = "; ".join(f"{ip} by {who}" for ip, who in sorted(used.items()))
    if size <= len(used):
        return Check("metallb", CheckStatus.FAIL, f"every address of {pool} is in use: {taken}",
                     "give site.metallb.addresses free addresses (or free these)")
    if used or overlaps:
        return Check("metallb", CheckStatus.WARN, f"{pool}: " + "; ".join(
            ([f"{len(used)} of {size if size < _ANY_ADDRESSES else 'its'} address(es) in use: {taken}"] if used
             else []) + ([f"overlaps {', '.join(overlaps)}"] if overlaps else [])),
            "make sure no other pool hands out these addresses")
    return Check("metallb", CheckStatus.PASS, f"{pool}: {size} address(es), none in use by other Services")


# ------------------------------------------------------------------------------------------------ nodes

def _arch(node: dict[str, Any]) -> str | None:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return next((str(labels[k]) for k in ARCH_LABELS if labels.get(k)), None)


def _architectures(needs: Needs, nodes: list[dict[str, Any]]) -> Check:
    want = needs.requirements.architectures
    if not needs.images and not want:
        return Check("architectures", CheckStatus.SKIP, "the bundle has no images")
    usable = [n for n in nodes if schedulable(n)]
    if not usable:
        return Check("architectures", CheckStatus.WARN, "the cluster has no schedulable node (yet): images cannot "
                     "be matched to nodes", "join worker nodes")
    by_arch: dict[str, list[str]] = {}
    unlabelled: list[str] = []
    for n in usable:
        a = _arch(n)
        name = str((n.get("metadata") or {}).get("name"))
        (by_arch.setdefault(a, []) if a else unlabelled).append(name)
    nodes_text = ", ".join(f"{a}: {len(ns)}" for a, ns in sorted(by_arch.items()))
    fails, warns = [], []
    for a in want:
        if a not in by_arch:
            fails.append(f"no schedulable {a} node (requirements.architectures)")
    for ref, platforms in sorted(needs.images.items()):
        archs = {p.split("/")[1] for p in platforms if "/" in p}
        if not by_arch or not archs:
            continue
        if not archs & set(by_arch):
            fails.append(f"{ref} carries {', '.join(sorted(platforms))}; no node can run it")
        else:
            odd = sorted(a for a in by_arch if a not in archs)
            if odd:
                warns.append(f"{ref} has no {', '.join(odd)} image: its pods cannot run on "
                             f"{', '.join(n for a in odd for n in by_arch[a])}")
    if unlabelled:
        warns.append(f"{len(unlabelled)} node(s) without a kubernetes.io/arch label ({', '.join(unlabelled[:5])})")
    if fails:
        return Check("architectures", CheckStatus.FAIL, f"nodes {nodes_text or 'unlabelled'}: " + "; ".join(fails),
                     "build the bundle for this site's node platform (--platform linux/ARCH or the spec's "
                     "platforms), or add nodes of that architecture")
    if warns:
        return Check("architectures", CheckStatus.WARN, "; ".join(warns),
                     "pin those workloads to matching nodes (nodeSelector kubernetes.io/arch) or carry more "
                     "platforms")
    return Check("architectures", CheckStatus.PASS, f"{len(needs.images)} image(s) run on every node ({nodes_text})")


def _pod_memory(pod: dict[str, Any]) -> int:
    spec = pod.get("spec") or {}

    def req(c: dict[str, Any]) -> int:
        v = ((c.get("resources") or {}).get("requests") or {}).get("memory")
        try:
            return parse_quantity(v) if v is not None else 0
        except ValueError:
            return 0
    main = sum(req(c) for c in spec.get("containers") or [])
    return max([main, *(req(c) for c in spec.get("initContainers") or [])])


def _requested_memory(kube: Kube, deadline: Deadline) -> dict[str, int]:
    """Node name → memory requested by the pods bound to it (not finished)."""
    out: dict[str, int] = {}
    for pod in kube.list_objects("v1", "Pod", deadline=deadline):
        node = (pod.get("spec") or {}).get("nodeName")
        if node and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            out[node] = out.get(node, 0) + _pod_memory(pod)
    return out


def _memory(name: str, want: int, why: str, nodes: list[dict[str, Any]], requested: dict[str, int]) -> Check:
    rows = []
    for n in nodes:
        if not schedulable(n):
            continue
        v = ((n.get("status") or {}).get("allocatable") or {}).get("memory")
        try:
            alloc = parse_quantity(v) if v is not None else None
        except ValueError:
            alloc = None
        node = str((n.get("metadata") or {}).get("name"))
        if alloc is not None:
            rows.append((alloc, alloc - requested.get(node, 0), node))
    need = human_bytes(want)
    if not rows:
        return Check(name, CheckStatus.WARN, f"needs {need} on one node; no schedulable node reports allocatable "
                     "memory", "check the nodes (kubectl describe node): the kubelet reports allocatable memory")
    biggest = max(rows)
    freest = max(rows, key=lambda r: r[1])
    if biggest[0] < want:
        return Check(name, CheckStatus.FAIL, f"needs {need} on one node ({why}); the largest, {biggest[2]}, has "
                     f"{human_bytes(biggest[0])} allocatable", "add memory to a node or add a bigger node")
    if freest[1] < want:
        fits = [r for r in rows if r[0] >= want]
        r = max(fits, key=lambda t: t[1])
        return Check(name, CheckStatus.WARN, f"needs {need} on one node; {r[2]} has {human_bytes(r[0])} allocatable "
                     f"but pods already request {human_bytes(r[0] - r[1])} of it ({human_bytes(max(r[1], 0))} "
                     "left)", "free memory on that node, or the pod will stay Pending")
    return Check(name, CheckStatus.PASS, f"needs {need}; {freest[2]} has {human_bytes(freest[1])} not requested "
                 f"({human_bytes(biggest[0])} allocatable on the largest node)")


# ------------------------------------------------------------------------------------------------ MySQL

_MYSQL_HINTS: dict[int, Callable[[Any], str]] = {
    1045: lambda m: (f"check the password in site.mysql.password_file ({m.password_file}) and that {m.user} may "
                     f"log in from the agent host (GRANT … TO '{m.user}'@'<agent host>')"),
    1044: lambda m: f"grant {m.user} access to the database (GRANT ALL ON <db>.* TO '{m.user}'@'<agent host>')",
    1049: lambda m: "create the database (Hydra does when it is installed) or fix the database in site.mysql.dsn",
}


def _mysql(needs: Needs, site: SiteConfig) -> Check:
    if not needs.sql:
        return Check("mysql", CheckStatus.SKIP, "the bundle has no sql step")
    m = site.mysql
    if m is None:
        return Check("mysql", CheckStatus.FAIL, "the bundle has an sql step but site.mysql is not set",
                     "add site.mysql (dsn: mysql://USER@HOST:PORT/DB, password_file) to the agent config")
    import pymysql

    from .mysql import connect

    try:
        conn = connect(m, None)
    except ApplyError as e:   # the password file
        return Check("mysql", CheckStatus.FAIL, str(e), "make site.mysql.password_file readable by the agent")
    except pymysql.err.MySQLError as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
        msg = brief(Exception(e.args[1])) if len(e.args) >= 2 else brief(e)
        hint = _MYSQL_HINTS.get(code, lambda m: f"is MySQL running at {m.host}:{m.port} and reachable from the "
                                                f"agent host (firewall, bind-address)?")(m)
        return Check("mysql", CheckStatus.FAIL, f"{m.safe_dsn}: cannot connect (MySQL error {code}: {msg})", hint)
    problems, warns = [], []
    try:
        with conn.cursor() as cur:
            for database, tables in needs.sql:
                db = database or m.database
                if not db:
                    problems.append("no database: set `database` in the sql step or in site.mysql.dsn")
                    continue
                cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME=%s", (db,))
                if not cur.fetchall():
                    problems.append(f"database {db} does not exist or {m.user} has no access to it")
                    continue
                cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s", (db,))
                have = {str(r[0]) for r in cur.fetchall()}
                gone = [t.table for t in tables if t.table not in have]
                if gone:
                    warns.append(f"{db}: table(s) {', '.join(gone)} not there yet")
    except pymysql.err.MySQLError as e:
        problems.append(f"cannot read information_schema: {brief(e)}")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    if problems:
        return Check("mysql", CheckStatus.FAIL, f"{m.safe_dsn}: " + "; ".join(problems), _MYSQL_HINTS[1044](m))
    if warns:
        return Check("mysql", CheckStatus.WARN, f"{m.safe_dsn}: connected; " + "; ".join(warns),
                     "Hydra creates its tables when it is installed; the sql step fails until they exist")
    return Check("mysql", CheckStatus.PASS, f"{m.safe_dsn}: connected as {m.user}, database(s) and tables present")


# ------------------------------------------------------------------------------------------------ disks

def _free(path: Path) -> tuple[Path, int]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def _store(needs: Needs, s: StoreInfo) -> Check:
    where, free = _free(s.path)
    need = s.missing + s.min_free
    req = needs.requirements.store_free
    detail = f"{human_bytes(free)} free on {where}"
    if s.missing:
        detail += f"; {human_bytes(s.missing)} of the bundle not in the store yet"
    if free < need:
        return Check("store-space", CheckStatus.FAIL, f"{detail}; needs {human_bytes(need)} (with "
                     f"limits.min_free_bytes {human_bytes(s.min_free)})",
                     "free space on the store's filesystem (remove old bundles' content) or grow it")
    if req is not None and free - s.missing < req:
        return Check("store-space", CheckStatus.FAIL, f"{detail}; the bundle asks for {human_bytes(req)} "
                     "(requirements.store_free)", "free space on the store's filesystem or grow it")
    if free - s.missing < s.bundle_bytes + s.min_free:
        return Check("store-space", CheckStatus.WARN, f"{detail}; a next version of this size "
                     f"({human_bytes(s.bundle_bytes)}) would not fit", "plan space for the next bundle")
    return Check("store-space", CheckStatus.PASS, detail)


def _nfs(needs: Needs, site: SiteConfig | None, no_site: str) -> Check:
    if not needs.models:
        return Check("nfs-space", CheckStatus.SKIP, "the bundle warms up no model")
    total = sum(needs.models.values())
    what = f"models {', '.join(sorted(needs.models))} take {human_bytes(total)}"
    if site is None:
        return Check("nfs-space", CheckStatus.SKIP, f"{what}; cannot check: {no_site}")
    if site.nfs_mount is None:
        return Check("nfs-space", CheckStatus.SKIP, f"{what}; free space on NFS unknown: set site.nfs_mount to a "
                     "local mount of the export to check it")
    try:
        where, free = _free(site.nfs_mount)
    except OSError as e:
        return Check("nfs-space", CheckStatus.FAIL, f"{what}; cannot read {site.nfs_mount}: {e.strerror}",
                     "mount the NFS export at site.nfs_mount")
    if free < total:
        return Check("nfs-space", CheckStatus.FAIL, f"{what}; {human_bytes(free)} free on {where}",
                     "free space on the NFS export or grow it")
    return Check("nfs-space", CheckStatus.PASS, f"{what}; {human_bytes(free)} free on {where}")
