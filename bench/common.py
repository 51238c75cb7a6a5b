"""Benchmark helpers: timing child processes with their peak RSS, machine facts, result tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    seconds: float
    max_rss_mb: float
    returncode: int


# Linux carries a process's peak RSS across fork+exec (ru_maxrss starts at the parent's size), so the command is
# started by a small wrapper process whose own size (~10 MB) is the floor of what we report.
_WRAPPER = ("import os, sys, time\n"
            "t0 = time.perf_counter(); pid = os.fork()\n"
            "if pid == 0:\n    os.execvp(sys.argv[1], sys.argv[1:])\n"
            "_, st, ru = os.wait4(pid, 0)\n"
            "print(f'@@ {os.waitstatus_to_exitcode(st)} {time.perf_counter() - t0} {ru.ru_maxrss}', file=sys.stderr)\n")


def run(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = True) -> Run:
    """Run a command, returning wall time and its own peak RSS (measured by a tiny wrapper, see above)."""
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], env={**os.environ, **(env or {})},
                       stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE)
    err = p.stderr.decode(errors="replace")
    line = [x for x in err.splitlines() if x.startswith("@@ ")][-1].split()
    rc, dt, rss_kb = int(line[1]), float(line[2]), int(line[3])
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{err[-2000:]}")
    return Run(dt, rss_kb / 1024, rc)


def hydra_bundle() -> str:
    """The ``hydra-bundle`` of the interpreter running the benchmark (not whatever PATH finds first, e.g. a pyenv
    shim of another Python)."""
    here = Path(sys.executable).parent / "hydra-bundle"
    return str(here) if here.exists() else (shutil.which("hydra-bundle") or "hydra-bundle")


def python_sha256_rate(path: Path, limit: int = 1 << 30) -> float:
    """Single-core hashlib sha256 throughput (bytes/s) over (up to ``limit`` bytes of) a file in page cache."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n_total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n_total < limit and (n := f.readinto(buf)):
            h.update(view[:n])
            n_total += n
    return n_total / (time.perf_counter() - t0)


def sha256sum_rate(path: Path) -> float:
    size = path.stat().st_size
    r = run(["sha256sum", str(path)])
    return size / r.seconds


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save(name: str, data: dict[str, object]) -> Path:
    """bench/results/NAME.json (or under $HYDRA_BENCH_RESULTS: the smoke test keeps real results intact)."""
    out = Path(os.environ.get("HYDRA_BENCH_RESULTS") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json.dumps(data, indent=2))
    return p


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path | None = None, timeout: float = 60) -> None:
    """Wait for an agent's ``/healthz``; a process that exits meanwhile fails at once (with its log tail)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise SystemExit(f"agent exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("agent did not become healthy")
