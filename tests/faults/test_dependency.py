"""Dependency faults: the push registry dies mid-push (after a random number of uploaded bytes) and comes back;
the store's filesystem (a small tmpfs) is full before an ingest, fills up in the middle of one, or fills up during
publish (then the journal itself cannot be written). Each must fail cleanly (a reason in the status, no partial
blob, no temp file) and converge once the dependency is back."""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import _skip_or_fail
from tests.faults.conftest import Bundles, Keys, Reference, complete, make_agent
from tests.faults.support import (
    SEED,
    TIMEOUT,
    FaultAgent,
    Tally,
    bundle_states,
    check_served_blobs,
    check_store,
    journal,
    journal_status,
    leftovers,
    registry_tags,
    rng,
    served_state,
    store_blobs,
    trials,
    wait_until,
)
from tests.support.registry import Registry

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]


class RestartableRegistry(Registry):
    """A docker-registry that can be killed and started again on the same port with the same storage."""

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self.binary, "serve", str(self.config_path)], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        err = self._wait_ready(20)
        assert err is None, err


class TripProxy:
    """TCP forwarder to ``upstream``; once ``trip_at`` request bytes went through it calls ``on_trip`` (once)."""

    def __init__(self, upstream: int, trip_at: int, on_trip: Callable[[], None]):
        self.upstream, self.trip_at, self.on_trip = upstream, trip_at, on_trip
        self.sent = 0
        self.tripped = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self.lock:
                        self.sent += len(data)
                        trip = self.sent >= self.trip_at and not self.tripped.is_set()
                        if trip:
                            self.tripped.set()
                    if trip:
                        self.on_trip()
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.sock.close()


def push_trial(root: Path, b: Bundles, keys: Keys, ref: Reference, trip_at: int, down: float) -> int:
    """Returns the push step's attempts until it converged."""
    with RestartableRegistry() as reg:
        proxy = TripProxy(reg.port, trip_at, reg.kill)
        agent = make_agent(root, keys, f"127.0.0.1:{proxy.port}", limits={})
        try:
            agent.start_armed(None)
            agent.wait_healthy()
            agent.drop_file(b.rich.path)
            assert proxy.tripped.wait(60), f"push never reached the trip point\n{agent.log_tail()}"
            wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") == "failed", 60,
                       f"push failed\n{agent.log_tail()}")
            st = journal_status(agent.state)[0]
            assert st["reason"] == "step-failed" and st["detail"].startswith("push:"), st
            # published meanwhile: the embedded registry serves while the push waits
            assert served_state(agent)["tags"] == ref.served["tags"]
            time.sleep(down)  # retries (retry_interval 1 s) fail while it is down
            reg.restart()
            wait_until(lambda: complete(agent), 60, f"push converged\n{agent.log_tail()}")
            push = next(s for s in journal_status(agent.state)[0]["steps"] if s["name"] == "push")
            assert registry_tags(reg.host, b.repos) == ref.pushed, f"seed {SEED}"
            return int(push["attempts"])
        finally:
            agent.stop()
            proxy.close()


def test_push_registry_dies_mid_push_and_comes_back(fault_bundles: Bundles, fault_keys: Keys, reference: Reference,
                                                   tmp_path: Path) -> None:
    b = fault_bundles.rich
    pushed = {d for c in [*b.index.components.images, *b.index.components.charts] for d in c.blobs}
    total = sum(x.size for x in b.index.blobs if x.digest in pushed)
    r = rng("push-outage")
    n = trials(2)
    tally = Tally("dependency: push registry killed mid-push, restarted", trials=n, na=("refused",))
    attempts = []
    for i in range(n):
        attempts.append(push_trial(tmp_path / f"a{i}", fault_bundles, fault_keys, reference,
                                   int(total * r.uniform(0.05, 0.8)), r.uniform(1.0, 3.0)))
        tally.converged += 1
    tally.notes.append(f"push attempts until converged: {attempts} (a failed step is retried every retry_interval)")
    tally.save()


# ---------------------------------------------------------------- disk full (tmpfs)

