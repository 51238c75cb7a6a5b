"""A client, however hostile, never takes the agent down: 2,000 half-sent connections to the registry under
systemd's default open-files limit (soft 1024) while other clients are served and a bundle is ingested; the
connections are dropped by the header timeout and their file descriptors released."""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.agent import AgentProc, wait_for
from tests.support.bundles import keypair, run_cli, write_spec

pytestmark = pytest.mark.slow

ATTACK = 2000


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _soft_1024() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_two_thousand_idle_connections_do_not_stop_the_agent(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * ATTACK + 1024:
        pytest.skip(f"the hard open-files limit here ({hard}) is below what the attack needs on both ends")
    key, pub = keypair(tmp_path, "k")
    (tmp_path / "f.bin").write_bytes(os.urandom(100_000))
    spec = write_spec(tmp_path / "spec.yaml", name="calm", files=[{"name": "f", "path": "f.bin"}])
    bundle = tmp_path / "calm.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", bundle, "--key", key, "--cache-dir", tmp_path / "c", "-q"])
    assert res.exit_code == 0, res.output

    with AgentProc(tmp_path / "a", [pub], limits={"header_timeout": 5}) as agent:
        agent.preexec = _soft_1024   # what systemd gives a unit without LimitNOFILE
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        base = f"http://{agent.registry}"
        httpx.get(f"{base}/v2/").raise_for_status()
        before = _fds(pid)

        idle: list[socket.socket] = []
        host, port = agent.registry.split(":")
        for _ in range(ATTACK):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            idle.append(s)
        try:
            # the agent is alive and serves other clients, on every server, while the attack holds
            for _ in range(5):
                assert agent.proc.poll() is None, agent.log_tail()
                assert httpx.get(f"{base}/v2/", timeout=10).status_code == 200
                assert httpx.get(f"{agent.metrics_url}/healthz", timeout=10).status_code == 200
            agent.drop_file(bundle)
            agent.wait_state("calm", "1.0.0", "complete", timeout=60)
            assert httpx.get(f"{agent.files_url}/files/f/f.bin", timeout=10).status_code == 200
            # the header timeout drops the half-sent connections (the server closes them)
            t0 = time.monotonic()
            closed = 0
            for s in idle[:50]:
                s.settimeout(30)
                try:
                    closed += s.recv(1) == b""
                except OSError:
                    closed += 1
            assert closed == 50, closed
            assert time.monotonic() - t0 < 30
        finally:
            for s in idle:
                s.close()
        # every descriptor of the attack is released
        wait_for(lambda: _fds(pid) <= before + 16, 30, f"fds back near {before} (now {_fds(pid)})")
        assert agent.proc.poll() is None
        assert "Too many open files" not in agent.log.read_text()
