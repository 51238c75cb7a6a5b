"""Drop → complete for the Hydra demo bundle, excluding the blob copy time.

Reuses the demo (demo/run.py, demo/internet.py): internet stand-ins seeded from $HYDRA_BUNDLE_FIXTURES, the
real bundle-spec.yaml built through --mirror exactly as ``make demo`` builds it; then, for every run, a fresh
site (kube-apiserver, MariaDB, the demo's controllers stand-in, via ``demo.run.start_site``) and a fresh agent
with the demo's agent config. Each run:

  1. copy the bundle to a staging path on the drop dir's filesystem and fsync it (timed: the blob copy time,
     excluded from the result);
  2. t0: atomic rename into the drop dir;
  3. watch the agent's journal (read-only, every 50 ms) until the bundle reaches its final state, as the demo
     does: ``complete``, or ``waiting`` with only the helm-chart steps pending (no helm binary here); a
     ``failed`` step is retried by the agent after ``retry_interval`` and the wait goes on;

and reports t0 → final state (the journal's own timestamp of that state), split into phases from the agent's
log (millisecond timestamps): detect + settle (t0 → "bundle file settled"), signature check + admission
(→ "bundle admitted"), every attempt of every step (ingest = verify every blob while copying it into the
store, publish, each apply step), the wait for a retry after a failed step, and the gaps between steps.

Staging (``--staging``): ``part`` is the demo's convention (copy to ``drop/NAME.part``, rename to ``NAME``: the
agent sees a rename from an ignored name and takes the file at once); ``outside`` copies to a directory beside
the drop dir and renames it in (inotify reports a new file, so the agent waits for ``settle_seconds`` of
unchanged size/mtime/inode). ``both`` (default) interleaves the two and reports each.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

import demo.run as demo  # noqa: E402
from bench.common import machine, save  # noqa: E402
from demo import internet  # noqa: E402
from hydra_bundle.agent.db import Database  # noqa: E402
from hydra_bundle.agent.journal import Journal  # noqa: E402
from hydra_bundle.spec import load_spec  # noqa: E402

FINAL = ("complete", "waiting", "quarantined")  # not "failed": the agent retries it after retry_interval
HELM_STEP = re.compile(r"^apply:chart-")
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def agent_config(drop: Path, state: Path, pub: Path, site: dict[str, Any], **overrides: float) -> dict[str, Any]:
    """demo/run.py main() step 5/6, verbatim (the demo builds it inline; keep the two in step)."""
    reg_port, files_port = demo.free_port(), demo.free_port()
    cfg: dict[str, Any] = {
        "drop_dir": str(drop), "state_dir": str(state), "trusted_keys": [str(pub)],
        "registry": {"listen": f"127.0.0.1:{reg_port}"}, "files": {"listen": f"127.0.0.1:{files_port}"},
        "poll_interval": 2, "settle_seconds": 1, "retry_interval": 5,
    }
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if site.get("kubeconfig"):
        cfg["site"] = {"cluster_name": "demo", "domain": "cn-sh-a1", "registry": f"127.0.0.1:{reg_port}",
                       "file_server": f"http://127.0.0.1:{files_port}",
                       "metallb": {"addresses": ["192.0.2.240/28"]}, "timeout": "2m",
                       "vars": {"nfs_server": "192.0.2.10", "nfs_share": "/exports/hydra"}, **site}
    return cfg


def read_log(log: Path) -> list[dict[str, Any]]:
    """The agent's logfmt lines as dicts, with ``t`` = epoch seconds (millisecond resolution)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        kv = {k: (v[1:-1].replace('\\"', '"') if v.startswith('"') else v) for k, v in _LOGFMT.findall(line)}
        if "time" not in kv:
            continue
        whole, _, ms = kv["time"].rstrip("Z").partition(".")
        kv["t"] = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms or 0) / 1000
        out.append(kv)
    return out


def log_times(log: Path, msg: str) -> list[float]:
    return [e["t"] for e in read_log(log) if e.get("msg") == msg]


