"""Schemas: the spec's ``deploy`` section (what to apply, in order) and the agent config's ``site`` values.

``deploy`` is declarative, no scripts. Each step has exactly one action key::

    deploy:
      prune: true                       # delete objects of earlier versions that this version no longer has
      timeout: 10m                      # default for every step (else site.timeout)
      steps:
      - manifests: [gateway-api-crds]   # names from the spec's `manifests:`; CRDs → Established → namespaces → rest
      - name: simulate-gpu
        when: no-gpu                    # no node advertises nvidia.com/gpu (simulated nodes do not count)
        label_nodes: {labels: {run.ai/simulated-gpu-node-pool: default}}
      - when: no-gpu
        chart: {name: fake-gpu-operator, namespace: gpu-operator, pull_secrets: [gcr-secret],
                image_values: {devicePlugin.image.repository: ghcr.io/run-ai/fake-gpu-operator/device-plugin}}
      - sql: {database: hydra, tables: [{table: vendor, key: [name],
                                         rows: [{name: alibaba, display_name: {enUS: Alibaba, zhCN: 通义千问}}]}]}
      - warmup: qwen3-0.6b              # Dataset CR from the model's file-server URL; waits for READY
        notes: ["CPU inference: deployment parameters --dtype=half --max-model-len=8192"]  # shown by plan/status
      - tls: {secret: "${site.domain}", hosts: ["${site.domain}"]}   # kubernetes.io/tls Secret (site files or CA)
      - wait_for: [{kind: Service, namespace: istio-system, name: gateway-istio}]

``site`` (in the agent config) says where things are on this site; manifests and values may use
``${site.domain}``-style variables (see ``subst.py``).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DNS1123 = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_SQL_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_VALUES_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

ACTIONS = ("manifests", "label_nodes", "chart", "sql", "warmup", "wait_for", "tls")
SIMULATED_GPU_LABEL = "run.ai/simulated-gpu-node-pool"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def parse_duration(v: Any) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m`` → seconds."""
    if isinstance(v, bool):
        raise ValueError("must be a duration like 90s, 5m, 1h30m")
    if isinstance(v, int | float):
        if v <= 0:
            raise ValueError("must be positive")
        return float(v)
    m = _DURATION.match(str(v).strip())
    if not m or not any(m.groups()):
        raise ValueError("must be a duration like 90s, 5m, 1h30m")
    h, mi, s = (int(x or 0) for x in m.groups())
    total = h * 3600 + mi * 60 + s
    if total <= 0:
        raise ValueError("must be positive")
    return float(total)


def _dns(v: str, what: str = "name") -> str:
    if not _DNS1123.match(v) or len(v) > 253:
        raise ValueError(f"{what} must be a lowercase DNS name (a-z, 0-9, '-', '.')")
    return v


def _sql_ident(v: str) -> str:
    if not _SQL_IDENT.match(v):
        raise ValueError(f"{v!r} is not a plain SQL identifier (letters, digits, _ and $; not starting with a digit)")
    return v


def _labels(v: dict[str, str]) -> dict[str, str]:
    for k, val in v.items():
        if not _LABEL_NAME.match(k):
            raise ValueError(f"{k!r} is not a valid label key")
        if not isinstance(val, str) or not _LABEL_VALUE.match(val) or len(val) > 63:
            raise ValueError(f"label {k}: {val!r} is not a valid label value (63 chars of A-Z a-z 0-9 - _ .)")
    return v


# ================================================================ deploy (in the signed spec)

class LabelNodes(_Strict):
    labels: dict[str, str] = Field(min_length=1)
    nodes: list[str] | None = Field(
        None, description="node names; default: site.simulated_gpu_nodes, else every schedulable node")

    _l = field_validator("labels")(classmethod(lambda cls, v: _labels(v)))


