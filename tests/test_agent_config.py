"""Agent config errors (exit 2), small units (settle, ranges, repository names, logs), sd_notify, systemd unit."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hydra_bundle.agent.httpbase import parse_range
from hydra_bundle.agent.log import LogfmtFormatter
from hydra_bundle.agent.notify import Notifier
from hydra_bundle.agent.settle import Settler, is_candidate, tar_looks_complete
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.kit import installer
from hydra_bundle.oci.sitename import lookup_repository, site_name
from tests.support.agent import AgentProc, run_cli
from tests.support.registry import free_port

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pub(tmp_path: Path) -> Path:
    return keygen(tmp_path / "k")[1]


def write_cfg(tmp_path: Path, pub: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(f"drop_dir: {tmp_path}/drop\nstate_dir: {tmp_path}/state\ntrusted_keys: [{pub}]\n" + text)
    return p


@pytest.mark.parametrize(("extra", "line", "message"), [
    ("registry: {listen: '0.0.0.0:5000'}\nregistyr: {listen: ':1'}\n", 5, "registyr: unknown field"),
    ("registry: {listen: '0.0.0.0:5000', auth: true}\n", 4, "registry.auth: unknown field"),
    ("registry: {listen: '0.0.0.0:5000', tls: false, cert_file: /x.crt, key_file: /x.key}\n", 4,
     "registry: cert_file/key_file need tls: true"),
    ("files: {listen: 'example.com:81'}\n", 4, "files.listen: .*not an IP address"),
    ("metrics: {listen: '127.0.0.1:99999'}\n", 4, "metrics.listen: .*port must be"),
    ("poll_interval: -1\n", 4, "poll_interval: .*greater than 0"),
    ("drops: shred\n", 4, "drops: .*'keep' or 'delete'"),
    ("limits: {max_bundle_byte: 5}\n", 4, "limits.max_bundle_byte: unknown field"),
    ("push: {registry: 'h:5000', credentials_file: /nonexistent/auth.json}\n", 4,
     "push.credentials_file: .*does not exist"),
    ("site:\n  cluster_name: c\n  domain: d\n  registry: 10.0.0.5:5000\n  file_server: http://10.0.0.5:81\n"
     "  registry_mirrors: [10.0.0.5:5000, 'ftp://10.0.0.6:5000']\n", 9,
     "site.registry_mirrors: .*'ftp://10.0.0.6:5000': the scheme must be http or https"),
    ("site:\n  cluster_name: c\n  domain: d\n  registry: 10.0.0.5:5000\n  file_server: http://10.0.0.5:81\n"
     "  registry_mirrors: [10.0.0.5:5000, 'http://10.0.0.5:5000/']\n", 9,
     "site.registry_mirrors: .*is given twice"),
])
def test_config_errors_exit_2(tmp_path: Path, pub: Path, extra: str, line: int, message: str) -> None:
    cfg = write_cfg(tmp_path, pub, extra)
    res = run_cli("agent", "run", "--config", str(cfg), timeout=30)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match(rf"^{re.escape(str(cfg))}:{line}: {message}", lines[0]), lines[0]
    assert not (tmp_path / "state").exists()


def test_config_errors_keys_and_paths(tmp_path: Path, pub: Path) -> None:
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    p = tmp_path / "c.yaml"
    p.write_text(f"drop_dir: drop\nstate_dir: {tmp_path}/state\ntrusted_keys: [{bad_key}]\n")
    res = run_cli("agent", "status", "--config", str(p), timeout=30)
    assert res.returncode == 2
    assert f"{p}:1: drop_dir: must be an absolute path" in res.stderr
    assert f"{p}:3: trusted_keys: {bad_key}: not a PEM public key" in res.stderr
    res = run_cli("agent", "run", "--config", str(tmp_path / "missing.yaml"), timeout=30)
    assert res.returncode == 2 and "does not exist" in res.stderr
    p.write_text(f"drop_dir: {tmp_path}/x\nstate_dir: {tmp_path}/x/state\ntrusted_keys: [{pub}]\n")
    res = run_cli("agent", "run", "--config", str(p), timeout=30)
    assert res.returncode == 2 and "must not contain each other" in res.stderr


def test_example_config_is_valid(tmp_path: Path, pub: Path) -> None:
    data = yaml.safe_load((REPO / "systemd/agent.example.yaml").read_text())
    data.update(drop_dir=str(tmp_path / "drop"), state_dir=str(tmp_path / "state"), trusted_keys=[str(pub)])
    from hydra_bundle.agent.config import AgentConfig

    cfg = AgentConfig.model_validate(data)
    assert cfg.files is not None and cfg.files.address == ("0.0.0.0", 81)
    assert cfg.low_ports() == [81]


def test_site_names_keep_the_registry_host() -> None:
    def name(ref: str, kind: str = "images") -> tuple[str, str | None, str | None]:
        n = site_name(ref, kind)
        return n.repository, n.tag, n.digest

    assert name("release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu") == \
        ("release.daocloud.io/hydra/vllm-openai", "0.8.5.dev940-cpu", None)
    # every spelling of a Docker Hub image is one name
    for ref in ("docker.io/library/ubuntu:24.04", "ubuntu:24.04", "docker.io/ubuntu:24.04",
                "registry-1.docker.io/library/ubuntu:24.04", "index.docker.io/ubuntu:24.04"):
        assert name(ref) == ("docker.io/library/ubuntu", "24.04", None), ref
    assert name("registry-1.docker.io/nginx:1") == ("docker.io/library/nginx", "1", None)
    # two registries' images with one path stay apart
    assert name("ghcr.io/example/app:1.0")[0] != name("quay.io/example/app:1.0")[0]
    assert name("127.0.0.1:5000/a/b@sha256:" + "a" * 64) == ("127.0.0.1_5000/a/b", None, "sha256:" + "a" * 64)
    assert name("oci://ghcr.io/x/charts/demo:1.0.0+build.1", "charts") == \
        ("ghcr.io/x/charts/demo", "1.0.0_build.1", None)
    assert name("hydra-bundle/models/qwen3-06b:1.0", "models") == ("hydra-bundle/models/qwen3-06b", "1.0", None)
    assert name("charts/metallb:0.16.1", "charts") == ("charts/metallb", "0.16.1", None)


@pytest.mark.parametrize(("path", "ns", "repo"), [
    ("docker.io/library/ubuntu", None, "docker.io/library/ubuntu"),      # direct pull, rewritten manifests
    ("library/ubuntu", "docker.io", "docker.io/library/ubuntu"),         # containerd mirror without a path
    ("docker.io/library/ubuntu", "docker.io", "docker.io/library/ubuntu"),  # our hosts.toml (override_path)
    ("ubuntu", "registry-1.docker.io", "docker.io/library/ubuntu"),
    ("pause", "quay.io", "quay.io/pause"),                               # never registry.k8s.io/pause
    ("registry.k8s.io/pause", "quay.io", "quay.io/registry.k8s.io/pause"),  # ns decides the registry
    ("127.0.0.1_5000/agent/app", "127.0.0.1:5000", "127.0.0.1_5000/agent/app"),
    ("hydra-bundle/models/q", None, "hydra-bundle/models/q"),            # our own artifacts
    ("library/ubuntu", None, "library/ubuntu"),                          # no host: not an image name
])
def test_requests_map_to_exactly_one_site_name(path: str, ns: str | None, repo: str) -> None:
    assert lookup_repository(path, ns) == repo


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=90-500", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=100-", 100) is False
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: whole body
    assert parse_range("items=0-1", 100) is None


def test_settler(tmp_path: Path) -> None:
    now = [0.0]
    s = Settler(settle_seconds=2, incomplete_timeout=10, clock=lambda: now[0])
    f = tmp_path / "b.tar"
    f.write_bytes(b"x" * 512 + b"\0" * 1024)
    assert tar_looks_complete(f, f.stat().st_size)
    assert s.observe([f]) == []
    now[0] = 1.9
    assert s.observe([f]) == []
    now[0] = 2.0
    assert s.observe([f]) == [(f, "ready")]
    now[0] = 5
    assert s.observe([f]) == []  # handed over once per version of the file
    with open(f, "ab") as fh:  # grows: a new version, settles again (but the tail is not zeros now)
        fh.write(b"y" * 512)
    now[0] = 6
    assert s.observe([f]) == []
    now[0] = 9
    assert s.observe([f]) == []  # stable but not a complete tar
    now[0] = 16
    assert s.observe([f]) == [(f, "incomplete")]
    g = tmp_path / "c.tar"
    g.write_bytes(b"x" * 512 + b"\0" * 1024)
    s.mark_renamed(g)
    assert s.observe([g]) == [(g, "ready")]  # renamed from *.part: no waiting
    assert not is_candidate("x.tar.part") and not is_candidate(".hidden") and is_candidate("x.tar")


def test_logfmt_and_journald_prefix() -> None:
    rec = logging.LogRecord("hydra_bundle.agent", logging.WARNING, __file__, 1, "bundle quarantined", (), None)
    rec.kv = {"bundle": "demo", "detail": 'bad "sig" here', "n": 3, "none": None}
    line = LogfmtFormatter(journald=True).format(rec)
    assert line == '<4>level=warning msg="bundle quarantined" bundle=demo detail="bad \\"sig\\" here" n=3'
    assert LogfmtFormatter(journald=False).format(rec).startswith("time=")


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(sock_path))
        n = Notifier({"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "3000000"})
        assert n.enabled and n.watchdog_interval == 3.0
        n.ready("ok")
        assert srv.recv(4096).decode().startswith("READY=1\nSTATUS=ok")
        n.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")


@pytest.mark.slow
def test_agent_speaks_sd_notify_and_refuses_a_busy_port(tmp_path: Path, pub: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(sock_path))
        srv.settimeout(20)
        agent = AgentProc(tmp_path / "a", [pub])
        with agent:
            agent.start(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1500000"})
            got: list[str] = []
            while not (any(m.startswith("WATCHDOG=1") for m in got) and any(m.startswith("STATUS=") for m in got)):
                got.append(srv.recv(4096).decode())
            assert got[0].startswith("READY=1\nSTATUS=serving")
            # a second agent on the same state dir is refused
            second = run_cli("agent", "run", "--config", str(agent.config), timeout=30)
            assert second.returncode == 1 and "another agent is running" in second.stderr
        assert agent.proc is None
    # a port that is taken: one clear error, exit 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["registry"]["listen"] = f"127.0.0.1:{port}"
        cfg["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
        agent.config.write_text(yaml.safe_dump(cfg))
        res = run_cli("agent", "run", "--config", str(agent.config), timeout=30)
        assert res.returncode == 1
        assert f"registry: cannot listen on 127.0.0.1:{port}" in res.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "systemd/hydra-bundle-agent.service").read_text()
    # the unit in the tree is the one install.sh writes for the default prefix
    assert unit == installer.unit_text(Path("/opt/hydra-bundle"))
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=hydra-bundle", "ProtectSystem=strict",
                "ReadWritePaths=/var/lib/hydra-bundle/state /var/lib/hydra-bundle/drop /opt/hydra-bundle",
                "NoNewPrivileges=yes", "PrivateTmp=yes", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                "ExecStart=/opt/hydra-bundle/bin/hydra-bundle agent run",
                f"RestartForceExitStatus={installer.UPGRADE_EXIT}",
                "RestartPreventExitStatus=2", "LimitNOFILE="):
        assert key in unit
    exe = Path(sys.executable).parent / "hydra-bundle"  # this environment's entry point (not necessarily on PATH)
    assert exe.is_file()
    # verify needs ExecStart to exist: a prefix whose launcher is this environment's entry point
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "hydra-bundle").symlink_to(os.path.realpath(exe))
    (tmp_path / "hydra-bundle-agent.service").write_text(installer.unit_text(prefix))
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "hydra-bundle-agent.service")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr
