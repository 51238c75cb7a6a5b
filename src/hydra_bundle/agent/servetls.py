"""TLS for the embedded registry: on by default, with a leaf the site CA issues (``state_dir/tls``, the CA the
apply steps already use for the gateway), or the site's own ``cert_file``/``key_file``. The certificate names every
host nodes reach the registry by (``registry.hosts``; by default the host of ``site.registry``, the listen address
when it is not a wildcard, this machine's name, ``localhost`` and ``127.0.0.1``) and is renewed 30 days before it
expires, at the next start. Plain HTTP only when the config says ``tls: false`` (logged as a warning).

Handshakes run in the connection's own thread, never in the accept loop, under the same timeout as headers."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..apply.tls import SiteCA, from_files
from .config import AgentConfig

LEAF_LABEL = "agent-registry"


@dataclass
class ServingTLS:
    context: ssl.SSLContext
    hosts: list[str]
    source: str          # "site CA" | "site files"
    ca_pem: bytes | None  # what nodes must trust (site CA); None for site files


def default_hosts(cfg: AgentConfig) -> list[str]:
    out: list[str] = []
    if cfg.site is not None:
        out.append(cfg.site.registry.partition("/")[0].rsplit(":", 1)[0].strip("[]"))
    if cfg.registry is not None:
        host = cfg.registry.address[0]
        if host not in ("0.0.0.0", "::", ""):
            out.append(host)
    out += [socket.gethostname(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(h for h in out if h))


def registry_tls(cfg: AgentConfig) -> ServingTLS | None:
    """The server context of the registry, or None when ``registry.tls`` is false (or no registry)."""
    r = cfg.registry
    if r is None or not r.tls:
        return None
    hosts = r.hosts or default_hosts(cfg)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if r.cert_file is not None and r.key_file is not None:
        from_files(r.cert_file, r.key_file, hosts)   # checked: PEM, key matches, hosts covered, not expired
        ctx.load_cert_chain(str(r.cert_file), str(r.key_file))
        return ServingTLS(ctx, hosts, "site files", None)
    ca = SiteCA(cfg.tls_dir, cfg.site.cluster_name if cfg.site else "site")
    leaf = ca.leaf(LEAF_LABEL, hosts)
    ctx.load_cert_chain(str(cfg.tls_dir / f"leaf-{LEAF_LABEL}.crt"), str(cfg.tls_dir / f"leaf-{LEAF_LABEL}.key"))
    return ServingTLS(ctx, leaf.hosts, "site CA", leaf.ca_pem)


def leaf_paths(tls_dir: Path) -> tuple[Path, Path]:
    return tls_dir / f"leaf-{LEAF_LABEL}.crt", tls_dir / f"leaf-{LEAF_LABEL}.key"