class ChartInstall(_Strict):
    """Install a chart of the spec with ``helm upgrade --install`` from the site registry."""

    name: str = Field(description="a chart name from the spec's `charts:`")
    release: str | None = Field(None, description="default: the chart's `release`, else its name")
    namespace: str | None = Field(None, description="default: the chart's `namespace`, else `default`")
    values: dict[str, Any] = Field({}, description="deep-merged over the chart's `values` from the spec")
    image_values: dict[str, str] = Field(
        {}, description="values path → image reference; set to that image in the site registry (same form: "
                        "with a tag only if one is given)")
    registry_values: list[str] = Field([], description="values paths set to the site registry host[/prefix]")
    pull_secrets: list[str] = Field(
        [], description="docker-registry Secrets for the site registry created in the release namespace "
                        "(charts that hard-code imagePullSecrets, e.g. fake-gpu-operator's gcr-secret)")
    create_namespace: bool = True

    @field_validator("image_values")
    @classmethod
    def _image_values(cls, v: dict[str, str]) -> dict[str, str]:
        from ..errors import UsageError
        from ..oci.reference import Reference

        for path, ref in v.items():
            if not _VALUES_PATH.match(path):
                raise ValueError(f"{path!r} is not a dotted values path (a.b.c)")
            try:
                Reference.parse(ref)
            except UsageError as e:
                raise ValueError(f"{path}: {e}") from None
        return v

    @field_validator("registry_values")
    @classmethod
    def _registry_values(cls, v: list[str]) -> list[str]:
        for path in v:
            if not _VALUES_PATH.match(path):
                raise ValueError(f"{path!r} is not a dotted values path (a.b.c)")
        return v

    @field_validator("pull_secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        return [_dns(s, "secret name") for s in v]

    @field_validator("release", "namespace")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else _dns(v)


class SeedTable(_Strict):
    table: str
    key: list[str] = Field(min_length=1, description="columns that identify a row (select-then-insert/update)")
    rows: list[dict[str, Any]] = Field(min_length=1)

    _t = field_validator("table")(classmethod(lambda cls, v: _sql_ident(v)))

    @field_validator("key")
    @classmethod
    def _key(cls, v: list[str]) -> list[str]:
        return [_sql_ident(c) for c in v]

    @model_validator(mode="after")
    def _rows(self) -> SeedTable:
        seen: dict[tuple[str, ...], int] = {}
        for i, row in enumerate(self.rows):
            for col, val in row.items():
                _sql_ident(col)
                if val is not None and not isinstance(val, str | int | float | bool | dict | list):
                    raise ValueError(f"rows[{i}].{col}: unsupported value type {type(val).__name__}")
            missing = [k for k in self.key if k not in row]
            if missing:
                raise ValueError(f"rows[{i}] lacks key column(s) {', '.join(missing)}")
            if any(isinstance(row[k], dict | list) for k in self.key):
                raise ValueError(f"rows[{i}]: key columns must hold plain values, not JSON objects or lists")
            k = tuple(repr(row[c]) for c in self.key)
            if k in seen:
                raise ValueError(f"rows[{i}] has the same key as rows[{seen[k]}]")
            seen[k] = i
        return self


class SqlSeed(_Strict):
    """Rows written in ONE transaction (one `sql` step per bundle), utf8mb4; dict/list values are stored as JSON."""

    database: str | None = Field(None, description="default: the database of site.mysql.dsn")
    tables: list[SeedTable] = Field(min_length=1)

    _d = field_validator("database")(classmethod(lambda cls, v: None if v is None else _sql_ident(v)))


class MountOptions(_Strict):
    uid: int = 1000
    gid: int = 1000
    mode: str = Field("0774", pattern=r"^[0-7]{3,4}$")
    path: str = "/"


class Warmup(_Strict):
    """A BaizeAI Dataset (dataset.baizeai.io/v1alpha1) that pre-loads a model from the agent's file server."""

    model: str = Field(description="a model name from the spec's `models:`")
    dataset: str | None = Field(None, description="Dataset name; default: the model name")
    namespace: str = "public"
    model_id: str | None = Field(None, description="label hydra.io/model-id; default: the model name")
    storage_class: str | None = Field(None, description="default: site.storage_class")
    uri: str | None = Field(None, description="default: <site.file_server>/model/<model>/")
    data_sync_round: int = Field(1, ge=1)
    share: bool = True
    mount: MountOptions = MountOptions()

    @field_validator("dataset", "namespace", "storage_class")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else _dns(v)


class WaitTarget(_Strict):
    kind: str
    name: str
    namespace: str | None = None
    api_version: str | None = Field(None, description="default: the usual one for built-in kinds")


def _has_var(v: str) -> bool:
    return "${" in v


def tls_host(v: str) -> str:
    """A certificate host: a DNS name (``*.`` wildcard allowed) or an IP address."""
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    v = v.lower().rstrip(".")
    if len(v) > 253 or not _HOST.match(v):
        raise ValueError(f"{v!r} is not a DNS name or an IP address")
    return v


class TlsSecret(_Strict):
    """A ``kubernetes.io/tls`` Secret for the gateway: the certificate comes from ``site.tls`` files when the site
    configures them, else from a site CA the agent creates once (``hydra-bundle agent ca`` exports it)."""

    secret: str = Field(description="Secret name (``${site.domain}`` allowed)")
    namespace: str = "default"
    hosts: list[str] = Field(min_length=1, description="DNS names / IPs of the certificate (``${site.domain}``)")

    @field_validator("secret", "namespace")
    @classmethod
    def _names(cls, v: str) -> str:
        if not _has_var(v) and (not _DNS1123.match(v) or len(v) > 253):
            raise ValueError(f"{v!r} is not a lowercase DNS name (a-z, 0-9, '-', '.')")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [h if _has_var(h) else tls_host(h) for h in v]

    def checked(self) -> TlsSecret:
        """After substitution: no variable may be left (``$${`` escapes make no sense here); hosts deduplicated."""
        for what in (self.secret, self.namespace, *self.hosts):
            if _has_var(what):
                raise ValueError(f"{what!r} is not a name")
        return TlsSecret(secret=self.secret, namespace=self.namespace, hosts=list(dict.fromkeys(self.hosts)))


class DeployStep(_Strict):
    name: str | None = Field(None, description="unique; default derived from the action (manifests-<first>, …)")
    when: Literal["always", "no-gpu", "gpu"] = "always"
    timeout: float | None = Field(None, description="duration (90s, 10m); default deploy.timeout or site.timeout")
    wait: bool = Field(True, description="wait for rollouts / Established / helm --wait / Dataset READY")
    # exactly one action:
    manifests: list[str] | None = None
    label_nodes: LabelNodes | None = None
    chart: ChartInstall | None = None
    sql: SqlSeed | None = None
    warmup: Warmup | None = None
    wait_for: list[WaitTarget] | None = None
    tls: TlsSecret | None = None
    notes: list[str] = Field([], description="operator notes (``${site.*}`` allowed) shown by `agent plan` and, "
                                             "once the step is done or pending, by `agent status`")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _dns(v, "step name")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("manifests", mode="before")
    @classmethod
    def _one_manifest(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("chart", mode="before")
    @classmethod
    def _chart_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup_name(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_action(self) -> DeployStep:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            what = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"a step needs exactly one of {', '.join(ACTIONS)} ({what})")
        if self.manifests is not None and not self.manifests:
            raise ValueError("manifests: list at least one manifest name")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def step_name(self) -> str:
        if self.name:
            return self.name
        a = self.action
        if a == "manifests":
            assert self.manifests
            return f"manifests-{self.manifests[0]}"
        if a == "chart":
            assert self.chart
            return f"chart-{self.chart.name}"
        if a == "warmup":
            assert self.warmup
            return f"warmup-{self.warmup.model}"
        if a == "tls":
            assert self.tls
            return "tls" if _has_var(self.tls.secret) else f"tls-{self.tls.secret}"
        return a.replace("_", "-")


class DeploySpec(_Strict):
    prune: bool = Field(True, description="delete objects of this bundle that a newer version no longer contains")
    timeout: float | None = Field(None, description="default step timeout (duration)")
    steps: list[DeployStep] = []

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    def cross_checks(self, spec: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """References to the spec's manifests/charts/models exist; step names are unique; one sql step."""
        out: list[tuple[tuple[str | int, ...], str]] = []
        manifests = {m.name for m in spec.manifests}
        charts = {c.name: c for c in spec.charts}
        models = {m.name for m in spec.models}
        names: dict[str, int] = {}
        sql_at: int | None = None
        for i, st in enumerate(self.steps):
            loc: tuple[str | int, ...] = ("deploy", "steps", i)
            n = st.step_name
            if n == "prune":
                out.append(((*loc, "name"), "'prune' is reserved for the automatic last step"))
            if n in names:
                out.append(((*loc, "name") if st.name else loc,
                            f"step name {n!r} already used by steps[{names[n]}]; give this step a `name`"))
            names.setdefault(n, i)
            for j, m in enumerate(st.manifests or []):
                if m not in manifests:
                    out.append(((*loc, "manifests", j), f"no manifest named {m!r} in `manifests:`"))
            if st.chart is not None:
                c = charts.get(st.chart.name)
                if c is None:
                    out.append(((*loc, "chart", "name"), f"no chart named {st.chart.name!r} in `charts:`"))
            if st.warmup is not None and st.warmup.model not in models:
                out.append(((*loc, "warmup", "model"), f"no model named {st.warmup.model!r} in `models:`"))
            if st.sql is not None:
                if sql_at is not None:
                    out.append(((*loc, "sql"), f"only one sql step per bundle (rows are written in one "
                                               f"transaction); merge its tables into steps[{sql_at}]"))
                sql_at = i if sql_at is None else sql_at
        return out


# ================================================================ site (in the agent config)

def _registry_host(v: str) -> str:
    v = v.strip().rstrip("/")
    if "://" in v:
        raise ValueError("give HOST[:PORT][/PREFIX] without a scheme (set registry_scheme: http|https)")
    host = v.split("/", 1)[0]
    if not host or " " in v or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host):
        raise ValueError("must be HOST[:PORT][/PREFIX], as nodes reach it (e.g. 10.0.0.5:5000)")
    return v


class MySQLSite(_Strict):
    dsn: str = Field(description="mysql://USER@HOST[:PORT]/DATABASE (no password here: use password_file)")
    password_file: Path | None = Field(None, description="file holding the password (read when connecting)")
    connect_timeout: float = Field(10.0, gt=0)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mysql", "mariadb") or not u.hostname:
            raise ValueError("must be mysql://USER@HOST[:PORT]/DATABASE")
        if u.password is not None:
            raise ValueError("put the password in password_file, not in the DSN (it would end up in logs)")
        if not u.username:
            raise ValueError("name the user: mysql://USER@HOST[:PORT]/DATABASE")
        try:
            u.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("bad port") from None
        return v

    @property
    def host(self) -> str:
        return urlparse(self.dsn).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.dsn).port or 3306

    @property
    def user(self) -> str:
        return unquote(urlparse(self.dsn).username or "")

    @property
    def database(self) -> str | None:
        db = urlparse(self.dsn).path.lstrip("/")
        return unquote(db) or None

    @property
    def safe_dsn(self) -> str:
        """The DSN for logs (never has a password: the validator refuses one)."""
        return self.dsn

    def password(self) -> str:
        if self.password_file is None:
            return ""
        try:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            from .base import ApplyError

            raise ApplyError(f"mysql: cannot read password_file {self.password_file}: {e.strerror}") from None


class TLSSite(_Strict):
    """The gateway certificate from files (PEM); without this the agent's site CA issues one."""

    cert_file: Path = Field(description="PEM certificate (chain) for the gateway domain")
    key_file: Path = Field(description="PEM private key of that certificate (read by the tls step, never logged)")

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v


class MetalLBSite(_Strict):
    addresses: list[str] = Field(min_length=1, description="CIDRs or FIRST-LAST ranges for the IPAddressPool")

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            try:
                if "-" in a:
                    first, last = (ipaddress.ip_address(x.strip()) for x in a.split("-", 1))
                    if first.version != last.version or int(first) > int(last):
                        raise ValueError
                else:
                    ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ValueError(f"{a!r} is not a CIDR (10.0.0.0/28) or a range (10.0.0.10-10.0.0.20)") from None
        return v


class SiteConfig(_Strict):
    """Where things are on this site, as the cluster's nodes and pods see them."""

    cluster_name: str = Field(description="the worker cluster's name (Hydra agent's cluster_name)")
    domain: str = Field(description="gateway domain, e.g. cn-sh-a1")
    registry: str = Field(description="site registry HOST[:PORT][/PREFIX] as nodes reach it")
    registry_scheme: Literal["http", "https"] = "http"
    registry_skip_verify: bool = Field(False, description="https with a certificate nodes do not trust")
    file_server: str = Field(description="agent file server base URL as pods reach it, e.g. http://10.0.0.5:81")
    metallb: MetalLBSite | None = None
    kubeconfig: Path | None = Field(None, description="default: $KUBECONFIG or ~/.kube/config")
    kube_context: str | None = None
    in_cluster: bool = Field(False, description="use the pod's service account instead of a kubeconfig")
    mysql: MySQLSite | None = None
    storage_class: str = Field("nfs-csi", description="NFS storage class for model Datasets")
    tls: TLSSite | None = Field(None, description="gateway certificate files; default: issued by the site CA")
    helm: Path | None = Field(None, description="helm binary; default: `helm` on PATH; none → chart steps pending")
    timeout: float = Field(600.0, description="default step timeout (duration: 90s, 10m)")
    simulated_gpu_nodes: list[str] = Field(
        [], description="nodes labelled for fake-gpu-operator when no GPU exists; default: every schedulable node")
    vars: dict[str, str | int | bool | list[str]] = Field({}, description="extra ${site.vars.NAME} variables")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        return _registry_host(v)

    @field_validator("file_server")
    @classmethod
    def _fs(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("domain", "storage_class")
    @classmethod
    def _dnsname(cls, v: str) -> str:
        return _dns(v)

    @field_validator("vars")
    @classmethod
    def _vars(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"{k!r}: variable names are letters, digits and _")
        return v

    @model_validator(mode="after")
    def _kube(self) -> SiteConfig:
        if self.in_cluster and self.kubeconfig is not None:
            raise ValueError("give kubeconfig or in_cluster: true, not both")
        return self

    @property
    def registry_host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def registry_prefix(self) -> str:
        return self.registry.partition("/")[2]

    @property
    def plain_http(self) -> bool:
        return self.registry_scheme == "http"

    def model_url(self, model: str) -> str:
        return f"{self.file_server}/model/{model}/"

    def variables(self, bundle_name: str = "", bundle_version: str = "") -> dict[str, Any]:
        """Every ``${…}`` variable manifests and values may use."""
        out: dict[str, Any] = {
            "site.cluster_name": self.cluster_name,
            "site.domain": self.domain,
            "site.registry": self.registry,
            "site.file_server": self.file_server,
            "site.storage_class": self.storage_class,
        }
        if self.metallb is not None:
            out["site.metallb.addresses"] = list(self.metallb.addresses)
        for k, v in self.vars.items():
            out[f"site.vars.{k}"] = v
        if bundle_name:
            out["bundle.name"] = bundle_name
        if bundle_version:
            out["bundle.version"] = bundle_version
        return out
