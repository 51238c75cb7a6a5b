"""Agent ingest alone, on the disk and on tmpfs, as a ratio to single-core ``sha256sum`` on the same bundle file.

One bundle is built once (a docker-registry seeded with one big image of 3 incompressible layers plus one image of
many small layers, so both the per-byte cost and the per-blob cost — the durability of each blob — show), then for
each location (a work dir on the disk, and /dev/shm) the bundle is copied there and, ``--rounds`` times with a fresh
agent state in the same location (``sync`` first, so no writeback of the copy is left):

  * ``hydra-bundle agent ingest BUNDLE`` (signature, every blob hashed while written into the store, made
    durable, publish), whole command, and its ingest step alone (from the agent's log timestamps);
  * coreutils ``sha256sum BUNDLE`` and Python's hashlib on one core over the same file (page cache).

Ratios are of the same data in the same run: ingest bytes/s ÷ sha256sum bytes/s (and ÷ hashlib).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.common import hydra_bundle, machine, python_sha256_rate, run, save, sha256sum_rate
from tests.support.images import push_random_image
from tests.support.registry import Registry, free_port

MB = 1_000_000
GOAL = 0.85  # of sha256sum, on tmpfs
_LOG = re.compile(r'time=(\S+) .*msg="step (started|done)".* step=ingest')


def _step_seconds(log: str) -> float | None:
    t: dict[str, datetime] = {}
    for m in _LOG.finditer(log):
        t[m.group(2)] = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
    return (t["done"] - t["started"]).total_seconds() if "started" in t and "done" in t else None


def _measure(hb: str, src: Path, pub: Path, loc: Path, rounds: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="hb-ingest-", dir=loc))
    try:
        bundle = work / "bundle.tar"
        shutil.copyfile(src, bundle)
        cfg = work / "agent.yaml"
        cfg.write_text(yaml.safe_dump({
            "drop_dir": str(work / "drop"), "state_dir": str(work / "state"), "trusted_keys": [str(pub)],
            "registry": {"listen": f"127.0.0.1:{free_port()}", "tls": False}, "limits": {"min_free_bytes": 0}}))
        cmd, step = [], []
        for _ in range(rounds):
            shutil.rmtree(work / "state", ignore_errors=True)
            os.sync()
            t0 = time.perf_counter()
            p = subprocess.run([hb, "agent", "ingest", str(bundle), "--config", str(cfg)],
                               capture_output=True, text=True)
            cmd.append(time.perf_counter() - t0)
            if p.returncode != 0:
                raise SystemExit(f"ingest failed: {p.stderr[-2000:]}")
            if (s := _step_seconds(p.stderr)) is not None:
                step.append(s)
        size = bundle.stat().st_size
        coreutils = max(sha256sum_rate(bundle) for _ in range(2))
        py = max(python_sha256_rate(bundle, limit=1 << 40) for _ in range(2))
        out: dict[str, object] = {"bundle_bytes": size, "sha256sum_GBps": round(coreutils / 1e9, 3),
                                  "python_sha256_GBps": round(py / 1e9, 3)}
        for name, times in (("ingest", cmd), ("ingest_step", step)):
            if times:
                rate = size / min(times)
                out[name] = {"seconds": round(min(times), 3), "all_seconds": [round(t, 3) for t in times],
                             "GBps": round(rate / 1e9, 3), "ratio_to_sha256sum": round(rate / coreutils, 2),
                             "ratio_to_python_sha256": round(rate / py, 2)}
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0, help="size of the big image (GB)")
    ap.add_argument("--small", type=int, default=120, help="layers of the many-small-layers image")
    ap.add_argument("--small-kb", type=int, default=256, help="size of each small layer (KB)")
    ap.add_argument("--rounds", type=int, default=3, help="best of N ingests per location")
    ap.add_argument("--disk-dir", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="a directory on the disk (default: bench/results)")
    ap.add_argument("--no-disk", action="store_true", help="tmpfs only")
    args = ap.parse_args()
    shm = Path("/dev/shm")
    args.disk_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(shm)
    seed_dir = Path(tempfile.mkdtemp(prefix="hb-ingest-seed-", dir=shm))
    hb = hydra_bundle()
    locs = ([("disk", args.disk_dir)] if not args.no_disk else []) + [("tmpfs", shm)]
    result: dict[str, object] = {"machine": machine(), "rounds": args.rounds, "goal_ratio_to_sha256sum": GOAL}
    try:
        with Registry() as reg:
            per = int(args.gb * 1e9)
            print(f"seeding a {per / MB:.0f} MB image and {args.small} x {args.small_kb} KB layers into "
                  f"{reg.host} …", flush=True)
            push_random_image(reg.host, "bench/big", "v1", [per // 2, per // 3, per - per // 2 - per // 3],
                              seed=700, tmp_dir=seed_dir, level=0)
            push_random_image(reg.host, "bench/many", "v1", [args.small_kb * 1000] * args.small, seed=701,
                              tmp_dir=seed_dir, level=0)
            subprocess.run([hb, "keygen", str(seed_dir / "k")], check=True, capture_output=True)
            spec = seed_dir / "spec.yaml"
            spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                            "metadata: {name: bench-ingest, version: '1', sequence: 1}\nimages:\n"
                            f"  - ref: {reg.host}/bench/big:v1\n  - ref: {reg.host}/bench/many:v1\n")
            bundle = seed_dir / "bundle.tar"
            run([hb, "build", "--no-agent-kit", str(spec), "-o", str(bundle), "--key", str(seed_dir / "k.key"),
                 "--quiet", "--direct", "--cache-dir", str(seed_dir / "cache"), "--insecure-registry", reg.host])
            shutil.rmtree(seed_dir / "cache")
        result["blobs"] = args.small + 5
        for name, loc in locs:
            r = _measure(hb, bundle, seed_dir / "k.pub", loc, args.rounds)
            result[name] = r
            print(f"\n{name} ({loc}): {int(r['bundle_bytes']) / 1e9:.2f} GB, {args.small + 5} blobs; "  # type: ignore[call-overload]
                  f"sha256sum {r['sha256sum_GBps']} GB/s, python sha256 {r['python_sha256_GBps']} GB/s")
            for k in ("ingest", "ingest_step"):
                if isinstance(x := r.get(k), dict):
                    print(f"  {'agent ingest' if k == 'ingest' else '  ingest step':14s} {x['seconds']:6.2f} s "
                          f"(all {x['all_seconds']})  {x['GBps']:.2f} GB/s = {x['ratio_to_sha256sum']:.2f}x "
                          f"sha256sum, {x['ratio_to_python_sha256']:.2f}x python sha256")
        tm = result["tmpfs"]
        if isinstance(tm, dict) and isinstance(st := tm.get("ingest_step"), dict):
            result["ratio_to_sha256sum"] = st["ratio_to_sha256sum"]
            ok = st["ratio_to_sha256sum"] >= GOAL
            print(f"\ngoal: ingest step on tmpfs >= {GOAL:.0%} of sha256sum: "
                  f"{st['ratio_to_sha256sum']:.0%} ({'met' if ok else 'NOT met'})")
    finally:
        shutil.rmtree(seed_dir, ignore_errors=True)
    save("ingest", result)


if __name__ == "__main__":
    main()
