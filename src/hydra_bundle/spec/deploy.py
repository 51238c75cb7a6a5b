"""Schema of the spec's ``deploy`` section: what the agent applies on site, in order (signed with the bundle).

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
      - chart: istiod
        optional: true                  # only where the site enables it: site.enable: [istio] (or [chart-istiod])
        feature: istio
      - chart: metrics
        when: "site.vars.tier == 'prod' and not gpu"   # an expression (spec/when.py): no code runs
      - wait_for: [{kind: Service, namespace: istio-system, name: gateway-istio}]

Where things are on a site is the agent config's business (``apply/site.py``); manifests and values may use its
``${site.domain}``-style variables (``k8s/manifests.py``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UsageError
from ..oci.reference import Reference
from .when import Condition, parse_when

_DNS1123 = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_SQL_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_VALUES_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

ACTIONS = ("manifests", "label_nodes", "chart", "sql", "warmup", "wait_for", "tls")


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


def dns_name(v: str, what: str = "name") -> str:
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
        if not _LABEL_VALUE.match(val) or len(val) > 63:
            raise ValueError(f"label {k}: {val!r} is not a valid label value (63 chars of A-Z a-z 0-9 - _ .)")
    return v


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
        return [dns_name(s, "secret name") for s in v]

    @field_validator("release", "namespace")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return None if v is None else dns_name(v)


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
        return None if v is None else dns_name(v)


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
    when: str = Field("always", description="always | gpu | no-gpu | an expression over site.* and gpu "
                                            "(spec/when.py), e.g. \"'istio' in site.enable\"")
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
    # None (not False) by default so a spec that does not use them dumps as before and older agents still load it
    optional: bool | None = Field(None, description="run only on sites that enable the step by its name or its "
                                                    "`feature` (site.enable)")
    feature: str | None = Field(None, description="the name site.enable uses for this optional step (several steps "
                                                  "may share one, e.g. istio for istio-base and istiod)")

    @field_validator("when", mode="before")
    @classmethod
    def _when_bool(cls, v: Any) -> Any:
        return ("true" if v else "false") if isinstance(v, bool) else v   # YAML `when: false`

    @field_validator("when")
    @classmethod
    def _when(cls, v: str) -> str:
        return parse_when(v).text

    @field_validator("feature")
    @classmethod
    def _feature(cls, v: str | None) -> str | None:
        return None if v is None else dns_name(v, "feature name")

    @property
    def condition(self) -> Condition:
        return parse_when(self.when)

    def enabled_by(self, enable: list[str]) -> str | None:
        """The ``site.enable`` name that turns this optional step on (its step name, then its feature), or None."""
        for n in (self.step_name, self.feature):
            if n is not None and n in enable:
                return n
        return None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else dns_name(v, "step name")

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
        if self.feature is not None and not self.optional:
            raise ValueError("feature: only optional steps have one (add optional: true)")
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

    def cross_checks(self, manifests: set[str], charts: set[str],
                     models: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        """References to the spec's manifests/charts/models (by name) exist; step names are unique; one sql
        step."""
        out: list[tuple[tuple[str | int, ...], str]] = []
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
            if st.chart is not None and st.chart.name not in charts:
                out.append(((*loc, "chart", "name"), f"no chart named {st.chart.name!r} in `charts:`"))
            if st.warmup is not None and st.warmup.model not in models:
                out.append(((*loc, "warmup", "model"), f"no model named {st.warmup.model!r} in `models:`"))
            if st.sql is not None:
                if sql_at is not None:
                    out.append(((*loc, "sql"), f"only one sql step per bundle (rows are written in one "
                                               f"transaction); merge its tables into steps[{sql_at}]"))
                sql_at = i if sql_at is None else sql_at
        return out
