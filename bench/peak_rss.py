"""Peak RSS for a ~2 GB bundle (default) or a ~20 GB one (``--gb 20``); goal: flat, < 150 MB.

The content is generated on the fly and never stored twice: a small HTTP server in this process (a thread on
a free loopback port, GET/HEAD/Range) serves deterministic, incompressible bytes (AES-128-CTR keystream keyed
by the file's name, so no two MiB repeat), and the spec fetches it as ``files:`` and ``models:`` entries
(pinned by sha256 and size, computed here by generating each stream once: CPU only), plus one small image
from a local docker-registry so image paths run too. On the same bundle, one after the other:

* ``hydra-bundle build`` (signed; ``--direct`` when the build has it, else a fresh ``--cache-dir`` on the
  same filesystem, removed right after the build — the disk peak is reported);
* ``hydra-bundle verify BUNDLE --pub``;
* ``hydra-bundle agent ingest BUNDLE`` into a fresh store (the bundle is removed afterwards);
* serving: ``curl`` of the biggest file from the agent's file server and of the same blob from its registry,
  with the ``agent run`` process's peak RSS (VmHWM).

The same cycle first runs at a small size (``--small-gb``, 0.2) so "flat" is shown: RSS at the big size
vs RSS at the small one, per command.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bench.common import Run, gbps, hydra_bundle, machine, run, save, wait_healthy
from tests.support.images import push_random_image
from tests.support.registry import Registry, free_port

MB = 1_000_000
GOAL_MB = 150
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


# ---------------------------------------------------------------- generated content

def _key(name: str) -> bytes:
    return hashlib.sha256(f"hydra-bundle/bench/peak_rss/{name}".encode()).digest()[:16]


def stream(name: str, offset: int, length: int) -> Iterator[memoryview]:
    """Bytes [offset, offset+length) of the content named ``name``: AES-128-CTR keystream (the counter block
    is the 16-byte block number, so any offset is reachable without generating what comes before it).
    Yields views of one reused buffer: consume each before asking for the next."""
    enc = Cipher(algorithms.AES(_key(name)), modes.CTR((offset // 16).to_bytes(16, "big"))).encryptor()
    if offset % 16:
        enc.update(bytes(offset % 16))
    buf = bytearray(CHUNK + 16)
    view = memoryview(buf)
    zeros = memoryview(_ZEROS)
    left = length
    while left:
        n = min(CHUNK, left)
        k = enc.update_into(zeros[:n], buf)
        yield view[:k]
        left -= k


def digest_of(name: str, size: int) -> str:
    h = hashlib.sha256()
    for chunk in stream(name, 0, size):
        h.update(chunk)
    return h.hexdigest()


class ContentServer(ThreadingHTTPServer):
    """Loopback HTTP server of generated content: ``items`` maps URL path → (content name, size)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ContentHandler)
        self.items: dict[str, tuple[str, int]] = {}
        self.served = 0  # body bytes sent (the build should fetch each byte once)
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ContentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.thread.join(timeout=5)
        self.server_close()

    def count(self, n: int) -> None:
        with self._lock:
            self.served += n


class _ContentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ContentServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        rng = self.headers.get("Range")
        self.server.requests.append((self.command, path, rng))
        item = self.server.items.get(path)
        if item is None:
            self._empty(404)
            return
        name, size = item
        start, end, status = 0, size - 1, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", (rng or "").strip())
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or end < start:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        try:
            for chunk in stream(name, start, end - start + 1):
                self.wfile.write(chunk)
                self.server.count(len(chunk))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# ---------------------------------------------------------------- disk usage of the work dir

def _du(path: Path) -> int:
    """Allocated bytes under ``path`` (st_blocks), tolerant of files vanishing while we walk."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        total += _du(Path(e.path))
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return total


class DiskPeak:
    """Samples the work dir's allocated size (twice a second) and keeps the peak since the last ``reset``."""

    def __init__(self, path: Path):
        self.path = path
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _du(self.path))
            self._stop.wait(0.5)

    def reset(self) -> None:
        self.peak = _du(self.path)

    def take(self) -> int:
        self.peak = max(self.peak, _du(self.path))
        return self.peak

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- one cycle at one size

