"""Build throughput vs skopeo, in one run on the same images.

Seeds a local docker-registry with ≥ 1.5 GB of images (generated, incompressible layers), then:
  * ``hydra-bundle build`` (the default: big blobs downloaded straight into the bundle, fresh cache each time)
  * ``hydra-bundle build --split 256MB`` (the same path, into parts; segment digests taken during the download)
  * ``hydra-bundle build --cache-blobs`` (blobs into the cache, then copied into the bundle: two writes per byte)
  * ``skopeo copy --preserve-digests docker://… oci:DIR:tag`` for the same images (fresh dir)
and reports throughput, the ratio, peak RSS, and the sha256 baselines (Python hashlib, coreutils).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Run, du, gbps, hydra_bundle, machine, python_sha256_rate, run, save, sha256sum_rate
from tests.support.images import push_random_image
from tests.support.registry import Registry

MB = 1_000_000


def _build(hb: str, spec: Path, bundle: Path, cache: Path, host: str, jobs: int, flags: list[str]) -> Run:
    for p in bundle.parent.glob(bundle.name.removesuffix(".tar") + "*"):
        p.unlink()
    shutil.rmtree(cache, ignore_errors=True)
    return run([hb, "build", "--no-agent-kit",
                str(spec), "-o", str(bundle), "--unsigned", "--quiet", "--cache-dir", str(cache),
                "--insecure-registry", host, "--jobs", str(jobs), *flags])


MODES = {"default": [], "split": ["--split", "256MB"], "cache_blobs": ["--cache-blobs"]}


def _skopeo(refs: list[str], oci: Path) -> tuple[float, float]:
    shutil.rmtree(oci, ignore_errors=True)
    secs = rss = 0.0
    for i, r in enumerate(refs):
        s = run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                 f"docker://{r}", f"oci:{oci}:img{i}"])
        secs += s.seconds
        rss = max(rss, s.max_rss_mb)
    return secs, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.6, help="total image data to seed (GB)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="rounds (order alternates); the median of each is reported")
    ap.add_argument("--tmpfs", action="store_true",
                    help="registry storage and outputs in /dev/shm: takes the disk out (hashing efficiency)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    if args.tmpfs:
        os.environ["TMPDIR"] = "/dev/shm"  # the registry's data dir and our workdir
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hb = hydra_bundle()
    with Registry() as reg:
        per_image = int(args.gb * 1e9 / args.images)
        layer_sizes = [per_image // 2, per_image // 3, per_image - per_image // 2 - per_image // 3]
        print(f"seeding {args.images} images x {per_image / MB:.0f} MB into {reg.host} …", flush=True)
        refs = []
        total = 0
        for i in range(args.images):
            img = push_random_image(reg.host, f"bench/img{i}", "v1", layer_sizes, seed=100 + i,
                                    tmp_dir=work, level=0)
            total += img.total_size
            refs.append(f"{reg.host}/bench/img{i}:v1")
        spec = work / "spec.yaml"
        spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\n"
                        "metadata: {name: bench, version: '1', sequence: 1}\nimages:\n"
                        + "".join(f"  - ref: {r}\n" for r in refs))
        bundle = work / "bench.tar"
        cache = work / "cache"
        oci = work / "skopeo-oci"
        runs: dict[str, list[Run]] = {m: [] for m in MODES}
        skopeo: list[tuple[float, float]] = []
        for rnd in range(args.rounds):
            steps = [*MODES, "skopeo"]
            for what in (steps if rnd % 2 == 0 else steps[::-1]):
                subprocess.run(["sync"], check=False)
                if what == "skopeo":
                    skopeo.append(_skopeo(refs, oci))
                else:
                    runs[what].append(_build(hb, spec, bundle, cache, reg.host, args.jobs, MODES[what]))
                print(f"  round {rnd + 1} {what} done", flush=True)
        _build(hb, spec, bundle, cache, reg.host, args.jobs, [])
        t0 = time.monotonic()
        rebuild = subprocess.run([hb, "build", "--no-agent-kit", str(spec), "-o", str(work / "again.tar"),
                                  "--unsigned", "--quiet", "--json", "--cache-dir", str(cache),
                                  "--insecure-registry", reg.host], check=True, capture_output=True, text=True)
        rebuild_secs = time.monotonic() - t0
        bundle_size = bundle.stat().st_size
        skopeo_bytes = du(oci)
        inspect = run([hb, "inspect", str(bundle)])
        py_rate = python_sha256_rate(bundle)
        coreutils_rate = sha256sum_rate(bundle)
    sk_secs = statistics.median(s for s, _ in skopeo)
    sk_rss = max(r for _, r in skopeo)
    sk_gbps = gbps(total, sk_secs)
    result: dict = {
        "machine": machine(), "image_bytes": total, "images": args.images, "bundle_bytes": bundle_size,
        "storage": "tmpfs (/dev/shm)" if args.tmpfs else "disk", "rounds": args.rounds, "statistic": "median",
        "skopeo_layout_bytes": skopeo_bytes,
        "skopeo_copy": {"seconds": round(sk_secs, 2), "GBps": round(sk_gbps, 3), "max_rss_mb": round(sk_rss, 1),
                        "all_seconds": [round(s, 2) for s, _ in skopeo]},
        "python_sha256_GBps": round(py_rate / 1e9, 3), "coreutils_sha256sum_GBps": round(coreutils_rate / 1e9, 3),
        "rebuild_seconds": round(rebuild_secs, 2),
        "rebuild_downloaded_bytes": json.loads(rebuild.stdout)["downloadedBytes"] if rebuild.stdout else None,
        "inspect_seconds": round(inspect.seconds, 3),
    }
    for m, rs in runs.items():
        secs = statistics.median(r.seconds for r in rs)
        result[f"hydra_build_{m}"] = {"seconds": round(secs, 2), "GBps": round(gbps(total, secs), 3),
                                      "max_rss_mb": round(max(r.max_rss_mb for r in rs), 1),
                                      "all_seconds": [round(r.seconds, 2) for r in rs],
                                      "ratio_vs_skopeo": round(sk_secs / secs, 2)}
        result[f"ratio_{m}_vs_skopeo"] = round(sk_secs / secs, 2)
    shutil.rmtree(work, ignore_errors=True)
    save("build_vs_skopeo" + ("_tmpfs" if args.tmpfs else ""), result)
    print(f"\nimages: {total / 1e9:.2f} GB in {args.images} images on {result['storage']} "
          f"({result['machine']['cpus']} cpus), median of {args.rounds}")
    for m in MODES:
        r = result[f"hydra_build_{m}"]
        print(f"hydra-bundle build {' '.join(MODES[m]):15}: {r['seconds']:6.2f} s  {r['GBps']:.3f} GB/s  "
              f"peak RSS {r['max_rss_mb']:.0f} MB  {r['ratio_vs_skopeo']}x skopeo")
    print(f"skopeo copy → oci:               : {sk_secs:6.2f} s  {sk_gbps:.3f} GB/s  peak RSS {sk_rss:.0f} MB")
    print(f"rebuild of the unchanged spec: {result['rebuild_seconds']} s, "
          f"downloaded {result['rebuild_downloaded_bytes']} bytes")
    print(f"python sha256 {py_rate / 1e9:.2f} GB/s, sha256sum {coreutils_rate / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
