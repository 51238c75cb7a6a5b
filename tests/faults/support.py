"""Shared machinery of the fault suite: knobs, the figures recorder, the agent with an armed kill point, and
the checks every fault class ends with (store, published view, what the servers answer).

Knobs (environment):
  HYDRA_FAULTS_TRIALS   multiplier of every trial count (default 1: the bounded CI form)
  HYDRA_FUZZ_SECONDS    total seconds for the hypothesis fuzzers (default 60)
  HYDRA_FAULTS_SEED     seed of every random choice (default: random; printed with each failure)
  HYDRA_FAULTS_REPORT   append one JSON line per fault class to this file (``python -m tests.faults.report``)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.agent import AgentProc, wait_for

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"])


def _num(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        raise SystemExit(f"{name} must be a number") from None


TRIALS = _num("HYDRA_FAULTS_TRIALS", 1)
FUZZ_SECONDS = _num("HYDRA_FUZZ_SECONDS", 60)
SEED = int(os.environ.get("HYDRA_FAULTS_SEED") or random.SystemRandom().randrange(1 << 30))
TIMEOUT = int(600 * max(1.0, TRIALS))  # per test: the long form runs more trials


def trials(default: int) -> int:
    """``default`` scaled by HYDRA_FAULTS_TRIALS (at least 1)."""
    return max(1, round(default * TRIALS))


def rng(salt: str) -> random.Random:
    return random.Random(f"{SEED}:{salt}")


@dataclass
class Tally:
    """Figures of one fault class for docs/reliability.md."""

    fault: str
    trials: int = 0
    refused: int = 0
    converged: int = 0
    notes: list[str] = field(default_factory=list)
    na: tuple[str, ...] = ()   # columns that do not apply to this class ("refused", "converged")

    def save(self) -> None:
        out = os.environ.get("HYDRA_FAULTS_REPORT")
        if not out:
            return
        row = {"fault": self.fault, "trials": self.trials,
               **{k: (None if k in self.na else getattr(self, k)) for k in ("refused", "converged")},
               "notes": self.notes, "seed": SEED, "knobs": {"HYDRA_FAULTS_TRIALS": TRIALS,
                                                           "HYDRA_FUZZ_SECONDS": FUZZ_SECONDS}}
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- the agent with a kill point

KILLHOOK = [sys.executable, "-m", "tests.faults.killhook"]


class FaultAgent(AgentProc):
    """``AgentProc`` whose process may carry ``HYDRA_FAULT=POINT[@N]`` (and ``HYDRA_FAULT_FILL``,
    tests/faults/killhook.py)."""

    def start_armed(self, fault: str | None, fill: Path | None = None, fill_reserve: bool = False) -> None:
        """``fill``: at the armed point fill the filesystem holding that dir instead of killing the agent
        (``fill_reserve``: the journal's reserve in ``fill/store`` too)."""
        self.drop.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]  # this checkout's tests and sources, not an installed copy
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
        for k in ("HYDRA_FAULT", "HYDRA_FAULT_FILL", "HYDRA_FAULT_FILL_RESERVE"):
            env.pop(k, None)
        if fault:
            env["HYDRA_FAULT"] = fault
        if fill is not None:
            env["HYDRA_FAULT_FILL"] = str(fill)
            if fill_reserve:
                env["HYDRA_FAULT_FILL_RESERVE"] = "1"
        with open(self.log, "ab") as log:
            log.write(f"=== start (fault: {fault}{f', fill {fill}' if fill else ''})\n".encode())
            log.flush()
            self.proc = subprocess.Popen([*KILLHOOK, "agent", "run", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float = 30) -> None:
        wait_for(self._healthy, timeout, f"agent ready\n{self.log_tail()}")

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def reap(self) -> int | None:
        """The exit code of a process that ended by itself (None when it is still running)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        rc, self.proc = self.proc.returncode, None
        return rc


# ---------------------------------------------------------------- reading a state dir (agent stopped or not)

def journal(state: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = state / "journal.db"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return c.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:  # before the schema exists
        if "no such table" in str(e):
            return []
        raise
    finally:
        c.close()


def journal_status(state: Path) -> list[dict[str, Any]]:
    """What ``agent status --json`` lists, read in-process (a CLI subprocess costs a second)."""
    from hydra_bundle.agent.db import Database
    from hydra_bundle.agent.journal import Journal
    from hydra_bundle.agent.status import bundle_status

    db = Database(state / "journal.db", readonly=True)
    try:
        return bundle_status(Journal(db))
    finally:
        db.close()


def bundle_states(state: Path) -> dict[str, str]:
    return {f"{n} {v}": s for n, v, s in journal(state, "SELECT name, version, state FROM bundles")}


def store_blobs(state: Path) -> dict[str, Path]:
    d = state / "store" / "blobs" / "sha256"
    return {f"sha256:{p.name}": p for p in d.iterdir()} if d.is_dir() else {}


def check_store(state: Path, sizes: dict[str, int] | None = None) -> list[str]:
    """Problems with what is on disk: a blob that does not hash to its name, a published blob or reference
    that the store cannot serve completely, an index.json that is not whole JSON."""
    bad = []
    blobs = store_blobs(state)
    for digest, p in blobs.items():
        if sha256_file(p) != digest:
            bad.append(f"partial or wrong blob under its digest name: {p.name} ({p.stat().st_size} bytes)")
        elif sizes and digest in sizes and p.stat().st_size != sizes[digest]:
            bad.append(f"blob {digest} has {p.stat().st_size} bytes, the index says {sizes[digest]}")
    for digest, size in journal(state, "SELECT digest, size FROM blobs"):
        if digest not in blobs:
            bad.append(f"published blob {digest} is not in the store")
        elif blobs[digest].stat().st_size != size:
            bad.append(f"published blob {digest}: {blobs[digest].stat().st_size} bytes, published as {size}")
    for repo, tag, digest in journal(state, "SELECT repo, tag, digest FROM refs"):
        if not journal(state, "SELECT 1 FROM blobs WHERE digest=?", (digest,)):
            bad.append(f"reference {repo}:{tag} points at unpublished {digest}")
    idx = state / "store" / "index.json"
    if idx.exists():
        try:
            json.loads(idx.read_bytes())
        except ValueError:
            bad.append("store/index.json is not complete JSON")
    return bad



def published_snapshot(state: Path) -> dict[str, Any]:
    """Everything gc and remove change: bundle states, the published view, the store's blobs and index.json."""
    return {
        "states": sorted(journal(state, "SELECT id, state FROM bundles")),
        "refs": sorted(journal(state, "SELECT repo, tag, digest, bundle_id FROM refs")),
        "paths": sorted(journal(state, "SELECT area, name, path, digest, bundle_id FROM paths")),
        "blobs": sorted(journal(state, "SELECT digest, size, bundle_id FROM blobs")),
        "files": sorted(store_blobs(state)),
        "index": json.loads((state / "store" / "index.json").read_bytes()),
    }


def copied_site(root: Path, pristine: Path, trusted_key: Path) -> AgentProc:
    """An agent (not started) on a copy of the state dir ``pristine``."""
    import shutil

    agent = AgentProc(root, [trusted_key])
    shutil.copytree(pristine, agent.state)
    return agent


def killhook_cli(agent: AgentProc, args: list[str], fault: str | None) -> subprocess.CompletedProcess[str]:
    """``hydra-bundle agent ARGS --config …`` under the killhook, armed at ``fault`` (None: unarmed)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
    env.pop("HYDRA_FAULT", None)
    if fault:
        env["HYDRA_FAULT"] = fault
    return subprocess.run([*KILLHOOK, "agent", *args, "--config", str(agent.config)], capture_output=True,
                          text=True, timeout=120, env=env)

def leftovers(root: Path) -> list[str]:
    """Temp files anywhere under the agent's dirs (store/tmp, *.tmp, *.part, *.partial)."""
    out = []
    for p in root.rglob("*"):
        if p.is_file() and (p.parent.name == "tmp" or p.name.endswith((".tmp", ".part", ".partial"))):
            out.append(str(p.relative_to(root)))
    return sorted(out)


# ---------------------------------------------------------------- what a running agent serves

def served_state(agent: AgentProc) -> dict[str, Any]:
    """Everything the embedded registry and file server publish, plus the status with volatile fields
    dropped: the value two runs must agree on."""
    reg = f"http://{agent.registry}"
    with httpx.Client(timeout=30) as c:
        repos = c.get(f"{reg}/v2/_catalog").json()["repositories"]
        tags = {}
        for repo in repos:
            for tag in c.get(f"{reg}/v2/{repo}/tags/list").json()["tags"] or []:
                r = c.get(f"{reg}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
                assert r.status_code == 200, (repo, tag, r.status_code)
                got = "sha256:" + hashlib.sha256(r.content).hexdigest()
                assert got == r.headers["docker-content-digest"], (repo, tag)
                tags[f"{repo}:{tag}"] = got
    status = []
    for b in journal_status(agent.state):
        status.append({"name": b["name"], "version": b["version"], "sequence": b["sequence"],
                       "digest": b["digest"], "state": b["state"],
                       "steps": [(s["name"], s["state"]) for s in b["steps"]],
                       "components": sorted((c["kind"], c["ref"], c["digest"]) for c in b["components"])})
    return {"tags": tags, "status": status, "blobs": sorted(store_blobs(agent.state)),
            "store_index": json.loads((agent.state / "store" / "index.json").read_bytes())}


def check_served_blobs(agent: AgentProc) -> list[str]:
    """GET every published blob from the embedded registry: exactly its bytes, nothing partial."""
    bad = []
    reg = f"http://{agent.registry}"
    repos = httpx.get(f"{reg}/v2/_catalog", timeout=30).json()["repositories"]
    if not repos:
        return bad
    with httpx.Client(timeout=60) as c:
        for digest, size in journal(agent.state, "SELECT digest, size FROM blobs"):
            r = c.get(f"{reg}/v2/{repos[0]}/blobs/{digest}")
            got = "sha256:" + hashlib.sha256(r.content).hexdigest()
            if r.status_code != 200 or got != digest or len(r.content) != size:
                bad.append(f"GET {digest}: HTTP {r.status_code}, {len(r.content)} bytes, hashes to {got}")
    return bad


def registry_tags(host: str, repos: list[str]) -> dict[str, str]:
    """tag → manifest digest for ``repos`` in a docker-registry (the push target)."""
    out = {}
    with httpx.Client(timeout=30) as c:
        for repo in repos:
            r = c.get(f"http://{host}/v2/{repo}/tags/list")
            if r.status_code != 200:
                continue
            for tag in r.json().get("tags") or []:
                m = c.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
                out[f"{repo}:{tag}"] = "sha256:" + hashlib.sha256(m.content).hexdigest()
    return out


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