def layout(total: int, shards: int) -> tuple[int, list[int]]:
    """One ``files:`` entry of a tenth of the total, the rest as model shards (equal, the last one smaller)."""
    file_size = total // 10
    per = -(-(total - file_size) // shards)
    sizes = [per] * (shards - 1)
    sizes.append(total - file_size - sum(sizes))
    return file_size, sizes


def proc_status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) / 1024
    return out


def step(r: Run, nbytes: int, **extra: object) -> dict[str, object]:
    return {"seconds": round(r.seconds, 2), "GBps": round(gbps(nbytes, r.seconds), 3),
            "max_rss_mb": round(r.max_rss_mb, 1), "under_goal": r.max_rss_mb < GOAL_MB, **extra}


def cycle(hb: str, direct: bool, reg: Registry, image_ref: str, srv: ContentServer, gb: float, shards: int,
          work: Path, key: Path, jobs: int) -> dict[str, object]:
    total = int(gb * 1e9)
    tag = f"{gb:g}gb"
    file_size, shard_sizes = layout(total, shards)
    # what the server offers (content names differ per size: the small run's blobs are not prefixes of the big's)
    file_path = f"/files/dataset-{tag}.bin"
    srv.items[file_path] = (f"dataset-{tag}", file_size)
    shard_names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    for n, s in zip(shard_names, shard_sizes, strict=True):
        srv.items[f"/models/llm-{tag}/{n}"] = (f"llm-{tag}/{n}", s)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        pins = list(pool.map(lambda it: digest_of(*it),
                             [srv.items[file_path], *(srv.items[f"/models/llm-{tag}/{n}"] for n in shard_names)]))
    pin_secs = time.perf_counter() - t0
    spec = {
        "apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
        "metadata": {"name": "bench-rss", "version": tag, "sequence": 1},
        "images": [{"ref": image_ref}],
        "files": [{"name": "dataset", "url": srv.url + file_path, "sha256": pins[0], "size": file_size}],
        "models": [{"name": "llm", "base_url": f"{srv.url}/models/llm-{tag}/",
                    "files": [{"path": n, "sha256": p, "size": s}
                              for n, p, s in zip(shard_names, pins[1:], shard_sizes, strict=True)]}],
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    bundle, cache, state = work / "bench.tar", work / "cache", work / "agent"
    content = file_size + sum(shard_sizes)
    print(f"-- {gb:g} GB: {1 + len(shard_sizes)} blobs of up to {max(file_size, *shard_sizes) / MB:.0f} MB "
          f"(pins computed in {pin_secs:.1f} s), work dir {work}", flush=True)
    res: dict[str, object] = {"content_bytes": content, "largest_blob_bytes": max(file_size, *shard_sizes),
                              "blobs_generated": 1 + len(shard_sizes), "pin_seconds": round(pin_secs, 2)}
    with DiskPeak(work) as disk:
        # build
        srv.served = 0
        srv.requests.clear()
        os.sync()
        cmd = [hb, "build", "--no-agent-kit", str(work / "spec.yaml"), "-o", str(bundle), "--key", str(key), "--quiet",
               "--cache-dir", str(cache), "--insecure-registry", reg.host, "--jobs", str(jobs)]
        if direct:
            cmd.append("--direct")
        disk.reset()
        r = run(cmd)
        build_disk = disk.take()
        cache_bytes = _du(cache)
        bundle_bytes = bundle.stat().st_size
        res["bundle_bytes"] = bundle_bytes
        res["build"] = step(r, bundle_bytes, direct=direct, disk_peak_gb=round(build_disk / 1e9, 2),
                            cache_left_gb=round(cache_bytes / 1e9, 2),
                            served_by_source_gb=round(srv.served / 1e9, 3),
                            source_requests={"GET": sum(q[0] == "GET" for q in srv.requests),
                                             "HEAD": sum(q[0] == "HEAD" for q in srv.requests),
                                             "range": sum(q[2] is not None for q in srv.requests)})
        shutil.rmtree(cache, ignore_errors=True)  # the cache would keep a second copy: gone as soon as possible
        print(f"   build  {r.seconds:7.2f} s  peak RSS {r.max_rss_mb:5.0f} MB  disk peak {build_disk / 1e9:.2f} GB"
              f" (cache left {cache_bytes / 1e9:.2f} GB)", flush=True)
        # verify
        os.sync()
        r = run([hb, "verify", str(bundle), "--pub", str(key.with_suffix(".pub")), "--quiet"])
        res["verify"] = step(r, bundle_bytes)
        print(f"   verify {r.seconds:7.2f} s  peak RSS {r.max_rss_mb:5.0f} MB", flush=True)
        # ingest into a fresh store
        ports = {"registry": free_port(), "files": free_port(), "metrics": free_port()}
        cfg = {"drop_dir": str(state / "drop"), "state_dir": str(state / "state"),
               "trusted_keys": [str(key.with_suffix(".pub"))],
               **{k: {"listen": f"127.0.0.1:{p}"} for k, p in ports.items()},
               "registry": {"listen": f"127.0.0.1:{ports['registry']}", "tls": False},  # curl below: plain HTTP
               "limits": {"min_free_bytes": 0}}
        state.mkdir(parents=True, exist_ok=True)
        (state / "agent.yaml").write_text(yaml.safe_dump(cfg))
        os.sync()
        disk.reset()
        r = run([hb, "agent", "ingest", str(bundle), "--config", str(state / "agent.yaml")])
        ingest_disk = disk.take()
        res["ingest"] = step(r, bundle_bytes, disk_peak_gb=round(ingest_disk / 1e9, 2))
        print(f"   ingest {r.seconds:7.2f} s  peak RSS {r.max_rss_mb:5.0f} MB  disk peak {ingest_disk / 1e9:.2f} GB",
              flush=True)
        bundle.unlink()  # the store holds it now
        os.sync()
        # serve: the biggest file from the file server and the same blob from the registry, agent's VmHWM
        big = max(range(len(shard_sizes)), key=lambda i: shard_sizes[i])
        big_size, big_digest = shard_sizes[big], f"sha256:{pins[1 + big]}"
        log = state / "agent.log"
        with open(log, "wb") as lf:
            agent = subprocess.Popen([hb, "agent", "run", "--config", str(state / "agent.yaml")],
                                     stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT)
        try:
            wait_healthy(agent, f"http://127.0.0.1:{ports['metrics']}/healthz", log)
            idle = proc_status(agent.pid)
            urls = {"files": f"http://127.0.0.1:{ports['files']}/model/llm/{shard_names[big]}",
                    "registry": f"http://127.0.0.1:{ports['registry']}/v2/hydra-bundle/models/llm/blobs/{big_digest}"}
            serve: dict[str, object] = {"blob_bytes": big_size, "agent_idle_rss_mb": round(idle["VmRSS"], 1)}
            for what, url in urls.items():
                r = run(["curl", "-sf", "-o", "/dev/null", url])
                got = subprocess.run(["curl", "-sfI", url], capture_output=True, text=True).stdout
                length = re.search(r"(?im)^content-length:\s*(\d+)", got)
                if not length or int(length.group(1)) != big_size:
                    raise SystemExit(f"{url}: unexpected HEAD answer:\n{got}")
                serve[f"curl_{what}"] = {"seconds": round(r.seconds, 2), "GBps": round(gbps(big_size, r.seconds), 3),
                                         "curl_max_rss_mb": round(r.max_rss_mb, 1)}
            st = proc_status(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        serve["max_rss_mb"] = round(st["VmHWM"], 1)
        serve["under_goal"] = st["VmHWM"] < GOAL_MB
        res["serve"] = serve
        print(f"   serve  files {serve['curl_files']['GBps']:.2f} GB/s, registry {serve['curl_registry']['GBps']:.2f}"
              f" GB/s  agent run peak RSS {st['VmHWM']:5.0f} MB", flush=True)
        res["store_bytes"] = _du(state / "state" / "store")
        res["disk_peak_gb"] = round(disk.take() / 1e9, 2)
    shutil.rmtree(work, ignore_errors=True)
    for p in [file_path, *(f"/models/llm-{tag}/{n}" for n in shard_names)]:
        srv.items.pop(p, None)
    return res


# ---------------------------------------------------------------- main

def _commit() -> str:
    """The source measured (``+dirty`` when the working tree differs from the commit)."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout
    except OSError:  # no git (an unpacked release)
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--gb", type=float, default=2.0, help="bundle size (GB); --gb 20 for the big run")
    ap.add_argument("--small-gb", type=float, default=0.2, help="the reference size for 'flat' (0: skip)")
    ap.add_argument("--shards", type=int, default=6, help="model shards (plus one file of a tenth of the size)")
    ap.add_argument("--jobs", type=int, default=4, help="build --jobs")
    ap.add_argument("--cache", choices=["auto", "direct", "cache"], default="auto",
                    help="build mode: --direct when the build has it (auto), or force one")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir under /var/tmp (a disk)")
    args = ap.parse_args()

    # this interpreter's own entry point first (a pyenv shim earlier on PATH would run another Python)
    hb = hydra_bundle()
    has_direct = "--direct" in subprocess.run([hb, "build", "--no-agent-kit",
                                               "--help"], capture_output=True, text=True).stdout
    if args.cache == "direct" and not has_direct:
        raise SystemExit("hydra-bundle build has no --direct option")
    direct = has_direct and args.cache != "cache"
    base = Path(args.workdir or tempfile.mkdtemp(prefix="hb-peak-rss-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    # bundle + cache (no --direct) during the build, bundle + store during the ingest
    need = int(args.gb * 1e9 * 2.05) + (1 << 30)
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(f"{base}: {free / 1e9:.1f} GB free, this run needs about {need / 1e9:.1f} GB")
    sizes = [args.small_gb, args.gb] if 0 < args.small_gb < args.gb else [args.gb]
    runs: dict[str, dict[str, object]] = {}
    try:
        subprocess.run([hb, "keygen", str(base / "k")], check=True, capture_output=True)
        with Registry() as reg, ContentServer() as srv:
            img = push_random_image(reg.host, "bench/small", "v1", [3 * MB, MB], seed=700, tmp_dir=base, level=0)
            image_ref = f"{reg.host}/bench/small:v1"
            print(f"content server {srv.url}, image {image_ref} ({img.total_size / MB:.1f} MB), "
                  f"build {'--direct' if direct else 'with a cache (no --direct in this build)'}", flush=True)
            for gb in sizes:
                runs[f"{gb:g}"] = cycle(hb, direct, reg, image_ref, srv, gb, args.shards, base / f"run-{gb:g}",
                                        base / "k.key", args.jobs)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)

    cmds = ("build", "verify", "ingest", "serve")
    big = runs[f"{args.gb:g}"]
    small = runs[f"{args.small_gb:g}"] if len(sizes) == 2 else None
    flat = {}
    if small is not None:
        flat = {c: round(big[c]["max_rss_mb"] / small[c]["max_rss_mb"], 2) for c in cmds}  # type: ignore[index]
    result = {
        "machine": machine(), "commit": _commit(), "goal_mb": GOAL_MB, "gb": args.gb,
        "small_gb": args.small_gb if small else None,
        "build_mode": "direct" if direct else "cache", "jobs": args.jobs, "runs": runs,
        "rss_ratio_big_vs_small": flat,
        "all_under_goal": all(r[c]["under_goal"] for r in runs.values() for c in cmds),  # type: ignore[index]
    }
    save("peak_rss", result)

    print(f"\npeak RSS per command ({result['machine']['cpus']} cpus; goal < {GOAL_MB} MB, flat; "
          f"build {'--direct' if direct else 'with cache'})")
    print(f"{'size':>8}  {'command':<7} {'seconds':>8} {'GB/s':>7} {'peak RSS MB':>12}  < {GOAL_MB}")
    for gb, r in runs.items():
        for c in cmds:
            s = r[c]  # type: ignore[index]
            secs = s["seconds"] if c != "serve" else s["curl_files"]["seconds"]
            rate = s["GBps"] if c != "serve" else s["curl_files"]["GBps"]
            print(f"{gb + ' GB':>8}  {c:<7} {secs:8.2f} {rate:7.3f} {s['max_rss_mb']:12.1f}  "
                  f"{'yes' if s['under_goal'] else 'NO'}")
    if flat:
        print("RSS ratio " + f"{args.gb:g} GB / {args.small_gb:g} GB: "
              + ", ".join(f"{c} {v:.2f}x" for c, v in flat.items()))
    print(f"disk peak at {args.gb:g} GB: build {big['build']['disk_peak_gb']} GB, "  # type: ignore[index]
          f"ingest {big['ingest']['disk_peak_gb']} GB; source served {big['build']['served_by_source_gb']} GB "  # type: ignore[index]
          f"for {big['content_bytes'] / 1e9:.2f} GB of content")  # type: ignore[operator]
    print("all under goal:", result["all_under_goal"])


if __name__ == "__main__":
    main()
