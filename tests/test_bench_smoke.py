"""The benchmark scripts still run (tiny sizes, no timing asserted): `make bench` must not rot between releases.

Each script is run as `bench/run.py` runs it; the test checks it exits 0 and writes its result record with the
comparisons it promises (ratios against the peer or baseline). The figures themselves are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

CASES = {
    "build_vs_skopeo": (["build_vs_skopeo.py", "--gb", "0.03", "--images", "2", "--rounds", "1"],
                        ["ratio_default_vs_skopeo", "ratio_split_vs_skopeo", "rebuild_downloaded_bytes",
                         "python_sha256_GBps"]),
    "hashing": (["hashing.py", "--gb", "0.03", "--rounds", "1"], ["build", "verify", "ingest"]),
    "peak_rss": (["peak_rss.py", "--gb", "0.05", "--small-gb", "0.02"], ["rss_ratio_big_vs_small", "all_under_goal"]),
    "agent_serve": (["agent_serve.py", "--gb", "0.03"], ["ingest", "serve_ratio_agent_vs_docker_registry",
                                                             "curl_tls_ratio_agent_vs_docker_registry"]),
    "ingest": (["ingest.py", "--gb", "0.02", "--small", "4", "--rounds", "1"], ["disk", "tmpfs", "ratio_to_sha256sum"]),
    "delta_split": (["delta_split.py", "--images", "3", "--scale", "0.05", "--split", "4M"], ["ratio", "carried"]),
    "multi_agent": (["multi_agent.py", "--mb", "4", "--clients", "2,3", "--rounds", "1"],
                    ["GBps", "ratio_two_agents_vs_one", "ratio_one_agent_vs_docker_registry"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs(name: str, tmp_path: Path) -> None:
    if name in ("build_vs_skopeo", "agent_serve") and not Path("/usr/bin/skopeo").exists():
        pytest.skip("skopeo not installed")
    args, keys = CASES[name]
    env = {**os.environ, "HYDRA_BENCH_RESULTS": str(tmp_path)}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / args[0]), *args[1:]], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["machine"]["cpus"] >= 1
    for k in keys:
        assert k in result, (k, sorted(result))