def wait_ready(agent: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        if log_times(log, "agent ready"):
            return
        time.sleep(0.05)
    raise SystemExit(f"the agent did not start:\n{log.read_text(errors='replace')[-3000:]}")


def copy_fsynced(src: Path, dest: Path) -> float:
    t = time.perf_counter()
    shutil.copyfile(src, dest)
    with open(dest, "rb") as f:
        os.fsync(f.fileno())
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def one_run(k: int, mode: str, bundle: Path, pub: Path, fixtures: Path, rdir: Path, timeout: float,
            notes: list[str], overrides: dict[str, float | None]) -> dict[str, Any]:
    rdir.mkdir(parents=True)
    stops: list[Any] = []
    agent = None
    try:
        site, site_stops, skipped = demo.start_site(rdir, fixtures, notes.append)
        stops += site_stops
        drop, state = rdir / "site" / "drop", rdir / "site" / "state"
        drop.mkdir(parents=True)
        cfg_path = rdir / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(agent_config(drop, state, pub, site, **overrides),
                                           sort_keys=False))
        log = rdir / "agent.log"
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # keep timestamps in the log
        with open(log, "w") as logf:
            agent = subprocess.Popen([*demo.HB, "agent", "run", "--config", str(cfg_path)],
                                     stdout=subprocess.DEVNULL, stderr=logf, env=env)
        wait_ready(agent, log)
        if mode == "part":
            staged = drop / (bundle.name + ".part")
        else:
            (rdir / "site" / "staging").mkdir()
            staged = rdir / "site" / "staging" / bundle.name
        copy_s = copy_fsynced(bundle, staged)
        time.sleep(0.5)  # let the watcher's events for the staging copy pass (drop/*.part is ignored anyway)
        t0 = time.time()
        os.rename(staged, drop / bundle.name)
        j = Journal(Database(state / "journal.db", readonly=True))
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited ({agent.returncode}):\n{log.read_text()[-3000:]}")
            rows = [r for r in j.bundles() if r.name == "hydra-ws"]
            if rows and rows[0].state in FINAL:
                row = rows[0]
                break
            time.sleep(0.05)
        if row is None:
            raise SystemExit(f"run {k}: no final state after {timeout}s:\n{log.read_text()[-3000:]}")
        t_end = row.completed_at if row.state == "complete" and row.completed_at else row.updated_at
        steps = j.steps(row.id)
        events = [e for e in read_log(log) if e["t"] >= t0 - 0.01]
        # the CLI's view of the final state (what an operator sees)
        st = json.loads(subprocess.run([*demo.HB, "agent", "status", "--json", "--config", str(cfg_path)],
                                       capture_output=True, text=True, check=True).stdout)["bundles"][0]
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        demo.stop_all(stops)
        for t in stops:  # MariaDB.stop() keeps its data dir (the demo leaves it in /tmp): remove it
            if hasattr(t, "remove"):
                t.remove()
    pending = [s.name for s in steps if s.state == "pending"]
    final = row.state
    if final == "waiting" and pending and all(HELM_STEP.match(n) for n in pending):
        final = "waiting (only helm chart steps pending: no helm binary)"
    return {"run": k, "staging": mode, "copy_seconds_excluded": round(copy_s, 4),
            "total_seconds": round(t_end - t0, 3), "final_state": final, "pending_steps": pending,
            "cli_state": st["state"], "skipped": skipped, **timeline(events, t0, t_end)}


