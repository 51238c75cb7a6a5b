"""Benchmark helpers: timing child processes with their peak RSS, machine facts, result tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    seconds: float
    max_rss_mb: float
    returncode: int


def run(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = True) -> Run:
    """Run a command, returning wall time and the child's own peak RSS (wait4, not the sum of all children)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                         stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    return Run(dt, usage.ru_maxrss / 1024, p.returncode)


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
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}.json"
    p.write_text(json.dumps(data, indent=2))
    return p


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9
