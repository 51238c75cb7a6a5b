"""``agent.yaml``: the agent's configuration. Unknown keys and bad values are errors naming file:line (exit 2).

```yaml
drop_dir: /var/lib/hydra-bundle/drop
state_dir: /var/lib/hydra-bundle/state
trusted_keys: [/etc/hydra-bundle/keys/release.pub]
registry: {listen: "0.0.0.0:5000"}      # embedded read-only OCI registry
files: {listen: "0.0.0.0:81"}           # embedded HTTP file server
metrics: {listen: "127.0.0.1:9480"}     # /metrics and /healthz
site: {cluster_name: …, domain: cn-sh-a1, registry: …, file_server: …}   # apply (see apply/deploy_spec.py)
```
See ``systemd/agent.example.yaml`` for every key.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..apply.site import SiteConfig
from ..bundle.sign import load_public_key
from ..errors import SpecError, UsageError
from ..spec.yamlmodel import load_yaml_model
from .configpath import CONFIG_ENV, DEFAULT_CONFIG


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def parse_listen(v: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` → (host, port)."""
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:5000 or [::]:5000")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError("port must be 0..65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address (bind an address, not a name)") from None
    return host, p


class Listen(_Strict):
    listen: str = Field(description="HOST:PORT to bind, exactly")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


class RegistryListen(Listen):
    """The embedded registry's listener: HTTPS unless told otherwise (agent/servetls.py)."""

    tls: bool = Field(True, description="HTTPS with a certificate from the site CA (or cert_file/key_file); false: "
                      "plain HTTP, which every node must then be configured to treat as insecure")
    cert_file: Path | None = Field(None, description="the site's own certificate (PEM, chain after the leaf)")
    key_file: Path | None = Field(None, description="its private key (PEM)")
    hosts: list[str] = Field([], description="names and addresses nodes use for the registry (certificate SANs); "
                             "default: site.registry's host, the listen address, this host's name, localhost, "
                             "127.0.0.1")
    htpasswd: Path | None = Field(None, description="read-only basic auth: bcrypt entries (htpasswd -B); pulls "
                                  "then need site.registry_auth (the apply steps' pull Secret) or the mirror header")

    @model_validator(mode="after")
    def _files(self) -> RegistryListen:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file, or neither (a leaf from the site CA)")
        if not self.tls and self.cert_file is not None:
            raise ValueError("cert_file/key_file need tls: true")
        return self


class Push(_Strict):
    """Push every image and chart to the site's existing registry (Harbor, distribution)."""

    registry: str = Field(description="HOST[:PORT][/PREFIX]: repositories are pushed under PREFIX")
    insecure: bool = Field(False, description="plain HTTP instead of HTTPS")
    credentials_file: Path | None = Field(None, description="docker/podman auth.json ({'auths': {HOST: ...}})")
    ca_file: Path | None = Field(None, description="CA bundle to verify the registry's TLS certificate")
    tls_verify: bool = True
    chunk_size: int = Field(64 << 20, ge=1 << 20, description="bytes per PATCH of a chunked upload")

    @field_validator("registry")
    @classmethod
    def _registry(cls, v: str) -> str:
        v = v.removeprefix("https://").removeprefix("http://").rstrip("/")
        host = v.split("/", 1)[0]
        if not host or " " in v:
            raise ValueError("must be HOST[:PORT][/PREFIX]")
        return v

    @field_validator("credentials_file", "ca_file")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} does not exist or is not a file")
        return v

    @property
    def host(self) -> str:
        return self.registry.split("/", 1)[0]

    @property
    def prefix(self) -> str:
        return self.registry.partition("/")[2]


class Limits(_Strict):
    max_bundle_bytes: int | None = Field(None, ge=1, description="refuse bundles whose content is larger")
    min_free_bytes: int = Field(1 << 30, ge=0, description="free space kept on the store's filesystem")
    ingest_bytes_per_second: int | None = Field(None, ge=1, description="throttle ingest reads (shared disks)")
    max_connections: int = Field(4096, ge=1, description="open connections per server; more are closed at once "
                                 "(also capped by the open-files limit)")
    header_timeout: float = Field(10.0, gt=0, description="seconds a client has to send a request's headers, and "
                                  "to keep an idle connection open; also each read and write of a body")


