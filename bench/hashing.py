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

from bench.common import hydra_bundle, machine, python_sha256_rate, run, save, sha256sum_rate
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


def _cycle(hb: str, work: Path, host: str, refs: list[str], tag: str, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` wall seconds of build --direct, verify, agent ingest (and its ingest step) for a
    bundle of ``refs``; returns them with the bundle size."""
    spec = work / f"{tag}.yaml"
    spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                    f"metadata: {{name: hashing-{tag}, version: '1', sequence: 1}}\nimages:\n"
                    + "".join(f"  - ref: {r}\n" for r in refs))
    bundle = work / f"{tag}.tar"
    out: dict[str, float] = {}
    builds = []
    for _ in range(rounds):
        bundle.unlink(missing_ok=True)
        shutil.rmtree(work / "cache", ignore_errors=True)
        builds.append(run([hb, "build", "--no-agent-kit",
                           str(spec), "-o", str(bundle), "--key", str(work / "k.key"), "--quiet",
                           "--direct", "--cache-dir", str(work / "cache"), "--insecure-registry", host]).seconds)
    out["build"] = min(builds)
    out["verify"] = min(run([hb, "verify", str(bundle), "--pub", str(work / "k.pub"), "-q"]).seconds
                        for _ in range(rounds))
    cfg = work / "agent.yaml"
    cmd, step = [], []
    for _ in range(rounds):
        shutil.rmtree(work / "state", ignore_errors=True)
        cfg.write_text(yaml.safe_dump({
            "drop_dir": str(work / "drop"), "state_dir": str(work / "state"),
            "trusted_keys": [str(work / "k.pub")], "registry": {"listen": f"127.0.0.1:{free_port()}"},
            "limits": {"min_free_bytes": 0}}))
        t0 = time.perf_counter()
        p = subprocess.run([hb, "agent", "ingest", str(bundle), "--config", str(cfg)], capture_output=True, text=True)
        cmd.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"ingest failed: {p.stderr[-2000:]}")
        st = _ingest_step_seconds(p.stderr)
        if st:
            step.append(st)
    out["ingest"] = min(cmd)
    if step:
        out["ingest_step"] = min(step)
    out["bytes"] = bundle.stat().st_size
    return out


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
            per = int(args.gb * 1e9 / 2)
            sizes = [per // 2, per // 3, per - per // 2 - per // 3]
            print(f"seeding 2 images x {per / MB:.0f} MB and a 1 MB one into {reg.host} (tmpfs) …", flush=True)
            refs = []
            for i in range(2):
                push_random_image(reg.host, f"bench/h{i}", "v1", sizes, seed=300 + i, tmp_dir=work, level=0)
                refs.append(f"{reg.host}/bench/h{i}:v1")
            push_random_image(reg.host, "bench/tiny", "v1", [1_000_000], seed=399, tmp_dir=work, level=0)
            subprocess.run([hb, "keygen", str(work / "k")], check=True, capture_output=True)
            small = _cycle(hb, work, reg.host, [f"{reg.host}/bench/tiny:v1"], "small", args.rounds)
            big = _cycle(hb, work, reg.host, refs, "big", args.rounds)
        bundle = work / "big.tar"
        sha = max(python_sha256_rate(bundle, limit=1 << 40) for _ in range(args.rounds))
        coreutils = sha256sum_rate(bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    size = big["bytes"]
    extra = big["bytes"] - small["bytes"]
    result: dict[str, object] = {
        "machine": machine(), "storage": "tmpfs (/dev/shm)", "bundle_bytes": size, "rounds": args.rounds,
        "python_sha256_GBps": round(sha / 1e9, 3), "coreutils_sha256sum_GBps": round(coreutils / 1e9, 3),
        "goal_fraction": GOAL,
    }
    print(f"\n{size / 1e9:.2f} GB bundle on tmpfs; python sha256 (one core) {sha / 1e9:.2f} GB/s, "
          f"sha256sum {coreutils / 1e9:.2f} GB/s; best of {args.rounds}; goal >= {GOAL:.0%} of sha256")
    print("  (whole command: start-up included; per byte: (big - 1 MB bundle) / (time big - time small))")
    for name in ("build", "verify", "ingest", "ingest_step"):
        if name not in big:
            continue
        whole = size / big[name]
        marginal = extra / max(big[name] - small.get(name, 0.0), 1e-6)
        result[name] = {"seconds": round(big[name], 3), "small_seconds": round(small.get(name, 0.0), 3),
                        "GBps": round(whole / 1e9, 3), "fraction_of_sha256": round(whole / sha, 2),
                        "per_byte_GBps": round(marginal / 1e9, 3),
                        "per_byte_fraction_of_sha256": round(marginal / sha, 2),
                        "ratio_to_sha256sum": round(whole / coreutils, 2)}
        label = {"build": "build --direct", "ingest": "agent ingest", "ingest_step": "  ingest step"}.get(name, name)
        print(f"  {label:15s} {big[name]:6.2f} s (1 MB: {small.get(name, 0):.2f} s)  whole {whole / 1e9:.2f} GB/s "
              f"= {whole / sha:.0%}   per byte {marginal / 1e9:.2f} GB/s = {marginal / sha:.0%} of sha256, "
              f"whole = {whole / coreutils:.2f}x sha256sum")
    save("hashing", result)


if __name__ == "__main__":
    main()
