"""``hydra-bundle agent plan | apply | mirror-config | ca``: what the apply steps will do, re-running them, the
node registry-mirror snippets and the site CA. Listed in the ``agent`` group's table (``agent_cmds``)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..states import Outcome
from .agent_common import config_option, find_bundle, load_config, open_journal
from .common import emit_json, handle_errors

if TYPE_CHECKING:
    from ..agent.config import AgentConfig
    from ..apply.site import SiteConfig


def _site(cfg: AgentConfig, what: str) -> SiteConfig:
    if cfg.site is None:
        from ..agent.deploy import NO_SITE_SHORT


        raise UsageError(f"{what}: {NO_SITE_SHORT}; site values are needed (see systemd/agent.example.yaml)")
    return cfg.site


@click.command("plan")
@click.argument("bundle")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (steps with their actions, in order).")
@click.option("--offline", is_flag=True, help="Do not ask the cluster whether chart releases would be installed or "
                                              "upgraded (and with which values changes).")
@click.option("--remove", "removal", is_flag=True, help="Preview `agent remove BUNDLE` (a name) instead.")
@click.option("--purge", is_flag=True, help="With --remove: preview `agent remove --purge`.")
@click.option("--to", "to_version", default=None, metavar="VERSION",
              help="Preview `agent rollback BUNDLE --to VERSION`: the rollback and the apply plan of VERSION.")
@handle_errors
def plan_cmd(bundle: str, config_path: Path | None, as_json: bool, offline: bool, removal: bool, purge: bool,
             to_version: str | None) -> None:
    """Every action the apply steps would take for BUNDLE on this site, in order; nothing is done.

    BUNDLE is a bundle file (its signature is verified first; it need not be ingested) or the name of a bundle
    the agent has admitted. Chart steps say what they would do now (install, or upgrade with the values diff),
    read from the cluster (nothing is changed there). With --remove, what `agent remove` would do; with --to,
    what `agent rollback` would do."""
    from ..agent.deploy import PREFIX
    from ..apply.plan import build_plan
    from ..apply.runtime import Runtime
    from .bundle_source import from_file, from_journal

    cfg = load_config(config_path)
    if removal:
        from .lifecycle_cmds import plan_remove

        plan_remove(cfg, bundle, purge, as_json)
        return
    rollback: tuple[str, dict[str, Any], str] | None = None
    if to_version is not None:
        from .lifecycle_cmds import rollback_target

        rollback = rollback_target(cfg, bundle, to_version)
        bundle = rollback[0]
    site = _site(cfg, "agent plan")
    path = Path(bundle)
    idx, bid, info, read = from_file(cfg, path) if path.is_file() else from_journal(cfg, bundle)
    ap = build_plan(idx, site, read, digest=bid)
    if not offline:
        rt = Runtime(site, ap.bundle)
        try:
            ap.preview(rt)
        finally:
            rt.close()
    pre = None
    if ap.steps:  # the agent's preflight step runs before them (cli/preflight_view.py)
        from .preflight_view import plan_entry

        pre = plan_entry(cfg, idx, ap, offline)
        if "steps" in info:
            pre["journalState"] = info["steps"].get(pre["journalStep"])
    if as_json:
        doc = ap.json()
        if pre is not None:
            doc["preflight"] = pre
        doc["bundle"].update(sequence=idx.sequence, **{k: v for k, v in info.items() if k != "steps"})
        if rollback is not None:
            doc["rollback"] = rollback[1]
        for st in doc["steps"]:
            st["journalStep"] = PREFIX + st["name"]
            if "steps" in info:
                st["journalState"] = info["steps"].get(PREFIX + st["name"])
        emit_json(doc)
        return
    if rollback is not None:
        click.echo(rollback[2])
    click.echo(f"bundle {idx.name} {idx.version} (sequence {idx.sequence}) {bid}, signed by {info['signer']}"
               + (f"; on this site: {info['state']}" if info.get("state") else ""))
    if pre is not None:
        from .preflight_view import plan_text

        click.echo(plan_text(pre))
    click.echo(ap.text())
    if ap.steps:
        click.echo(f"(the agent journals these as {PREFIX}<step>; nothing was done)")


@click.command("apply")
@click.argument("name")
@click.option("--version", "version", default=None, help="Pick this version of NAME (default: the highest sequence).")
@click.option("--unfinished", is_flag=True, help="Only re-run failed and pending apply steps.")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def apply_cmd(name: str, version: str | None, unfinished: bool, config_path: Path | None, as_json: bool) -> None:
    """Re-run the apply steps of an ingested bundle (NAME, or a digest prefix) now, in this process.

    Every apply step runs again (they converge: unchanged objects stay unchanged, rows are not duplicated);
    with --unfinished only failed and pending ones. Shares the site safely with a running agent. Exit 0 when the
    bundle ends complete, 1 otherwise (pending commands are printed)."""
    from ..agent import log as agent_log
    from ..agent.deploy import PREFIX
    from ..agent.pipeline import Pipeline

    cfg = load_config(config_path)
    db, j = open_journal(cfg)
    row = find_bundle(j, name, version)
    db.close()
    agent_log.setup()
    pipe = Pipeline(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: pipe.stop.set())
    res = pipe.reapply(row.id, everything=not unfinished)
    steps = [s for s in pipe.journal.steps(row.id) if s.name.startswith(PREFIX)]
    if as_json:
        emit_json({**res.json(), "steps": [s.json() for s in steps]})
    else:
        click.echo(f"{res.state}: {row.name} {row.version}" + (f" ({res.reason}: {res.detail})"
                                                              if res.reason and res.detail else ""))
        for s in steps:
            click.echo(f"    {s.name:<28} {s.state:<8} {s.detail or ''}")
    sys.exit(0 if res.state == Outcome.COMPLETE else 1)


@click.command("mirror-config")
@config_option
@click.option("--format", "fmt", type=click.Choice(["all", "containerd", "crio"]), default="all", show_default=True,
              help="containerd hosts.toml files, the CRI-O/podman registries.conf drop-in, or both.")
@click.option("--json", "as_json", is_flag=True, help="Print {path: content} as JSON.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the files under DIR (DIR/etc/containerd/certs.d/…) instead of printing them.")
@click.option("--endpoint", "endpoints", multiple=True, metavar="[http(s)://]HOST[:PORT][/PREFIX]",
              help="A registry serving the same bundles (each agent of the site): repeat it, in the order nodes "
                   "try them; the upstream registry comes last. Default: site.registry_mirrors of the config, "
                   "or site.registry alone.")
@handle_errors
def mirror_config_cmd(config_path: Path | None, fmt: str, as_json: bool, output_dir: Path | None,
                      endpoints: tuple[str, ...] = ()) -> None:
    """Registry-mirror snippets for the nodes: every upstream registry of the published images resolves to the
    site registry (images Hydra references at runtime, e.g. the vllm-openai CPU image, included).

    Printed as `# ==> PATH <==` headers followed by the file content (each file is valid TOML)."""
    from ..agent.published import Published
    from ..apply.mirrors import CRIO_FILE, parse_endpoints, site_mirror_files

    cfg = load_config(config_path)
    site = _site(cfg, "agent mirror-config")
    chosen = parse_endpoints(endpoints or site.registry_mirrors or [site.registry], site.registry_scheme,
                             "--endpoint" if endpoints else "site.registry_mirrors:")
    db, _ = open_journal(cfg)
    refs = Published(db).image_refs()
    if not refs:
        click.echo("no images are published yet", err=True)
        return
    ca_pem = None
    if cfg.push is None and cfg.registry is not None and cfg.registry.tls and cfg.registry.cert_file is None:
        from ..apply.tls import SiteCA

        ca_pem = SiteCA(cfg.tls_dir, site.cluster_name).pem()  # what the agent's registry certificate is from
    authorization = None
    if site.registry_auth is not None:
        auths = json.loads(site.registry_auth.dockerconfigjson(site.registry.partition("/")[0]))["auths"]
        authorization = "Basic " + next(iter(auths.values()))["auth"]
    files = site_mirror_files(refs, chosen[0].registry, chosen[0].scheme, site.registry_skip_verify, ca_pem,
                              authorization, chosen[1:])
    if fmt != "all":
        files = {p: c for p, c in files.items()
                 if (p == CRIO_FILE or p.startswith("/etc/containers/")) == (fmt == "crio")}
    if as_json:
        emit_json({"registry": site.registry, "files": files,
                   "endpoints": [f"{e.scheme}://{e.registry}" for e in chosen]})
        return
    if output_dir is not None:
        for p, content in files.items():
            dest = output_dir / p.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content)
            click.echo(f"wrote {dest}", err=True)
        return
    for p, content in files.items():
        click.echo(f"# ==> {p} <==")
        click.echo(content)
    if fmt != "crio":
        click.echo("# containerd: set config_path = \"/etc/containerd/certs.d\" under "
                   "[plugins.\"io.containerd.grpc.v1.cri\".registry] and restart containerd")


@click.command("ca")
@config_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the CA certificate (PEM) to FILE instead of stdout.")
@handle_errors
def ca_cmd(config_path: Path | None, output: Path | None) -> None:
    """Print the site CA certificate (PEM) that issues the gateway certificates, for operators to trust.

    Created on first use under state_dir/tls (run as the agent's user, or as root: files are given to the
    state dir's owner). Not used when site.tls names certificate files."""
    from ..apply.tls import SiteCA, fingerprint

    cfg = load_config(config_path)
    ca = SiteCA(cfg.tls_dir, cfg.site.cluster_name if cfg.site else "site")
    pem = ca.pem()
    if cfg.site is not None and cfg.site.tls is not None:
        click.echo(f"note: site.tls files are configured ({cfg.site.tls.cert_file}): the gateway uses them, not "
                   f"this CA", err=True)
    click.echo(f"site CA {ca.cert_path}, SHA-256 {fingerprint(pem)}", err=True)
    if output is None:
        click.echo(pem.decode(), nl=False)
    else:
        output.write_bytes(pem)
        click.echo(f"wrote {output}; trust it, e.g. Debian: sudo cp {shlex.quote(str(output))} "
                   f"/usr/local/share/ca-certificates/hydra-site-ca.crt && sudo update-ca-certificates", err=True)
