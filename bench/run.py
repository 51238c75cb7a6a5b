"""Run the benchmark suite (about ten minutes by default; --big for the large sizes) and print the results.

Each benchmark compares against a peer or a baseline on the same data in the same run and reports ratios;
results are also written to bench/results/*.json (not committed). docs/benchmarks.md records published runs.

    python bench/run.py                 # all, default sizes
    python bench/run.py build rss       # some
    python bench/run.py --big           # 20 GB peak-RSS run, 8 GB build run (needs ~45 GB free disk)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name → (script, default args, --big args, what it shows)
BENCHES: dict[str, tuple[str, list[str], list[str], str]] = {
    "build": ("build_vs_skopeo.py", [], ["--gb", "8", "--rounds", "1"],
              "registry -> bundle vs skopeo copy --preserve-digests docker:// oci: (goal >= 1.3x)"),
    "hashing": ("hashing.py", [], [],
                "build/verify/ingest as a fraction of single-core sha256, disk taken out (goal >= 85%)"),
    "ingest": ("ingest.py", [], [],
               "agent ingest on disk and on tmpfs as a ratio to sha256sum on the same bundle (goal >= 85% on tmpfs)"),
    "agent": ("agent_serve.py", [], [],
              "agent ingest; embedded registry vs docker-registry serving skopeo (goal >= 1.0x)"),
    "rss": ("peak_rss.py", [], ["--gb", "20"], "peak RSS of build/verify/ingest/serve, 2 GB vs 0.2 GB (goal < 150 MB)"),
    "delta": ("delta_split.py", [], [], "split + delta: bytes carried vs bytes the site lacks (goal <= 1.05x)"),
    "drop": ("drop_to_complete.py", [], [], "drop -> complete for the Hydra demo bundle, excluding the copy"),
    "multi": ("multi_agent.py", [], ["--mb", "2000"],
              "8 and 32 parallel pulls: one agent, two agents, docker-registry (throughput and ratios)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(BENCHES),
                    help="which: " + "; ".join(f"{k}: {v[3]}" for k, v in BENCHES.items()).replace("%", "%%"))
    ap.add_argument("--big", action="store_true", help="large sizes (tens of GB; slow)")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    took: dict[str, float] = {}
    for name in args.names:
        script, default, big, what = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *(big if args.big and big else default)]
        print(f"\n== {name}: {what}\n   {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        took[name] = round(time.monotonic() - t0, 1)
    print("\n== done: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    print(json.dumps({"seconds": took}))


if __name__ == "__main__":
    main()
