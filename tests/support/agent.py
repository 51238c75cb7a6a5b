"""The agent as a real subprocess on free loopback ports, plus helpers to build bundles with the real builder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from hydra_bundle.builder.build import Builder, BuildOptions, BuildResult
from hydra_bundle.spec import load_spec
from tests.support.registry import free_port

CLI = [sys.executable, "-m", "hydra_bundle.cli.main"]


def run_cli(*args: str, check: bool = False, timeout: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=check,
                          env={**os.environ, **(env or {})})


def build_bundle(workdir: Path, spec: dict[str, Any], key: Path, out: Path, insecure: set[str],
                 expires: str | None = None, cache: Path | None = None) -> BuildResult:
    """Write ``spec`` to WORKDIR/<name>-<version>.yaml and build it with the real builder."""
    workdir.mkdir(parents=True, exist_ok=True)
    md = spec["metadata"]
    spec_path = workdir / f"{md['name']}-{md['version']}.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    opts = BuildOptions(cache_dir=cache or workdir / "cache", key_path=key, insecure=set(insecure),
                        expires=expires, jobs=2, agent_kit=False)
    return Builder(load_spec(spec_path), opts).build(out)


def wait_for(pred: Callable[[], Any], timeout: float = 30, what: str = "condition", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class AgentProc:
    """``hydra-bundle agent run`` in a subprocess; config written from keyword overrides."""

    def __init__(self, root: Path, trusted_keys: list[Path], **overrides: Any):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.drop = self.root / "drop"
        self.state = self.root / "state"
        self.registry_port, self.files_port, self.metrics_port = free_port(), free_port(), free_port()
        cfg: dict[str, Any] = {
            "drop_dir": str(self.drop), "state_dir": str(self.state),
            "trusted_keys": [str(k) for k in trusted_keys],
            # plain HTTP said explicitly (the default is HTTPS): most tests talk to the registry without a CA
            "registry": {"listen": f"127.0.0.1:{self.registry_port}", "tls": False},
            "files": {"listen": f"127.0.0.1:{self.files_port}"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "settle_seconds": 0.6, "poll_interval": 1.0, "incomplete_timeout": 4.0, "retry_interval": 1.0,
        }
        cfg.update(overrides)
        self.config = self.root / "agent.yaml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log = self.root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}      # extra environment of the agent and of `cli` commands
        self.preexec: Callable[[], None] | None = None  # run in the child before exec (e.g. a lower rlimit)
        self.cmd: list[str] = list(CLI)    # the hydra-bundle to run (an installed agent: [PREFIX/bin/hydra-bundle])
        self.wrap: list[str] = []          # run `agent run` under this (a network namespace, a supervisor)

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self.files_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> AgentProc:
        self.drop.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.wrap, *self.cmd, "agent", "run", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env, **(env or {})},
                                         preexec_fn=self.preexec)
        if wait:
            wait_for(self._healthy, 30, f"agent ready\n{self.log_tail()}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}\n{self.log_tail()}")
        try:
            return httpx.get(f"{self.metrics_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        rc, self.proc = self.proc.returncode, None
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self.cmd, "agent", *args, "--config", str(self.config)], capture_output=True,
                             text=True, timeout=120, env={**os.environ, **self.env})
        if check and res.returncode != 0:
            raise AssertionError(f"agent {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def status(self) -> list[dict[str, Any]]:
        if not (self.state / "journal.db").exists():
            return []
        return json.loads(self.cli("status", "--json").stdout)["bundles"]

    def bundle(self, name: str, version: str) -> dict[str, Any] | None:
        found = [b for b in self.status() if b["name"] == name and b["version"] == version]
        return found[-1] if found else None

    def wait_state(self, name: str, version: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            b = self.bundle(name, version)
            return b if b is not None and b["state"] == state else None

        try:
            return wait_for(check, timeout, f"{name} {version} {state}", interval=0.25)  # type: ignore[no-any-return]
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {self.bundle(name, version)}\n{self.log_tail()}") from None

    def drop_file(self, src: Path, name: str | None = None) -> Path:
        """Copy like an operator with rsync: write NAME.part, then rename (instant for the agent)."""
        name = name or src.name
        self.drop.mkdir(parents=True, exist_ok=True)
        part = self.drop / f"{name}.part"
        shutil.copyfile(src, part)
        dest = self.drop / name
        os.rename(part, dest)
        return dest

    def quarantined(self) -> list[dict[str, Any]]:
        q = self.state / "quarantine"
        if not q.exists():
            return []
        return [json.loads(p.read_text()) for p in sorted(q.glob("*.reason.json"))]

    def __enter__(self) -> AgentProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