@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        _skip_or_fail(f"cannot mount a tmpfs for the disk-full trials (needs root/CAP_SYS_ADMIN): {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def fill(path: Path) -> Path:
    """Write zeros until the filesystem is full."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def converged_like_reference(agent: FaultAgent, ref: Reference, b: Bundles) -> None:
    got = served_state(agent)
    for key in ("tags", "blobs", "store_index"):
        assert got[key] == ref.served[key], key
    assert check_served_blobs(agent) == [] and check_store(agent.state, b.rich.sizes) == []


def test_store_full_before_ingest(fault_bundles: Bundles, fault_keys: Keys, reference: Reference,
                                  tmp_path: Path) -> None:
    tally = Tally("dependency: store filesystem too small (tmpfs), then grown", trials=1)
    state = tmp_path / "a" / "state"
    with tmpfs(state, "2m"), FaultAgent(tmp_path / "a", [fault_keys.pub], limits={"min_free_bytes": 0}) as agent:
        agent.start()
        agent.drop_file(fault_bundles.rich.path)
        wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") == "failed", 30,
                   f"failed\n{agent.log_tail()}")
        st = journal_status(agent.state)[0]
        assert st["detail"].startswith("ingest:") and "free" in st["detail"], st
        tally.refused += 1
        assert store_blobs(agent.state) == {} and leftovers(agent.state) == []
        remount(state, "64m")
        wait_until(lambda: complete(agent), 30, f"complete after remount\n{agent.log_tail()}")
        converged_like_reference(agent, reference, fault_bundles)
        tally.converged += 1
        tally.notes.append(f"reason: {st['detail'][:160]}")
    tally.save()


def test_store_fills_up_mid_ingest(fault_bundles: Bundles, fault_keys: Keys, reference: Reference,
                                   tmp_path: Path) -> None:
    """The space check passed, then something else filled the disk: the write fails with ENOSPC mid-blob."""
    tally = Tally("dependency: store filesystem fills up mid-ingest (ENOSPC), then freed", trials=1)
    state = tmp_path / "a" / "state"
    with tmpfs(state, "64m"):
        agent = FaultAgent(tmp_path / "a", [fault_keys.pub],
                           limits={"min_free_bytes": 0, "ingest_bytes_per_second": 1_000_000})
        with agent:
            agent.start()
            agent.drop_file(fault_bundles.rich.path)
            # the step's blobs wait in store/tmp until the batch is synced at its end
            wait_until(lambda: len(list((agent.state / "store" / "tmp").iterdir())) >= 3, 30, "ingest under way")
            filler = fill(state)
            wait_until(lambda: bundle_states(agent.state).get("rich 1.0.0") not in (None, "running", "received"),
                       30, f"ingest stopped\n{agent.log_tail()}")
            st = journal_status(agent.state)[0]
            assert st["state"] == "failed" and "No space left on device" in (st["detail"] or ""), st
            tally.refused += 1
            assert check_store(agent.state, fault_bundles.rich.sizes) == []
            assert leftovers(agent.state) == []
            assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == []
            filler.unlink()
            wait_until(lambda: complete(agent), 30, f"complete after space freed\n{agent.log_tail()}")
            converged_like_reference(agent, reference, fault_bundles)
            tally.converged += 1
            tally.notes.append(f"reason: {st['detail'][:160]}")
    tally.save()


@pytest.mark.parametrize(("point", "no_reserve"), [("between-steps", False), ("publish-before-index", False),
                                                  ("publish-in-tx", False), ("between-steps", True)],
                         ids=["journal", "index", "commit", "journal-no-reserve"])
def test_disk_full_while_publishing(point: str, no_reserve: bool, fault_bundles: Bundles, fault_keys: Keys,
                                    reference: Reference, tmp_path: Path) -> None:
    """Every blob fits, then the disk (store and journal: one tmpfs) fills at ``point`` (killhook with
    HYDRA_FAULT_FILL): the journal write that starts publish, store/index.json or the publish COMMIT fails.
    The status must say failed with a reason (never ``running``), nothing may be served, the bundle stays failed
    while the disk is full, and once space is freed the next retry converges to the state of a clean run.
    ``no_reserve``: the journal's reserve is gone too, so not even the failure can be written to the journal: the
    reason must still show (from journal.fallback)."""
    tally = Tally(f"dependency: disk fills up during publish ({point}{', no journal reserve' if no_reserve else ''}), "
                  "then freed", trials=1)
    state = tmp_path / "a" / "state"
    with tmpfs(state, "64m"):
        agent = FaultAgent(tmp_path / "a", [fault_keys.pub], limits={"min_free_bytes": 0})
        with agent:
            agent.start_armed(point, fill=state, fill_reserve=no_reserve)
            agent.wait_healthy()
            agent.drop_file(fault_bundles.rich.path)
            filler = state / "filler"
            wait_until(filler.exists, 30, f"the disk filled at {point}\n{agent.log_tail()}")

            def settled() -> dict[str, Any] | None:
                st = journal_status(agent.state)
                return st[0] if st and st[0]["state"] not in ("received", "running") else None

            wait_until(settled, 30, f"publish failed\n{agent.log_tail()}")

            def failed_in_cli() -> dict[str, Any] | None:  # what `agent status --json` says (not mid-retry)
                b = agent.bundle("rich", "1.0.0")
                return b if b is not None and b["state"] == "failed" else None

            st = wait_until(failed_in_cli, 10, f"status failed\n{agent.bundle('rich', '1.0.0')}")
            assert st["reason"] == "step-failed" and st["detail"].startswith("publish: disk full while publishing"), st
            steps = {s["name"]: s for s in st["steps"]}
            assert steps["ingest"]["state"] == "done", steps
            assert steps["publish"]["state"] == "failed" and "disk full" in steps["publish"]["detail"], steps
            if no_reserve:  # the journal still says running; status and /healthz know better
                assert bundle_states(agent.state) == {"rich 1.0.0": "running"}
                assert "journal.fallback" in st["detail"], st
                health = httpx.get(f"{agent.metrics_url}/healthz").json()
                assert "disk full while publishing" in health["unrecordedFailures"][st["id"]]["detail"], health
            tally.refused += 1

            def nothing_served() -> None:
                assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == []
                assert journal(agent.state, "SELECT COUNT(*) FROM refs")[0][0] == 0
                assert json.loads((state / "store" / "index.json").read_bytes())["manifests"] == []
                assert check_store(agent.state, fault_bundles.rich.sizes) == []

            nothing_served()
            time.sleep(2.5)  # retries (retry_interval 1 s) fail the same way while the disk is full
            st2 = wait_until(settled, 5, "still failed")
            assert st2["state"] == "failed" and "disk full while publishing" in (st2["detail"] or ""), st2
            nothing_served()
            filler.unlink()
            wait_until(lambda: complete(agent), 30, f"complete after space freed\n{agent.log_tail()}")
            converged_like_reference(agent, reference, fault_bundles)
            assert [(s["name"], s["state"]) for s in journal_status(agent.state)[0]["steps"]] == [
                ("ingest", "done"), ("publish", "done")]
            assert leftovers(agent.state) == []
            if no_reserve:
                assert "unrecordedFailures" not in httpx.get(f"{agent.metrics_url}/healthz").json()
            tally.converged += 1
            tally.notes.append(f"reason: {st['detail'][:160]}")
    tally.save()