class Retention(_Strict):
    """How many versions of each bundle name the store keeps (``agent gc``; the daemon collects after every
    bundle that completes)."""

    keep: int = Field(ge=1, description="published versions of each bundle name kept (the one applied last is "
                      "always kept, too); older ones are unpublished and their blobs deleted")
    after_run: bool = Field(True, description="run gc after every bundle that completes (false: only `agent gc`)")


def _replaceable_by_anyone(key: Path) -> str | None:
    """Why a pinned key file can be swapped by any local user (world-writable file, or a world-writable directory
    on its path without the sticky bit), or None."""
    p = key.resolve()
    if p.stat().st_mode & stat.S_IWOTH:
        return "the key file is world-writable"
    for d in p.parents:
        mode = d.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return f"its directory {d} is world-writable"
    return None


class AgentConfig(_Strict):
    drop_dir: Path
    state_dir: Path
    trusted_keys: list[Path] = Field(min_length=1)
    registry: RegistryListen | None = Field(None, description="embedded read-only OCI registry, HTTPS by default "
                                            "(omit to disable)")
    files: Listen | None = Field(None, description="embedded HTTP file server (omit to disable)")
    metrics: Listen | None = Field(None, description="/metrics and /healthz (omit to disable)")
    push: Push | None = None
    site: SiteConfig | None = Field(None, description="where things are on this site: the apply steps need it")
    limits: Limits = Field(default_factory=Limits)
    allow_downgrade: bool = Field(False, description="accept a lower sequence than one already applied")
    poll_interval: float = Field(30.0, gt=0, description="seconds between rescans of the drop dir")
    settle_seconds: float = Field(5.0, ge=0, description="size and mtime must be unchanged this long")
    incomplete_timeout: float = Field(
        3600.0, gt=0, description="a stable file that still is not a complete tar after this long is quarantined")
    retry_interval: float = Field(60.0, gt=0, description="seconds before a failed step is retried")
    drops: Literal["keep", "delete"] = Field(
        "keep", description="what to do with a bundle file in drop_dir once it is complete")
    apply: bool = Field(True, description="run the bundles' apply steps here; false on the other agents of a site "
                        "that has several (one agent applies, the others verify, publish and serve)")
    retention: Retention | None = Field(None, description="keep the latest N versions of each bundle name "
                                        "(omit: every version is kept; `agent gc` then removes only blobs nothing "
                                        "references)")

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, v: list[Path]) -> list[Path]:
        for p in v:
            try:
                load_public_key(p)
            except UsageError as e:
                raise ValueError(str(e)) from None
            weak = _replaceable_by_anyone(p)
            if weak:
                raise ValueError(f"{p}: {weak}: anyone on this host could replace the key and sign bundles the agent "
                                 "accepts (chmod o-w)")
        return v

    @field_validator("drop_dir", "state_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> AgentConfig:
        d, s = self.drop_dir.resolve(), self.state_dir.resolve()
        if d == s or d in s.parents or s in d.parents:
            raise ValueError("drop_dir and state_dir must not contain each other")
        if self.site is not None and "registry_scheme" not in self.site.model_fields_set:
            # how nodes reach site.registry when the config does not say: the push target's scheme, else ours
            if self.push is not None:
                self.site.registry_scheme = "http" if self.push.insecure else "https"
            elif self.registry is not None:
                self.site.registry_scheme = "https" if self.registry.tls else "http"
        return self

    def public_keys(self) -> list[ec.EllipticCurvePublicKey]:
        return [load_public_key(p) for p in self.trusted_keys]

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "store"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.db"

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    def low_ports(self) -> list[int]:
        return [x.address[1] for x in (self.registry, self.files, self.metrics) if x and 0 < x.address[1] < 1024]


def load_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    p = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not p.exists():
        raise SpecError([f"{p}: config file does not exist (--config FILE or ${CONFIG_ENV})"])
    return load_yaml_model(p, AgentConfig)
