"""N parallel pulls of one image against one agent, two agents (clients split between them, as a load balancer
or mirror fallback spreads them) and docker-registry 2.8 serving the same blobs, in one run.

Each client is one ``curl`` process fetching the manifest and every blob over one kept-alive connection to
``/dev/null`` (the servers are measured, not the clients' disks); all N start together and the wall time runs
until the last one ends. Throughput = N × image bytes / wall time. Every target is checked first with a full
pull whose blobs are sha256-verified (which also puts the blobs in the page cache, as on a warm server). Rounds
alternate the order of the targets; the best round counts. Both agents run on this one machine, so they share
its cores: the figure says how the serving path scales with connections, not what a second host adds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import yaml

from bench.common import gbps, hydra_bundle, machine, run, save, wait_healthy
from hydra_bundle.oci.sitename import site_name
from tests.support.images import push_random_image
from tests.support.registry import Registry, free_port

MB = 1_000_000
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def _urls(host: str, repo: str, digests: list[str]) -> list[str]:
    return [f"http://{host}/v2/{repo}/manifests/v1", *(f"http://{host}/v2/{repo}/blobs/{d}" for d in digests)]


def verify(host: str, repo: str, manifest_digest: str, blobs: list[tuple[str, int]]) -> None:
    """One full pull with every digest checked: the target serves exactly the image."""
    with httpx.Client(timeout=120) as c:
        r = c.get(f"http://{host}/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT})
        r.raise_for_status()
        assert "sha256:" + hashlib.sha256(r.content).hexdigest() == manifest_digest, host
        for digest, size in blobs:
            h = hashlib.sha256()
            n = 0
            with c.stream("GET", f"http://{host}/v2/{repo}/blobs/{digest}") as s:
                s.raise_for_status()
                for chunk in s.iter_bytes(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
            assert n == size and "sha256:" + h.hexdigest() == digest, (host, digest)


def parallel_pulls(targets: list[tuple[str, str]], clients: int, digests: list[str], expect: int) -> float:
    """``clients`` curl processes at once, client i pulling from ``targets[i % len(targets)]``: wall seconds."""
    procs = []
    t0 = time.perf_counter()
    for i in range(clients):
        host, repo = targets[i % len(targets)]
        args = ["curl", "-sf", "-H", f"Accept: {ACCEPT}", "-w", "%{size_download}\\n"]
        for u in _urls(host, repo, digests):
            args += [u, "-o", "/dev/null"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=600) for p in procs]
    dt = time.perf_counter() - t0
    for p, (out, err) in zip(procs, outs, strict=True):
        got = sum(int(x) for x in out.split())
        if p.returncode != 0 or got != expect:
            raise SystemExit(f"a client failed (exit {p.returncode}, {got} of {expect} bytes): {err.decode()[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200, help="image size (MB), split over four layers")
    ap.add_argument("--clients", default="8,32", help="comma-separated numbers of parallel clients")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    counts = [int(x) for x in args.clients.split(",") if x.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-multi-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hb = hydra_bundle()
    load_before = os.getloadavg()
    agents: list[subprocess.Popen[bytes]] = []
    with Registry() as reg:
        size = int(args.mb * MB)
        layers = [size // 4] * 3 + [size - 3 * (size // 4)]
        print(f"seeding a {size / MB:.0f} MB image into {reg.host} …", flush=True)
        img = push_random_image(reg.host, "bench/multi", "v1", layers, seed=610, tmp_dir=work, level=0)
        subprocess.run([hb, "keygen", str(work / "k")], check=True, capture_output=True)
        spec = work / "spec.yaml"
        spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                        "metadata: {name: multi, version: '1', sequence: 1}\nimages:\n"
                        f"  - ref: {reg.host}/bench/multi:v1\n")
        bundle = work / "multi.tar"
        run([hb, "build", "--no-agent-kit", str(spec), "-o", str(bundle), "--key", str(work / "k.key"), "--quiet",
             "--cache-dir", str(work / "cache"), "--insecure-registry", reg.host])
        shutil.rmtree(work / "cache")
        ports = []
        try:
            for name in ("a", "b"):   # each agent ingests (verifies) the bundle itself, into its own store
                port, mport = free_port(), free_port()
                cfg = {"drop_dir": str(work / name / "drop"), "state_dir": str(work / name / "state"),
                       "trusted_keys": [str(work / "k.pub")],
                       "registry": {"listen": f"127.0.0.1:{port}", "tls": False},
                       "metrics": {"listen": f"127.0.0.1:{mport}"}, "limits": {"min_free_bytes": 0}}
                conf = work / f"agent-{name}.yaml"
                conf.write_text(yaml.safe_dump(cfg))
                run([hb, "agent", "ingest", str(bundle), "--config", str(conf)])
                agents.append(subprocess.Popen([hb, "agent", "run", "--config", str(conf)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                wait_healthy(agents[-1], f"http://127.0.0.1:{mport}/healthz")
                ports.append(port)
            bundle.unlink()
            repo = site_name(f"{reg.host}/bench/multi").repository
            a, b = (f"127.0.0.1:{ports[0]}", repo), (f"127.0.0.1:{ports[1]}", repo)
            for host in (a[0], b[0]):
                assert httpx.get(f"http://{host}/healthz").json()["ready"] is True
            targets: dict[str, list[tuple[str, str]]] = {"one_agent": [a], "two_agents": [a, b],
                                                         "docker_registry": [(reg.host, "bench/multi")]}
            blobs = [(d, s) for d, s, _ in img.layers]
            config_digest = "sha256:" + hashlib.sha256(img.config).hexdigest()
            blobs.append((config_digest, len(img.config)))
            for host, r in [a, b, (reg.host, "bench/multi")]:
                verify(host, r, img.digest, blobs)
            digests = [d for d, _ in blobs]
            expect = img.total_size
            seconds: dict[str, dict[int, list[float]]] = {k: {n: [] for n in counts} for k in targets}
            order = list(targets)
            for rnd in range(args.rounds):
                for n in counts:
                    for name in order if rnd % 2 == 0 else order[::-1]:
                        seconds[name][n].append(parallel_pulls(targets[name], n, digests, expect))
                        print(f"round {rnd + 1}: {n:>3} clients, {name:<15} {seconds[name][n][-1]:.2f} s", flush=True)
        finally:
            for p in agents:
                p.send_signal(signal.SIGTERM)
            for p in agents:
                p.wait(timeout=30)
    best = {k: {n: min(v) for n, v in per.items()} for k, per in seconds.items()}
    rate = {k: {n: gbps(n * expect, s) for n, s in per.items()} for k, per in best.items()}
    result = {
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "both agents, docker-registry and every client share this machine's cores"},
        "image_bytes": expect, "clients": counts, "rounds": args.rounds,
        "seconds": {k: {str(n): [round(x, 3) for x in v] for n, v in per.items()} for k, per in seconds.items()},
        "GBps": {k: {str(n): round(v, 3) for n, v in per.items()} for k, per in rate.items()},
        "ratio_two_agents_vs_one": {str(n): round(rate["two_agents"][n] / rate["one_agent"][n], 2) for n in counts},
        "ratio_one_agent_vs_docker_registry": {str(n): round(rate["one_agent"][n] / rate["docker_registry"][n], 2)
                                               for n in counts},
        "ratio_two_agents_vs_docker_registry": {str(n): round(rate["two_agents"][n] / rate["docker_registry"][n], 2)
                                                for n in counts},
    }
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    save("multi_agent", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
