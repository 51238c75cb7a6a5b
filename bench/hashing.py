"""Hashing efficiency: build and ingest throughput as a fraction of single-core sha256 on the same bytes.

Every byte a bundle carries is hashed once by ``build`` (while it is downloaded) and once by the agent's
ingest (while it is copied into the store). This benchmark takes the disk out (registry storage, bundle and
store all in /dev/shm) so what is left is the pipeline's own cost per byte, and compares it with the rate at
which one core hashes the same bundle file with Python's hashlib (and with coreutils ``sha256sum``):

  * ``hydra-bundle build --direct`` from a local docker-registry (network receive + hash + write);
  * ``hydra-bundle verify`` (read + hash: the floor of the reader);
  * ``hydra-bundle agent ingest`` (signature, read + hash + write into the store + publish), whole command and
    the ingest step alone (from the agent's log timestamps).

On the disk these commands are bound by the disk instead; see build_vs_skopeo.py and agent_serve.py.
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

from bench.common import gbps, hydra_bundle, machine, python_sha256_rate, run, save, sha256sum_rate
from tests.support.images import push_random_image
from tests.support.registry import Registry, free_port

MB = 1_000_000
GOAL = 0.85
_LOG = re.compile(r'time=(\S+) .*msg="step (started|done)".* step=ingest')


def _ingest_step_seconds(log: str) -> float | None:
    """Duration of the ingest step from the agent's structured log (millisecond timestamps)."""
    t: dict[str, datetime] = {}
    for m in _LOG.finditer(log):
        t[m.group(2)] = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
    if "started" in t and "done" in t:
        return (t["done"] - t["started"]).total_seconds()
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.6, help="image data (GB); needs ~3x this in /dev/shm")
    ap.add_argument("--rounds", type=int, default=2, help="best of N for each command")
    args = ap.parse_args()
    shm = Path("/dev/shm")
    need = 3.2 * args.gb * 1e9
    if shutil.disk_usage(shm).free < need:
        raise SystemExit(f"/dev/shm needs {need / 1e9:.1f} GB free")
    os.environ["TMPDIR"] = str(shm)  # the registry's storage too
    work = Path(tempfile.mkdtemp(prefix="hb-hash-", dir=shm))
    hb = hydra_bundle()
    try:
        with Registry() as reg:
            n_img = 2
            per = int(args.gb * 1e9 / n_img)
            sizes = [per // 2, per // 3, per - per // 2 - per // 3]
            print(f"seeding {n_img} images x {per / MB:.0f} MB into {reg.host} (tmpfs) …", flush=True)
            total = 0
            refs = []
            for i in range(n_img):
                img = push_random_image(reg.host, f"bench/h{i}", "v1", sizes, seed=300 + i, tmp_dir=work, level=0)
                total += img.total_size
                refs.append(f"{reg.host}/bench/h{i}:v1")
            subprocess.run([hb, "keygen", str(work / "k")], check=True, capture_output=True)
            spec = work / "spec.yaml"
            spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                            "metadata: {name: hashing, version: '1', sequence: 1}\nimages:\n"
                            + "".join(f"  - ref: {r}\n" for r in refs))
            bundle = work / "b.tar"
            builds = []
            for _ in range(args.rounds):
                bundle.unlink(missing_ok=True)
                shutil.rmtree(work / "cache", ignore_errors=True)
                builds.append(run([hb, "build", str(spec), "-o", str(bundle), "--key", str(work / "k.key"),
                                   "--quiet", "--direct", "--cache-dir", str(work / "cache"),
                                   "--insecure-registry", reg.host]))
        size = bundle.stat().st_size
        sha = max(python_sha256_rate(bundle, limit=1 << 40) for _ in range(args.rounds))
        coreutils = sha256sum_rate(bundle)
        verifies = [run([hb, "verify", str(bundle), "--pub", str(work / "k.pub"), "-q"]) for _ in range(args.rounds)]
        cfg = work / "agent.yaml"
        ingests: list[tuple[float, float | None, float]] = []
        for _ in range(args.rounds):
            shutil.rmtree(work / "state", ignore_errors=True)
            cfg.write_text(yaml.safe_dump({
                "drop_dir": str(work / "drop"), "state_dir": str(work / "state"),
                "trusted_keys": [str(work / "k.pub")], "registry": {"listen": f"127.0.0.1:{free_port()}"},
                "limits": {"min_free_bytes": 0}}))
            t0 = time.perf_counter()
            p = subprocess.run([hb, "agent", "ingest", str(bundle), "--config", str(cfg)],
                               capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"ingest failed: {p.stderr[-2000:]}")
            ingests.append((dt, _ingest_step_seconds(p.stderr), 0.0))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    b = min(builds, key=lambda r: r.seconds)
    v = min(verifies, key=lambda r: r.seconds)
    ing_cmd = min(x[0] for x in ingests)
    steps = [x[1] for x in ingests if x[1]]
    ing_step = min(steps) if steps else None

    def frac(nbytes: float, secs: float) -> float:
        return round(nbytes / secs / sha, 2)

    result = {
        "machine": machine(), "storage": "tmpfs (/dev/shm)", "image_bytes": total, "bundle_bytes": size,
        "rounds": args.rounds, "python_sha256_GBps": round(sha / 1e9, 3),
        "coreutils_sha256sum_GBps": round(coreutils / 1e9, 3), "goal_fraction": GOAL,
        "build_direct": {"seconds": round(b.seconds, 2), "GBps": round(gbps(total, b.seconds), 3),
                         "fraction_of_sha256": frac(total, b.seconds), "max_rss_mb": round(b.max_rss_mb, 1)},
        "verify": {"seconds": round(v.seconds, 2), "GBps": round(gbps(size, v.seconds), 3),
                   "fraction_of_sha256": frac(size, v.seconds), "max_rss_mb": round(v.max_rss_mb, 1)},
        "ingest_command": {"seconds": round(ing_cmd, 2), "GBps": round(gbps(size, ing_cmd), 3),
                           "fraction_of_sha256": frac(size, ing_cmd)},
        "ingest_step": ({"seconds": round(ing_step, 3), "GBps": round(gbps(size, ing_step), 3),
                         "fraction_of_sha256": frac(size, ing_step)} if ing_step else None),
    }
    save("hashing", result)
    print(f"\n{size / 1e9:.2f} GB bundle on tmpfs; python sha256 (one core) {sha / 1e9:.2f} GB/s, "
          f"sha256sum {coreutils / 1e9:.2f} GB/s; best of {args.rounds}; goal >= {GOAL:.0%} of sha256")
    for name in ("build_direct", "verify", "ingest_command", "ingest_step"):
        r = result[name]
        if isinstance(r, dict):
            print(f"  {name:15s} {r['seconds']:7.2f} s  {r['GBps']:.3f} GB/s  = {r['fraction_of_sha256']:.0%} "
                  "of single-core sha256")


if __name__ == "__main__":
    main()
