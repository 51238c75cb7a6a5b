"""``hydra-bundle agent status``, ``history`` and ``inventory``: what is on this site, from the journal."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import click

from ..disk import human_bytes
from ..states import BundleState
from ..text import printable
from .agent_common import config_option, load_config, open_journal
from .common import emit_json, handle_errors


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Also list what each apply step changed.")
@handle_errors
def status_cmd(config_path: Path | None, as_json: bool, verbose: bool) -> None:
    """What is on this site: bundles with version, sequence, digest, state, steps (with what the apply steps
    changed, their notes and outputs, e.g. the /etc/hosts line for the gateway) and components."""
    from ..agent.status import bundle_status
    from ..agent.upgrade import info

    cfg = load_config(config_path)
    _, j = open_journal(cfg)
    bundles = bundle_status(j)
    agent = info()
    if as_json:
        emit_json({"agent": agent.json(), "bundles": bundles})
        return
    echo = _echo_printable
    echo(agent.text())
    if not bundles:
        echo("no bundles yet")
    for b in bundles:
        when = b["completedAt"] or b["updatedAt"]
        who = (f"{b['name'] or '?'} {b['version'] or '?'}  sequence {b['sequence']}" if b["verified"] else
               f"unverified file {b['source'] or '?'} (nothing it claims is shown)")
        echo(f"{who}  {b['state']}  {when}  {b['digest'][:19]}"
             + (f"  ({b['reason']}: {b['detail']})" if b["reason"] else ""))
        width = max([10, *(len(s["name"]) for s in b["steps"])])
        for s in b["steps"]:
            res = s.get("result") or {}
            detail = res.get("summary") if s["state"] == "pending" and res.get("command") else s["detail"]
            echo(f"    step {s['name']:<{width}} {s['state']:<8} {detail or ''}")
            for line in _result_lines(res, verbose):
                echo(f"         {' ' * width}{line}")
        for c in b["components"]:
            echo(f"    {c['kind']:<8} {c['ref']}  {c['digest'][:19]}")


def _echo_printable(text: str) -> None:
    click.echo(printable(text))


def _result_lines(res: dict[str, Any], verbose: bool) -> list[str]:
    out = []
    if res.get("command"):
        out.append(f"run: {shlex.join(res['command'])}")
    outputs = dict(res.get("outputs") or {})
    out += [f"/etc/hosts: {h}" for h in outputs.pop("etcHosts", [])]
    for k, v in outputs.items():
        if v not in (None, "", [], {}):
            out.append(f"output {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}")
    out += [f"note: {n}" for n in res.get("notes") or []]
    if verbose:
        out += [f"change: {c}" for c in res.get("changes") or []]
    return out


@click.command("history")
@config_option
@click.option("--limit", "-n", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def history_cmd(config_path: Path | None, limit: int, as_json: bool) -> None:
    """Recent events: received, steps, quarantined, complete, duplicates; and who moved which bundle where
    (install, upgrade, rollback, remove: operator, from and to version, time)."""
    from ..agent.changes import changes

    cfg = load_config(config_path)
    _, j = open_journal(cfg)
    events = j.history(limit)
    moves = changes(j, limit=limit) if _has_changes(j) else []
    if as_json:
        emit_json({"events": events, "changes": [c.json() for c in moves]})
        return
    if moves:
        _echo_printable("changes (who went where):")
        for c in moves:
            _echo_printable("  " + c.text())
        _echo_printable("events:")
    for e in events:
        who = f"{e['name'] or '?'} {e['version'] or ''}".strip()
        _echo_printable(f"{e['at']}  {who:<30} {e['event']}" + (f"  {e['detail']}" if e["detail"] else ""))


def _has_changes(j: Any) -> bool:
    """A journal an older agent wrote (opened read-only, not migrated) has no ``changes`` table."""
    return bool(j.db.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name='changes'"))


@click.command("inventory")
@config_option
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON file to write ('-' for stdout).")
@handle_errors
def inventory_cmd(config_path: Path | None, out: Path) -> None:
    """Every blob digest this site holds (published), with the bundles: the input for delta bundles."""
    from ..agent.published import Published
    from ..oci.layout import BlobDir

    cfg = load_config(config_path)
    db, j = open_journal(cfg)
    store = BlobDir()
    store.blobs = cfg.store_dir / "blobs" / "sha256"
    # only what is on disk too: a delta built from this never leaves out a blob the site lacks (agent gc
    # unpublishes before it deletes, so this filter only matters for a store changed by hand)
    blobs = [(d, s) for d, s in Published(db).inventory() if store.has(d, s)]
    data = {
        "format": "hydra-bundle-inventory/v1",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundles": [{"name": b.name, "version": b.version, "sequence": b.sequence, "digest": b.id}
                    for b in j.bundles((BundleState.COMPLETE,))],
        "blobs": [{"digest": d, "size": s} for d, s in blobs],
    }
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if str(out) == "-":
        click.echo(text, nl=False)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    click.echo(f"wrote {out}: {len(blobs)} blobs, {human_bytes(sum(s for _, s in blobs))}", err=True)
