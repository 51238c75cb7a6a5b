"""Build throughput vs skopeo, in one run on the same images.

Seeds a local docker-registry with ≥ 1.5 GB of images (generated, incompressible layers), then:
  * ``hydra-bundle build`` of all images into one bundle (fresh cache: download + verify + write tar)
  * ``skopeo copy --preserve-digests docker://… oci:DIR:tag`` for the same images (fresh dir)
and reports throughput, the ratio, peak RSS, and the sha256 baselines (Python hashlib, coreutils).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import du, gbps, machine, python_sha256_rate, run, save, sha256sum_rate
from tests.support.images import push_random_image
from tests.support.registry import Registry

MB = 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.6, help="total image data to seed (GB)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hb = shutil.which("hydra-bundle") or str(Path(sys.executable).parent / "hydra-bundle")
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
        ours = run([hb, "build", str(spec), "-o", str(bundle), "--unsigned", "--quiet", "--cache-dir", str(cache),
                    "--insecure-registry", reg.host, "--jobs", str(args.jobs)])
        bundle_size = bundle.stat().st_size
        oci = work / "skopeo-oci"
        sk_secs, sk_rss = 0.0, 0.0
        for i, r in enumerate(refs):
            s = run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                     f"docker://{r}", f"oci:{oci}:img{i}"])
            sk_secs += s.seconds
            sk_rss = max(sk_rss, s.max_rss_mb)
        verify = run([hb, "inspect", str(bundle)])
        py_rate = python_sha256_rate(bundle)
        coreutils_rate = sha256sum_rate(bundle)
    ours_gbps, sk_gbps = gbps(total, ours.seconds), gbps(total, sk_secs)
    result = {
        "machine": machine(), "image_bytes": total, "images": args.images, "bundle_bytes": bundle_size,
        "skopeo_layout_bytes": du(oci),
        "hydra_build": {"seconds": round(ours.seconds, 2), "GBps": round(ours_gbps, 3),
                        "max_rss_mb": round(ours.max_rss_mb, 1)},
        "skopeo_copy": {"seconds": round(sk_secs, 2), "GBps": round(sk_gbps, 3), "max_rss_mb": round(sk_rss, 1)},
        "ratio_vs_skopeo": round(ours_gbps / sk_gbps, 2),
        "python_sha256_GBps": round(py_rate / 1e9, 3), "coreutils_sha256sum_GBps": round(coreutils_rate / 1e9, 3),
        "build_as_fraction_of_sha256": round(ours_gbps * 1e9 / py_rate, 2),
        "inspect_seconds": round(verify.seconds, 3),
    }
    shutil.rmtree(work, ignore_errors=True)
    save("build_vs_skopeo", result)
    print(f"\nimages: {total / 1e9:.2f} GB in {args.images} images ({result['machine']['cpus']} cpus)")
    print(f"hydra-bundle build : {ours.seconds:6.2f} s  {ours_gbps:.3f} GB/s  peak RSS {ours.max_rss_mb:.0f} MB")
    print(f"skopeo copy → oci: : {sk_secs:6.2f} s  {sk_gbps:.3f} GB/s  peak RSS {sk_rss:.0f} MB")
    print(f"ratio (ours / skopeo): {result['ratio_vs_skopeo']}x   "
          f"python sha256 {py_rate / 1e9:.2f} GB/s, sha256sum {coreutils_rate / 1e9:.2f} GB/s, "
          f"build = {result['build_as_fraction_of_sha256']:.0%} of single-core sha256")


if __name__ == "__main__":
    main()
