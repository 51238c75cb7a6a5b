"""Agent benchmarks, in one run on the same ≥ 1.5 GB image:

* ingest: ``hydra-bundle agent ingest BUNDLE`` (verify signature, hash every blob while copying it into the
  store, fsync, publish) against the single-core sha256 line rate on the same file;
* serve: ``skopeo copy --preserve-digests docker://… oci:DIR`` from the agent's embedded registry and from
  docker-registry 2.8 serving the same blobs (three rounds, order alternating, ``sync`` before each; best of
  three), ratio reported.
"""

from __future__ import annotations

import argparse
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

import yaml

from bench.common import gbps, hydra_bundle, machine, python_sha256_rate, run, save, wait_healthy
from hydra_bundle.oci.sitename import site_name
from tests.support.images import push_random_image
from tests.support.registry import Registry, free_port

MB = 1_000_000


def disk_write_rate(path: Path, nbytes: int) -> float:
    """Sequential write + fsync throughput of the work dir's disk (the ingest's other line rate)."""
    buf = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(nbytes >> 20):
            f.write(buf)
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return nbytes / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.6, help="image size (GB)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--pull-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
                    help="where skopeo writes (default /dev/shm: compare the servers, not the local disk)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-agent-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hb = hydra_bundle()
    with Registry() as reg:
        size = int(args.gb * 1e9)
        layers = [size // 2, size // 3, size - size // 2 - size // 3]
        print(f"seeding a {size / MB:.0f} MB image into {reg.host} …", flush=True)
        img = push_random_image(reg.host, "bench/big", "v1", layers, seed=500, tmp_dir=work, level=0)
        subprocess.run([hb, "keygen", str(work / "k")], check=True, capture_output=True)
        spec = work / "spec.yaml"
        spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                        f"metadata: {{name: bench, version: '1', sequence: 1}}\nimages:\n"
                        f"  - ref: {reg.host}/bench/big:v1\n")
        bundle = work / "bench.tar"
        run([hb, "build", "--no-agent-kit", str(spec), "-o", str(bundle), "--key", str(work / "k.key"), "--quiet",
             "--cache-dir", str(work / "cache"), "--insecure-registry", reg.host])
        shutil.rmtree(work / "cache")
        port, mport = free_port(), free_port()
        cfg = {"drop_dir": str(work / "drop"), "state_dir": str(work / "state"),
               "trusted_keys": [str(work / "k.pub")], "registry": {"listen": f"127.0.0.1:{port}", "tls": False},
               "metrics": {"listen": f"127.0.0.1:{mport}"}, "limits": {"min_free_bytes": 0}}
        (work / "agent.yaml").write_text(yaml.safe_dump(cfg))
        sha_rate = python_sha256_rate(bundle, limit=1 << 40)  # also warms the page cache for the ingest
        # The same number of bytes as the ingest writes, before and after it: this VM's disk has a burst
        # budget (the first GB of a write goes several times faster than the next), so a shorter probe
        # overstates what the disk sustains.
        bundle_bytes = bundle.stat().st_size
        before = disk_write_rate(work / "dd.tmp", bundle_bytes)
        os.sync()
        ingest = run([hb, "agent", "ingest", str(bundle), "--config", str(work / "agent.yaml")])
        after = disk_write_rate(work / "dd.tmp", bundle_bytes)
        fsync_rate = (before + after) / 2
        agent = subprocess.Popen([hb, "agent", "run", "--config", str(work / "agent.yaml")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(agent, f"http://127.0.0.1:{mport}/healthz")
            times: dict[str, list[float]] = {"agent": [], "docker-registry": []}
            rss: dict[str, float] = {}
            servers = [("agent", f"127.0.0.1:{port}"), ("docker-registry", reg.host)]
            paths = {"agent": site_name(f"{reg.host}/bench/big").repository, "docker-registry": "bench/big"}
            for rnd in range(3):
                for name, host in servers if rnd % 2 == 0 else servers[::-1]:
                    os.sync()  # no writeback left over from the previous pull
                    out = (args.pull_dir or work) / f"hb-bench-pull-{name}"
                    shutil.rmtree(out, ignore_errors=True)
                    r = run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                             f"docker://{host}/{paths[name]}:v1", f"oci:{out}:v1"])
                    got = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
                    assert got == img.digest, (name, got, img.digest)
                    times[name].append(r.seconds)
                    rss[name] = r.max_rss_mb
                    shutil.rmtree(out)
            # the servers alone: the largest layer to /dev/null with curl (no client-side hashing or writing)
            big_layer = max(img.layers, key=lambda x: x[1])
            raw: dict[str, list[float]] = {"agent": [], "docker-registry": []}
            for rnd in range(3):
                for name, host in servers if rnd % 2 == 0 else servers[::-1]:
                    r = run(["curl", "-sf", "-o", "/dev/null",
                             f"http://{host}/v2/{paths[name]}/blobs/{big_layer[0]}"])
                    raw[name].append(r.seconds)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        # HTTPS (the agent's default): the same blob from the agent with its site-CA leaf and from a
        # docker-registry with TLS, both verified by curl with their CA
        tls_cfg = {**cfg, "registry": {"listen": f"127.0.0.1:{port}"}}
        (work / "agent-tls.yaml").write_text(yaml.safe_dump(tls_cfg))
        run([hb, "agent", "ca", "--config", str(work / "agent-tls.yaml"), "-o", str(work / "ca.crt")])
        with Registry(tls=True) as treg:
            certs = work / "certs.d"
            certs.mkdir(exist_ok=True)
            shutil.copyfile(treg.ca_cert, certs / "ca.crt")
            run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-cert-dir",
                 str(certs), f"docker://{reg.host}/bench/big:v1", f"docker://{treg.host}/bench/big:v1"])
            agent = subprocess.Popen([hb, "agent", "run", "--config", str(work / "agent-tls.yaml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_healthy(agent, f"http://127.0.0.1:{mport}/healthz")
                tls_servers = [("agent", f"127.0.0.1:{port}", work / "ca.crt"),
                               ("docker-registry", treg.host, treg.ca_cert)]
                raw_tls: dict[str, list[float]] = {"agent": [], "docker-registry": []}
                for rnd in range(3):
                    for name, host, ca in tls_servers if rnd % 2 == 0 else tls_servers[::-1]:
                        r = run(["curl", "-sf", "--cacert", str(ca), "-o", "/dev/null",
                                 f"https://{host}/v2/{paths[name]}/blobs/{big_layer[0]}"])
                        raw_tls[name].append(r.seconds)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
    total = img.total_size
    best = {k: min(v) for k, v in times.items()}
    result = {
        "machine": machine(), "image_bytes": total, "bundle_bytes": bundle_bytes,
        "ingest": {"seconds": round(ingest.seconds, 2), "GBps": round(gbps(bundle_bytes, ingest.seconds), 3),
                   "max_rss_mb": round(ingest.max_rss_mb, 1),
                   "fraction_of_sha256": round(bundle_bytes / ingest.seconds / sha_rate, 2),
                   "fraction_of_disk_write": round(bundle_bytes / ingest.seconds / fsync_rate, 2)},
        "python_sha256_GBps": round(sha_rate / 1e9, 3),
        "disk_write_fsync_GBps": round(fsync_rate / 1e9, 3),
        "disk_write_fsync_before_after_GBps": [round(before / 1e9, 3), round(after / 1e9, 3)],
        "skopeo_pull_from_agent": {"seconds": [round(t, 2) for t in times["agent"]],
                                   "GBps": round(gbps(total, best["agent"]), 3)},
        "skopeo_pull_from_docker_registry": {"seconds": [round(t, 2) for t in times["docker-registry"]],
                                             "GBps": round(gbps(total, best["docker-registry"]), 3)},
        "pull_dir": str(args.pull_dir or work),
        "curl_blob_GBps": {k: round(big_layer[1] / min(v) / 1e9, 3) for k, v in raw.items()},
        "curl_ratio_agent_vs_docker_registry": round(min(raw["docker-registry"]) / min(raw["agent"]), 2),
        "curl_tls_blob_GBps": {k: round(big_layer[1] / min(v) / 1e9, 3) for k, v in raw_tls.items()},
        "curl_tls_ratio_agent_vs_docker_registry": round(min(raw_tls["docker-registry"]) / min(raw_tls["agent"]), 2),
        "serve_ratio_agent_vs_docker_registry": round(best["docker-registry"] / best["agent"], 2),
    }
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    save("agent_serve", result)
    print(json.dumps(result, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
