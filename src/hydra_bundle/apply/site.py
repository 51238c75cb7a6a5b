"""Schema of the agent config's ``site:`` section: where things are on this site, as its nodes and pods see them
(the deploy steps need it). The spec's ``deploy:`` section says what to apply (``spec/deploy.py``)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import ApplyError, UsageError
from ..k8s.manifests import site_variables
from ..spec.deploy import dns_name, parse_duration
from .mirrors import parse_endpoints


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

def _registry_host(v: str) -> str:
    v = v.strip().rstrip("/")
    if "://" in v:
        raise ValueError("give HOST[:PORT][/PREFIX] without a scheme (set registry_scheme: http|https)")
    host = v.split("/", 1)[0]
    if not host or " " in v or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host):
        raise ValueError("must be HOST[:PORT][/PREFIX], as nodes reach it (e.g. 10.0.0.5:5000)")
    return v


class RegistryAuth(_Strict):
    """Credentials nodes pull from site.registry with (the agent's htpasswd, or the push registry's read user)."""

    username: str
    password_file: Path = Field(description="file holding the password (never in the config, never logged)")

    def dockerconfigjson(self, registry_host: str) -> bytes:
        """A ``kubernetes.io/dockerconfigjson`` body for ``registry_host``."""
        import base64
        import json

        pw = self.password_file.read_text().rstrip("\n")
        auth = base64.b64encode(f"{self.username}:{pw}".encode()).decode()
        return json.dumps({"auths": {registry_host: {"auth": auth}}}).encode()


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
    registry_mirrors: list[str] = Field(
        [], description="every registry serving the same bundles (each agent of the site), [http(s)://]HOST[:PORT]"
                        "[/PREFIX], in the order nodes try them; `agent mirror-config` lists them (its --endpoint "
                        "overrides); default: registry alone")
    registry_auth: RegistryAuth | None = Field(None, description="pull credentials: workloads the manifests steps "
                                               "rewrite get a pull Secret (hydra-bundle-registry) in their namespace")
    file_server: str = Field(description="agent file server base URL as pods reach it, e.g. http://10.0.0.5:81")
    metallb: MetalLBSite | None = None
    kubeconfig: Path | None = Field(None, description="default: $KUBECONFIG or ~/.kube/config")
    kube_context: str | None = None
    in_cluster: bool = Field(False, description="use the pod's service account instead of a kubeconfig")
    mysql: MySQLSite | None = None
    storage_class: str = Field("nfs-csi", description="NFS storage class for model Datasets")
    nfs_mount: Path | None = Field(None, description="a local mount of the NFS export the models land on: "
                                                     "preflight checks its free space against the models' size")
    tls: TLSSite | None = Field(None, description="gateway certificate files; default: issued by the site CA")
    helm: Path | None = Field(None, description="ignored: charts install in-process; kept so older configs still "
                                                "load after a self-upgrade")
    timeout: float = Field(600.0, description="default step timeout (duration: 90s, 10m)")
    simulated_gpu_nodes: list[str] = Field(
        [], description="nodes labelled for fake-gpu-operator when no GPU exists; default: every schedulable node")
    vars: dict[str, str | int | bool | list[str]] = Field({}, description="extra ${site.vars.NAME} variables")
    enable: list[str] = Field([], description="optional deploy steps this site runs, by step name or by their "
                                              "`feature` (e.g. istio: the Hydra spec's istio-base and istiod)")
    values: dict[str, list[Path]] = Field(
        {}, description="per-site values files by deploy step name or Helm release name, deep-merged in order "
                        "over the chart's values from the bundle (apply/sitevalues.py)")

    @field_validator("enable")
    @classmethod
    def _enable(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(dns_name(n, "enable: name") for n in v))

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, v: Any) -> Any:
        if isinstance(v, dict):   # one file or a list of them
            return {k: [f] if isinstance(f, str | Path) else f for k, f in v.items()}
        return v

    @field_validator("values")
    @classmethod
    def _values_keys(cls, v: dict[str, list[Path]]) -> dict[str, list[Path]]:
        for k, files in v.items():
            dns_name(k, "values: key (a step or release name)")
            if not files:
                raise ValueError(f"values.{k}: list at least one file")
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        return _registry_host(v)

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: list[str], info: ValidationInfo) -> list[str]:
        try:
            parse_endpoints(v, info.data.get("registry_scheme", "http"), "registry_mirrors:")
        except UsageError as e:
            raise ValueError(str(e)) from None
        return v

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
        return dns_name(v)

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

    def facts(self) -> dict[str, Any]:
        """What a deploy step's ``when:`` expression may name as ``site.*`` (``spec/when.py`` SITE_NAMES)."""
        return {"cluster_name": self.cluster_name, "domain": self.domain, "registry": self.registry,
                "registry_scheme": self.registry_scheme, "file_server": self.file_server,
                "storage_class": self.storage_class, "in_cluster": self.in_cluster, "mysql": self.mysql is not None,
                "metallb": self.metallb is not None, "tls": self.tls is not None, "enable": list(self.enable),
                "vars": dict(self.vars)}

    def variables(self, bundle_name: str = "", bundle_version: str = "") -> dict[str, Any]:
        """Every ``${…}`` variable manifests and values may use."""
        return site_variables(cluster_name=self.cluster_name, domain=self.domain, registry=self.registry,
                              file_server=self.file_server, storage_class=self.storage_class,
                              metallb_addresses=list(self.metallb.addresses) if self.metallb else None,
                              extra=self.vars, bundle_name=bundle_name, bundle_version=bundle_version)