def timeline(events: list[dict[str, Any]], t0: float, t_end: float) -> dict[str, Any]:
    """Phases from the agent's log: every attempt of every step (a failed step retried after retry_interval
    shows up as its failed attempt plus the wait for the retry)."""
    phases: dict[str, float] = {}
    attempts: dict[str, list[str]] = {}
    failures: list[str] = []
    t_settled = next((e["t"] for e in events if e.get("msg") == "bundle file settled"), None)
    t_admit = next((e["t"] for e in events if e.get("msg") == "bundle admitted"), None)
    if t_settled is not None:
        phases["detect+settle"] = t_settled - t0
    if t_settled is not None and t_admit is not None:
        phases["signature+admit"] = t_admit - t_settled
    started: dict[str, float] = {}
    retry_wait = 0.0
    failed_at: float | None = None
    for e in events:
        if e["t"] > t_end + 0.01:
            break
        msg, step = e.get("msg"), e.get("step")
        if msg == "step started" and step:
            started[step] = e["t"]
            if failed_at is not None:
                retry_wait += e["t"] - failed_at
                failed_at = None
        elif msg in ("step done", "step skipped", "step pending", "step failed", "step blocked") and step in started:
            phases[step] = phases.get(step, 0.0) + e["t"] - started.pop(step)
            attempts.setdefault(step, []).append(msg.split()[1])
            if msg == "step failed":
                failed_at = e["t"]
                failures.append(f"{step}: {e.get('error', '')[:160]}")
    if retry_wait:
        phases["wait for retry (retry_interval)"] = retry_wait
    phases["gaps between steps"] = max(0.0, (t_end - t0) - sum(phases.values()))
    return {"phases": {k: round(v, 3) for k, v in phases.items()},
            "attempts": {k: v for k, v in attempts.items() if len(v) > 1}, "failures": failures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per staging mode (fresh site and agent each)")
    ap.add_argument("--staging", choices=("part", "outside", "both"), default="both")
    ap.add_argument("--settle-seconds", type=float, default=None, help="override the demo's agent config (1)")
    ap.add_argument("--poll-interval", type=float, default=None, help="override the demo's agent config (2)")
    ap.add_argument("--fixtures", default=None)
    ap.add_argument("--timeout", type=float, default=180, help="per run, drop → final state")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--verbose", "-v", action="store_true", help="print the stand-ins' messages")
    args = ap.parse_args()
    if not shutil.which("docker-registry"):
        raise SystemExit("docker-registry is missing (apt-get install docker-registry)")
    fixtures = demo.find_fixtures(args.fixtures)
    notes: list[str] = []
    demo.info = (lambda m: print(f"    {m}", flush=True)) if args.verbose else notes.append  # the stand-ins' chatter
    overrides = {"settle_seconds": args.settle_seconds, "poll_interval": args.poll_interval}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-drop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    modes = ["part", "outside"] if args.staging == "both" else [args.staging]
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        # the demo's build, verbatim (demo/run.py main() steps 1–2)
        spec = load_spec(ROOT / "bundle-spec.yaml", use_examples=True)
        net = internet.start(spec, fixtures, work, notes.append)
        try:
            spec_path = demo.overlay_spec(work, net)
            demo.hb("keygen", str(work / "release"), capture=True)
            mirrors = [a for m in net.mirrors for a in ("--mirror", m)]
            sets = [a for k, v in net.sets.items() for a in ("--set", f"{k}={v}")]
            bundle = work / "hydra-ws-1.0.0.tar"
            demo.hb("build", "--no-agent-kit",
                    str(spec_path), "-o", str(bundle), "--key", str(work / "release.key"), "--cache-dir",
                    str(work / "cache"), "--insecure-registry", net.registry.host, *mirrors, *sets, "--quiet")
        finally:
            net.stop()
        size = bundle.stat().st_size
        print(f"built {bundle.name}: {size / 1e6:.2f} MB; {args.runs} run(s) x staging {', '.join(modes)}",
              flush=True)
        for _ in range(args.runs):
            for mode in modes:
                n = len(runs) + 1
                r = one_run(n, mode, bundle, work / "release.pub", fixtures, work / f"run{n}", args.timeout, notes,
                            overrides)
                runs.append(r)
                top = sorted(r["phases"].items(), key=lambda kv: -kv[1])[:3]
                print(f"  run {n} ({mode:<7}): {r['total_seconds']:6.2f}s  {r['final_state']}; slowest: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in top)
                      + (f"; FAILED attempts: {' | '.join(r['failures'])}" if r["failures"] else ""), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    cfg = {"poll_interval": 2, "settle_seconds": 1, "retry_interval": 5, "incomplete_timeout": 3600}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    summary: dict[str, Any] = {}
    for mode in modes:
        rs = [r for r in runs if r["staging"] == mode]
        med = statistics.median(r["total_seconds"] for r in rs)
        names = list(dict.fromkeys(n for r in rs for n in r["phases"]))
        phase_med = {n: round(statistics.median(r["phases"].get(n, 0.0) for r in rs), 3) for n in names}
        summary[mode] = {
            "median_seconds": round(med, 3), "runs_seconds": [r["total_seconds"] for r in rs],
            "median_phase_seconds": phase_med,
            "settle_share": round(phase_med.get("detect+settle", 0.0) / med, 3) if med else None,
            "median_copy_seconds_excluded": round(statistics.median(r["copy_seconds_excluded"] for r in rs), 4),
            "final_states": sorted({r["final_state"] for r in rs}),
            "runs_with_failed_attempts": sum(1 for r in rs if r["failures"])}
    kube = next((n for n in notes if n.startswith("kube-apiserver ")), "kube-apiserver: not started")
    result = {"machine": machine(), "bundle_bytes": size, "agent_config": cfg, "kube_apiserver": kube,
              "skipped": runs[0]["skipped"], "summary": summary, "runs": runs,
              "seconds_total": round(time.perf_counter() - t_start, 1)}
    tag = "".join(f"_{k.split('_')[0]}{v:g}" for k, v in overrides.items() if v is not None)
    saved = save("drop_to_complete" + tag, result)  # a non-demo config does not overwrite the demo's result

    print(f"\nbundle {size / 1e6:.2f} MB (Hydra demo; {kube})")
    print(("agent config as the demo: " if not tag else "agent config (demo's, with overrides): ")
          + ", ".join(f"{k} {v}" for k, v in cfg.items()))
    for mode, s in summary.items():
        how = ("drop/NAME.part → NAME (rename from an ignored name: taken at once)" if mode == "part" else
               "staging dir → drop/NAME (a new file: settle_seconds of stability first)")
        print(f"[{mode}] {how}")
        print(f"  drop → {', '.join(s['final_states'])}")
        print(f"  median {s['median_seconds']:.2f}s (runs {', '.join(f'{x:.2f}' for x in s['runs_seconds'])}); "
              f"copy excluded {s['median_copy_seconds_excluded'] * 1000:.0f} ms; settle share "
              f"{s['settle_share']:.0%}; runs with a failed step retried: {s['runs_with_failed_attempts']}")
        for n, v in s["median_phase_seconds"].items():
            print(f"    {n:<34} {v:7.3f}s")
    if runs[0]["skipped"]:
        print("skipped: " + "; ".join(runs[0]["skipped"]))
    print(f"total {result['seconds_total']}s; wrote {saved.relative_to(ROOT)}")
    return 0 if all(r["final_state"].startswith(("complete", "waiting")) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
