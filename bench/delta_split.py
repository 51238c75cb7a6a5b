"""Split + delta: bytes carried for "one image changed" vs the bytes the site lacks (goal ≤ 1.05×).

In one run:
  * seed a local docker-registry with N images (incompressible layers; a base layer shared by all images, a
    runtime layer shared by half of them, two unique layers each);
  * build bundle v1 (signed), ingest it into an agent store (``hydra-bundle agent ingest``) and export the
    site inventory the way a site does (``hydra-bundle agent inventory -o site.json``);
  * push v2 of ONE image (its top layer changed; same repository, new tag) and build v2 with
    ``--site-inventory site.json --split SIZE``;
  * report the bytes the site lacks — computed from the registry's manifests (v2 blobs not in v1), not from
    our own index — against the bytes carried (sum of the part files), the overhead breakdown read back from
    the part tars with the stdlib ``tarfile`` (index + signature + part.json + layout repeated per part, tar
    headers, padding, end-of-archive), the full (non-delta) v2 size and the unsplit delta size for contrast;
  * verify every part (``hydra-bundle verify``) and ingest the parts into the v1 site, which must then report
    v2 ``complete`` (``agent status``) and hold every v2 blob (``agent inventory``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import yaml

from bench.common import hydra_bundle, machine, run, save
from tests.support.bundles import write_spec
from tests.support.images import (
    MANIFEST_ACCEPT,
    OCI_MANIFEST,
    make_config,
    make_manifest,
    push_blob,
    push_blob_file,
    push_manifest,
    write_random_layer,
)
from tests.support.registry import Registry

MB = 1_000_000
GOAL = 1.05
REPO = "bench/delta{}"


# -- seeding ---------------------------------------------------------------------------------------------
def layer_plan(n_images: int, scale: float) -> dict[int, list[tuple[int, int]]]:
    """image → [(seed, size)] bottom to top. Seeds identify layers: equal seed = the same (shared) blob."""
    base = (1, int(24 * MB * scale))
    runtimes = [(2, int(12 * MB * scale)), (3, int(12 * MB * scale))]
    out = {}
    for i in range(n_images):
        s = int((20 + 10 * i) * MB * scale)          # 20, 30, … MB of unique content: images of ~56–106 MB
        out[i] = [base, runtimes[0] if i < (n_images + 1) // 2 else runtimes[1],
                  (100 + 2 * i, s // 3), (101 + 2 * i, s - s // 3)]
    return out


def push_images(host: str, plan: dict[int, list[tuple[int, int]]], tag: str, tmp: Path,
                layers: dict[int, tuple[str, int, str]]) -> None:
    """Generate each distinct layer once (into ``layers``: seed → (digest, size, diff_id)), push it to every
    repository that uses it, then the configs and manifests under ``tag``."""
    users: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for img, ls in plan.items():
        for seed, size in ls:
            users.setdefault(seed, []).append(img)
            sizes[seed] = size
    for seed, imgs in users.items():
        f = tmp / f"layer-{seed}.tar.gz"
        if seed not in layers:
            layers[seed] = write_random_layer(f, sizes[seed], seed, level=0)
        elif not f.exists():
            write_random_layer(f, sizes[seed], seed, level=0)
        for img in imgs:
            push_blob_file(host, REPO.format(img), f, layers[seed][0])
        f.unlink()
    for img, ls in plan.items():
        ds = [layers[seed] for seed, _ in ls]
        config = make_config("linux/amd64", [d for _, _, d in ds])
        push_blob(host, REPO.format(img), config)
        manifest = make_manifest(config, [(d, s) for d, s, _ in ds])
        push_manifest(host, REPO.format(img), tag, manifest, OCI_MANIFEST)


def registry_blobs(host: str, refs: list[tuple[str, str]]) -> dict[str, int]:
    """digest → size of every blob (manifest, config, layers) the images need, read from the registry's
    manifests: the independent measure of what a bundle of these images holds."""
    out: dict[str, int] = {}
    with httpx.Client(timeout=30) as c:
        for repo, tag in refs:
            r = c.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
            r.raise_for_status()
            out[r.headers["Docker-Content-Digest"]] = len(r.content)
            m = r.json()
            for d in [m["config"], *m["layers"]]:
                out[d["digest"]] = int(d["size"])
    return out


def images_spec(path: Path, host: str, version: str, seq: int, tags: dict[int, str]) -> Path:
    return write_spec(path, name="delta-bench", version=version, sequence=seq,
                      images=[{"ref": f"{host}/{REPO.format(i)}:{t}"} for i, t in sorted(tags.items())])


# -- reading parts back ----------------------------------------------------------------------------------
def tar_breakdown(path: Path) -> dict[str, int]:
    """Where the bytes of a bundle/part tar go, read with the stdlib tarfile (independent of our writer)."""
    out = {"index": 0, "signature": 0, "part_json": 0, "layout": 0, "blob_data": 0, "segment_data": 0,
           "tar_headers": 0, "member_padding": 0, "end_of_archive": 0, "blobs": 0, "segments": 0}
    end = 0
    with tarfile.open(path, "r:") as tf:
        for ti in tf:
            out["tar_headers"] += ti.offset_data - ti.offset
            out["member_padding"] += -ti.size % tarfile.BLOCKSIZE
            n = ti.name
            if n == "hydra-bundle.json":
                out["index"] += ti.size
            elif n == "hydra-bundle.json.sig":
                out["signature"] += ti.size
            elif n == "hydra-bundle.part.json":
                out["part_json"] += ti.size
            elif n in ("oci-layout", "index.json"):
                out["layout"] += ti.size
            elif n.startswith("segments/"):
                out["segment_data"] += ti.size
                out["segments"] += 1
            elif n.startswith("blobs/"):
                out["blob_data"] += ti.size
                out["blobs"] += 1
            else:
                raise SystemExit(f"{path}: unexpected member {n}")
            end = ti.offset_data + ti.size + (-ti.size % tarfile.BLOCKSIZE)
    out["end_of_archive"] = path.stat().st_size - end
    return out


def member_digests(path: Path) -> set[str]:
    """Blob digests carried whole or as segments by a bundle/part tar."""
    out = set()
    with tarfile.open(path, "r:") as tf:
        for ti in tf:
            if ti.name.startswith(("blobs/sha256/", "segments/sha256/")):
                out.add("sha256:" + ti.name.split("/")[2])
    return out


# -- main ------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every layer size (1.0: images ~56–106 MB)")
    ap.add_argument("--change", type=int, default=None, help="which image changes (default: the largest)")
    ap.add_argument("--split", default="16M", help="part size for the v2 delta (hydra-bundle build --split)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.images < 2:
        raise SystemExit("--images: at least 2")
    change = args.images - 1 if args.change is None else args.change
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hb-delta-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hb = hydra_bundle()

    def hbj(*a: str) -> Any:
        p = subprocess.run([hb, *a, "--json"], capture_output=True, text=True)
        if p.returncode not in (0, 1) or not p.stdout.strip():
            raise SystemExit(f"hydra-bundle {' '.join(a)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        return json.loads(p.stdout)

    t_start = time.perf_counter()
    try:
        with Registry() as reg:
            host = reg.host
            plan = layer_plan(args.images, args.scale)
            layers: dict[int, tuple[str, int, str]] = {}
            t0 = time.perf_counter()
            push_images(host, plan, "v1", work, layers)
            # v2 of one image: its top layer changed (same size, new bytes), everything else identical
            top_size = plan[change][-1][1]
            plan2 = {change: [*plan[change][:-1], (900 + change, top_size)]}
            push_images(host, plan2, "v2", work, layers)
            seed_s = time.perf_counter() - t0
            tags1 = {i: "v1" for i in plan}
            tags2 = {**tags1, change: "v2"}
            have_v1 = registry_blobs(host, [(REPO.format(i), t) for i, t in tags1.items()])
            need_v2 = registry_blobs(host, [(REPO.format(i), t) for i, t in tags2.items()])
            lacking = {d: s for d, s in need_v2.items() if d not in have_v1}
            lacking_bytes = sum(lacking.values())
            print(f"seeded {args.images} images, {sum(have_v1.values()) / MB:.0f} MB of distinct blobs "
                  f"({seed_s:.1f}s); v2 changes {REPO.format(change)} (top layer {top_size / MB:.1f} MB)",
                  flush=True)

            subprocess.run([hb, "keygen", str(work / "k")], check=True, capture_output=True)
            key = str(work / "k.key")
            spec1 = images_spec(work / "spec-v1.yaml", host, "1.0.0", 1, tags1)
            spec2 = images_spec(work / "spec-v2.yaml", host, "2.0.0", 2, tags2)
            common = ["--quiet", "--insecure-registry", host]
            v1 = work / "v1.tar"
            b1 = run([hb, "build", "--no-agent-kit",
                      str(spec1), "-o", str(v1), "--key", key, "--cache-dir", str(work / "cache1"),
                      *common])

            # the site: v1 ingested by the agent's one-shot pipeline, inventory exported by the CLI
            site = work / "site"
            cfg = {"drop_dir": str(site / "drop"), "state_dir": str(site / "state"),
                   "trusted_keys": [str(work / "k.pub")], "limits": {"min_free_bytes": 0}}
            site.mkdir()
            (site / "agent.yaml").write_text(yaml.safe_dump(cfg))
            agent_cfg = ["--config", str(site / "agent.yaml")]
            ing1 = run([hb, "agent", "ingest", str(v1), *agent_cfg])
            inv = work / "site.json"
            subprocess.run([hb, "agent", "inventory", "-o", str(inv), *agent_cfg], check=True, capture_output=True)
            site_blobs = {b["digest"]: b["size"] for b in json.loads(inv.read_text())["blobs"]}
            missing_from_inv = [d for d in have_v1 if site_blobs.get(d) != have_v1[d]]
            if missing_from_inv:
                raise SystemExit(f"site inventory lacks {len(missing_from_inv)} blobs of v1")

            # v2 delta, split; fresh build cache (a build host that did not keep v1's cache)
            parts_dir = work / "parts"
            parts_dir.mkdir()
            t0 = time.perf_counter()
            summary = hbj("build", "--no-agent-kit",
                          str(spec2), "-o", str(parts_dir / "v2-delta.tar"), "--key", key, "--cache-dir",
                          str(work / "cache2"), "--site-inventory", str(inv), "--split", args.split, *common)
            delta_build_s = time.perf_counter() - t0
            parts = sorted(parts_dir.glob("v2-delta.part-*-of-*.tar"))
            carried = sum(p.stat().st_size for p in parts)
            # contrast: the same delta unsplit, and the full v2 (cache2 is warm now)
            full = work / "v2-full.tar"
            run([hb, "build", "--no-agent-kit",
                 str(spec2), "-o", str(full), "--key", key, "--cache-dir", str(work / "cache2"),
                 *common])
            one = work / "v2-delta.tar"
            run([hb, "build", "--no-agent-kit",
                 str(spec2), "-o", str(one), "--key", key, "--cache-dir", str(work / "cache2"),
                 "--site-inventory", str(inv), *common])

            # where the carried bytes go (stdlib tarfile), and which blobs the parts carry
            per_part = [tar_breakdown(p) for p in parts]
            tot = {k: sum(b[k] for b in per_part) for k in per_part[0]}
            carried_digests = set().union(*(member_digests(p) for p in parts))
            payload = tot["blob_data"] + tot["segment_data"]
            extra_carried = sorted(carried_digests - set(lacking))
            not_carried = sorted(set(lacking) - carried_digests)

            # verify every part, then ingest them into the v1 site
            t0 = time.perf_counter()
            ver = hbj("verify", *map(str, parts), "--pub", str(work / "k.pub"), "--quiet")
            verify_s = time.perf_counter() - t0
            if not ver["ok"] or any(s["missing"] for s in ver["sets"]):
                raise SystemExit(f"verify failed: {json.dumps(ver)[:2000]}")
            ingest_states = []
            t0 = time.perf_counter()
            for p in parts:
                ingest_states.append(hbj("agent", "ingest", str(p), *agent_cfg)["state"])
            ingest_s = time.perf_counter() - t0
            status = hbj("agent", "status", *agent_cfg)["bundles"]
            states = {b["version"]: b["state"] for b in status}
            inv2 = work / "site2.json"
            subprocess.run([hb, "agent", "inventory", "-o", str(inv2), *agent_cfg], check=True, capture_output=True)
            site2 = {b["digest"]: b["size"] for b in json.loads(inv2.read_text())["blobs"]}
            v2_missing_at_site = [d for d, s in need_v2.items() if site2.get(d) != s]
            sizes = {"v1": v1.stat().st_size, "full_v2": full.stat().st_size, "delta_unsplit": one.stat().st_size,
                     "parts": [p.stat().st_size for p in parts]}
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    ratio = carried / lacking_bytes
    per_part_fixed = per_part[0]["index"] + per_part[0]["signature"] + per_part[0]["part_json"] + \
        per_part[0]["layout"]
    result: dict[str, Any] = {
        "machine": machine(), "images": args.images, "changed_image": REPO.format(change),
        "split": args.split, "goal_ratio": GOAL,
        "v1_distinct_blob_bytes": sum(have_v1.values()), "v1_bundle_bytes": sizes["v1"],
        "lacking": {"blobs": len(lacking), "bytes": lacking_bytes,
                    "what": "blobs of the v2 images (registry manifests) not in the v1 images"},
        "carried": {"parts": len(parts), "bytes": carried, "part_bytes": sizes["parts"]},
        "ratio": round(ratio, 5), "meets_goal": ratio <= GOAL,
        "overhead": {
            "total_bytes": carried - lacking_bytes,
            "payload_bytes": payload, "payload_minus_lacking": payload - lacking_bytes,
            "per_part_repeated_bytes": per_part_fixed,
            "repeated_members_total": tot["index"] + tot["signature"] + tot["part_json"] + tot["layout"],
            "index_bytes_per_part": per_part[0]["index"], "signature_bytes_per_part": per_part[0]["signature"],
            "part_json_bytes_per_part": per_part[0]["part_json"], "layout_bytes_per_part": per_part[0]["layout"],
            "tar_headers": tot["tar_headers"], "member_padding": tot["member_padding"],
            "end_of_archive_and_record_padding": tot["end_of_archive"],
            "members": {"blobs": tot["blobs"], "segments": tot["segments"]},
        },
        "carried_blobs_site_had": extra_carried, "lacking_blobs_not_carried": not_carried,
        "delta_unsplit": {"bytes": sizes["delta_unsplit"], "ratio": round(sizes["delta_unsplit"] / lacking_bytes, 5)},
        "full_v2_bytes": sizes["full_v2"], "builder_summary": {k: summary.get(k) for k in (
            "carriedBytes", "omittedBlobs", "omittedBytes", "downloadedBytes", "cachedBytes", "seconds")},
        "seconds": {"seed": round(seed_s, 2), "build_v1": round(b1.seconds, 2), "ingest_v1": round(ing1.seconds, 2),
                    "build_v2_delta_split": round(delta_build_s, 2), "verify_parts": round(verify_s, 2),
                    "ingest_parts": round(ingest_s, 2), "total": round(time.perf_counter() - t_start, 1)},
        "site_after": {"states": states, "ingest_results": ingest_states,
                       "v2_blobs_missing_at_site": len(v2_missing_at_site)},
    }
    save("delta_split", result)
    print(f"\nv2 = v1 with {REPO.format(change)} changed (one {top_size / MB:.1f} MB layer + config + manifest)")
    print(f"site lacks (registry manifests): {len(lacking)} blobs, {lacking_bytes:,} B")
    print(f"carried (--site-inventory --split {args.split}): {len(parts)} parts, {carried:,} B   "
          f"ratio {ratio:.4f}x  (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'})")
    print(f"  overhead {carried - lacking_bytes:,} B = repeated per part {per_part_fixed:,} B x {len(parts)} "
          f"(index {per_part[0]['index']:,}, sig {per_part[0]['signature']}, part.json {per_part[0]['part_json']}, "
          f"layout {per_part[0]['layout']:,}) + tar headers {tot['tar_headers']:,} + padding "
          f"{tot['member_padding']:,} + end-of-archive {tot['end_of_archive']:,}"
          + (f" + payload beyond lacking {payload - lacking_bytes:,}" if payload != lacking_bytes else ""))
    print(f"  blobs carried the site had: {len(extra_carried)}; lacking blobs not carried: {len(not_carried)}")
    print(f"contrast: delta unsplit {sizes['delta_unsplit']:,} B ({sizes['delta_unsplit'] / lacking_bytes:.4f}x), "
          f"full v2 {sizes['full_v2']:,} B ({sizes['full_v2'] / lacking_bytes:.1f}x the lacking bytes)")
    print(f"delta build (cold cache): downloaded {summary.get('downloadedBytes', 0) / MB:.1f} MB to carry "
          f"{summary.get('carriedBytes', 0) / MB:.1f} MB ({delta_build_s:.1f}s)")
    print(f"verify: {len(parts)} parts OK ({verify_s:.1f}s); ingest into the v1 site: {', '.join(ingest_states)} "
          f"({ingest_s:.1f}s); agent status: {', '.join(f'{v} {s}' for v, s in sorted(states.items()))}; "
          f"v2 blobs missing at site: {len(v2_missing_at_site)}")
    print(f"total {result['seconds']['total']}s")
    ok = ratio <= GOAL and states.get("2.0.0") == "complete" and not v2_missing_at_site
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
