"""Build throughput vs skopeo, in one run on the same images.

Seeds a local docker-registry with ≥ 1.5 GB of images (generated, incompressible layers), then:
  * ``hydra-bundle build`` of all images into one bundle (fresh cache: download + verify + write tar)
  * ``skopeo copy --preserve-digests docker://… oci:DIR:tag`` for the same images (fresh dir)
and reports throughput, the ratio, peak RSS, and the sha256 baselines (Python hashlib, coreutils).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Run, du, gbps, hydra_bundle, machine, python_sha256_rate, run, save, sha256sum_rate
from tests.support.images import push_random_image
from tests.support.registry import Registry

MB = 1_000_000


def _build(hb: str, spec: Path, bundle: Path, cache: Path, host: str, jobs: int, direct: bool) -> Run:
    bundle.unlink(missing_ok=True)
    shutil.rmtree(cache, ignore_errors=True)
    return run([hb, "build", "--no-agent-kit",
                str(spec), "-o", str(bundle), "--unsigned", "--quiet", "--cache-dir", str(cache),
                "--insecure-registry", host, "--jobs", str(jobs), *(["--direct"] if direct else [])])


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
    ap.add_argument("--rounds", type=int, default=2, help="rounds (order alternates); best of each is reported")
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
        cached: list[Run] = []
        direct: list[Run] = []
        skopeo: list[tuple[float, float]] = []
        for rnd in range(args.rounds):
            steps = ["cached", "direct", "skopeo"]
            for what in (steps if rnd % 2 == 0 else steps[::-1]):
                subprocess.run(["sync"], check=False)
                if what == "skopeo":
                    skopeo.append(_skopeo(refs, oci))
                else:
                    r = _build(hb, spec, bundle, cache, reg.host, args.jobs, what == "direct")
                    (direct if what == "direct" else cached).append(r)
                print(f"  round {rnd + 1} {what} done", flush=True)
        bundle_size = bundle.stat().st_size
        skopeo_bytes = du(oci)
        inspect = run([hb, "inspect", str(bundle)])
        py_rate = python_sha256_rate(bundle)
        coreutils_rate = sha256sum_rate(bundle)
    best_c = min(cached, key=lambda r: r.seconds)
    best_d = min(direct, key=lambda r: r.seconds)
    sk_secs = min(s for s, _ in skopeo)
    sk_rss = max(r for _, r in skopeo)
    c_gbps, d_gbps, sk_gbps = gbps(total, best_c.seconds), gbps(total, best_d.seconds), gbps(total, sk_secs)
    result = {
        "machine": machine(), "image_bytes": total, "images": args.images, "bundle_bytes": bundle_size,
        "storage": "tmpfs (/dev/shm)" if args.tmpfs else "disk", "rounds": args.rounds,
        "skopeo_layout_bytes": skopeo_bytes,
        "hydra_build_cached": {"seconds": round(best_c.seconds, 2), "GBps": round(c_gbps, 3),
                               "max_rss_mb": round(max(r.max_rss_mb for r in cached), 1),
                               "all_seconds": [round(r.seconds, 2) for r in cached]},
        "hydra_build_direct": {"seconds": round(best_d.seconds, 2), "GBps": round(d_gbps, 3),
                               "max_rss_mb": round(max(r.max_rss_mb for r in direct), 1),
                               "all_seconds": [round(r.seconds, 2) for r in direct]},
        "skopeo_copy": {"seconds": round(sk_secs, 2), "GBps": round(sk_gbps, 3), "max_rss_mb": round(sk_rss, 1),
                        "all_seconds": [round(s, 2) for s, _ in skopeo]},
        "ratio_cached_vs_skopeo": round(c_gbps / sk_gbps, 2),
        "ratio_direct_vs_skopeo": round(d_gbps / sk_gbps, 2),
        "python_sha256_GBps": round(py_rate / 1e9, 3), "coreutils_sha256sum_GBps": round(coreutils_rate / 1e9, 3),
        "direct_as_fraction_of_sha256": round(d_gbps * 1e9 / py_rate, 2),
        "cached_as_fraction_of_sha256": round(c_gbps * 1e9 / py_rate, 2),
        "inspect_seconds": round(inspect.seconds, 3),
    }
    shutil.rmtree(work, ignore_errors=True)
    save("build_vs_skopeo" + ("_tmpfs" if args.tmpfs else ""), result)
    print(f"\nimages: {total / 1e9:.2f} GB in {args.images} images on {result['storage']} "
          f"({result['machine']['cpus']} cpus), best of {args.rounds}")
    print(f"hydra-bundle build         : {best_c.seconds:6.2f} s  {c_gbps:.3f} GB/s  "
          f"peak RSS {result['hydra_build_cached']['max_rss_mb']:.0f} MB")
    print(f"hydra-bundle build --direct: {best_d.seconds:6.2f} s  {d_gbps:.3f} GB/s  "
          f"peak RSS {result['hydra_build_direct']['max_rss_mb']:.0f} MB")
    print(f"skopeo copy → oci:         : {sk_secs:6.2f} s  {sk_gbps:.3f} GB/s  peak RSS {sk_rss:.0f} MB")
    print(f"ratio vs skopeo: cached {result['ratio_cached_vs_skopeo']}x, direct {result['ratio_direct_vs_skopeo']}x"
          f" (goal >= 1.3x)")
    print(f"python sha256 {py_rate / 1e9:.2f} GB/s, sha256sum {coreutils_rate / 1e9:.2f} GB/s; "
          f"build --direct = {result['direct_as_fraction_of_sha256']:.0%} of single-core sha256 (goal >= 85%)")


if __name__ == "__main__":
    main()
