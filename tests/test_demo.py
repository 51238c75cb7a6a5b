"""The README's first command (`make demo`) must keep working: run the whole offline journey once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_runs_the_whole_journey(fixtures_dir: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "demo" / "run.py"), "--timeout", "300"], capture_output=True,
                       text=True, timeout=900, env={**os.environ, "HYDRA_BUNDLE_FIXTURES": str(fixtures_dir)})
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    assert "demo finished: complete" in out
    assert "OK: " in out and "blobs verified" in out                  # verify before carrying
    assert "ingest                             done" in out
    # the agent that ran was installed from the bundle's own kit by install.sh (pip --no-index; no network as root)
    assert "install.sh: the bundle's signature verifies against" in out
    assert "kit wheels match the signed index" in out
    assert "from the bundle's kit alone" in out
    assert "(installed from a kit at " in out
    assert "skopeo inspect --cert-dir " in out and "→ sha256:" in out   # HTTPS, verified with the site CA
    assert "registry https://127.0.0.1:" in out
    if "skipped: Kubernetes steps" not in out:                        # with a kube-apiserver: applied
        assert "apply:warmup-qwen3-0.6b            done" in out
        assert "apply:gateway-tls                  done" in out
        for release in ("kube-system/csi-driver-nfs", "gpu-operator/gpu-operator", "dataset-system/dataset"):
            assert f"Helm release {release} revision 1" in out          # charts installed in-process
        assert "demo finished: complete: every deploy step done, 3 Helm releases deployed" in out
