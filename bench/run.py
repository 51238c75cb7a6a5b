"""Run the benchmark suite (a few minutes by default; --big for the large sizes) and print the results.

Each benchmark compares against a peer on the same data in the same run and reports ratios; results are
also written to bench/results/*.json (not committed). docs/benchmarks.md records published runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "build": ["build_vs_skopeo.py"],
    "agent": ["agent_serve.py"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(BENCHES), help=f"which: {', '.join(BENCHES)}")
    ap.add_argument("--big", action="store_true", help="large sizes (tens of GB; slow)")
    args = ap.parse_args()
    for name in args.names:
        script, *extra = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *extra]
        if args.big:
            cmd += ["--gb", "20"]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
