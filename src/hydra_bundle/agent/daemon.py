"""``agent run``: start the servers, tell systemd we are ready, then loop: watch → settle → pipeline.

The loop thread runs one bundle at a time; the servers answer from their own threads meanwhile. A heartbeat
thread sends ``WATCHDOG=1`` only while the loop (or a running step's progress) shows signs of life, so a hung
agent is restarted by systemd. SIGTERM/SIGINT stop at the next blob boundary; the journal resumes there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import Cancelled, HydraError
from ..kit.installer import UPGRADE_EXIT
from ..states import BundleState, Outcome
from . import gc, upgrade
from .auth import Htpasswd
from .config import AgentConfig
from .file_server import FileHandler
from .httpbase import Server
from .lock import PipelineLock
from .metrics import Metrics, MetricsHandler
from .notify import Notifier
from .pipeline import RESTART, Pipeline, Result
from .readiness import Readiness
from .registry_server import RegistryHandler
from .schema import open_database
from .servetls import registry_tls
from .settle import Settler, Verdict
from .watch import Watcher, scan

log = logging.getLogger("hydra_bundle.agent")


def raise_open_files_limit(want: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one (systemd's default soft limit is 1024): every client
    connection is a descriptor. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(configured: int, servers: int) -> int:
    """Connections per server: what is configured, but never so many that the servers together could use up the
    open-files limit the pipeline (store, journal, watcher) also needs."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return configured
    room = max(16, (soft - 256) // max(1, servers) // 2)  # a connection can hold a socket and a sqlite fd
    return max(1, min(configured, room))


class Agent:
    def __init__(self, config: AgentConfig, notifier: Notifier | None = None):
        self.config = config
        config.drop_dir.mkdir(parents=True, exist_ok=True)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.metrics = Metrics()
        self.db = open_database(config.journal_path)
        self.pipeline = Pipeline(config, self.db, self.stop, self._progress, self._on_result, self._activity,
                                 daemon=True)
        self.upgraded = False    # a step installed a newer agent: exit UPGRADE_EXIT for systemd to start it
        self.metrics.attach(self.pipeline.journal, self.pipeline.published)
        keep = config.retention.keep if config.retention is not None else None
        self.metrics.attach_reclaimable(gc.Reclaimable(self.pipeline.journal, self.pipeline.store, keep))
        self.notifier = notifier or Notifier()
        self.settler = Settler(config.settle_seconds, config.incomplete_timeout)
        self.watcher = Watcher(config.drop_dir, self.settler, self.wake)
        self.servers: list[Server] = []
        self.alive = time.monotonic()
        self.busy: str | None = None
        self.activity: str | None = None     # what the running step reports (systemd STATUS=)
        self._lock_fd: int | None = None

    # ---------------------------------------------------------------- hooks

    def _progress(self, n: int) -> None:
        self.alive = time.monotonic()
        self.metrics.ingested.inc(n)
        if self.stop.is_set():
            raise Cancelled("the agent is stopping")

    def _activity(self, text: str) -> None:
        self.activity = text

    def _on_result(self, r: Result) -> None:
        self.metrics.results.labels(r.state).inc()
        if r.reason == RESTART:
            log.info("restarting into the new agent", extra={"kv": {"detail": r.detail}})
            self.upgraded = True
            self.stop.set()
            self.wake.set()
        elif r.state == Outcome.COMPLETE and self.config.retention is not None and self.config.retention.after_run:
            self._collect()

    def _collect(self) -> None:
        """Retention after a bundle completed: gc under the pipeline lock (a failure is logged, never fatal)."""
        assert self.config.retention is not None
        p = self.pipeline
        try:
            with p.locked(task="gc"):
                rep = gc.collect(p.journal, p.published, p.store, self.config.retention.keep)
        except (HydraError, OSError, sqlite3.Error) as e:
            log.warning("gc after the run failed", extra={"kv": {"error": str(e)}})
            return
        if rep.plan.bundles or rep.freed:
            log.info("gc", extra={"kv": {"collected": ",".join(f"{b.name} {b.version}" for b in rep.plan.bundles),
                                         "references": rep.references, "bytes_freed": rep.freed}})

    def health(self) -> dict[str, Any]:
        try:
            counts = self.pipeline.journal.state_counts()
        except Exception as e:
            return {"ok": False, "error": str(e)}
        out = {"ok": not self.stop.is_set(), "bundles": counts, "busy": self.busy}
        if self.pipeline.journal.unrecorded:  # failures the journal could not take (disk full)
            out["unrecordedFailures"] = dict(self.pipeline.journal.unrecorded)
        return out

    # ---------------------------------------------------------------- lifecycle

    def _single_instance(self) -> None:
        fd = os.open(self.config.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HydraError(f"another agent is running on {self.config.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def start_servers(self) -> None:
        ctx = {"published": self.pipeline.published, "store": self.pipeline.store, "metrics": self.metrics,
               "health": self.health, "readiness": Readiness(self.pipeline.store, self.stop)}
        servers = [(name, listen, handler) for name, listen, handler in (
            ("registry", self.config.registry, RegistryHandler), ("files", self.config.files, FileHandler),
            ("metrics", self.config.metrics, MetricsHandler)) if listen is not None]
        cap = connection_cap(self.config.limits.max_connections, len(servers))
        tls = registry_tls(self.config)
        reg = self.config.registry
        users = Htpasswd(reg.htpasswd) if reg is not None and reg.htpasswd is not None else None
        if tls is not None:
            log.info("registry serves HTTPS", extra={"kv": {"certificate": tls.source, "hosts": ",".join(tls.hosts)}})
        elif self.config.registry is not None:
            log.warning("registry serves plain HTTP (registry.tls: false): every node must be configured to treat "
                        "it as insecure, and anyone on the network can read or change what it pulls",
                        extra={"kv": {"address": self.config.registry.listen}})
        for name, listen, handler in servers:
            assert listen is not None
            try:
                srv = Server(name, listen.address, handler, self.metrics.observe, max_connections=cap,
                             header_timeout=self.config.limits.header_timeout,
                             ssl_context=tls.context if tls is not None and name == "registry" else None,
                             **ctx, **({"htpasswd": users} if name == "registry" and users else {}))
            except OSError as e:
                self.stop_servers()
                hint = " (ports < 1024 need CAP_NET_BIND_SERVICE)" if e.errno == 13 else ""
                raise HydraError(f"{name}: cannot listen on {listen.listen}: {e.strerror}{hint}") from None
            srv.start()
            self.servers.append(srv)
            log.info("listening", extra={"kv": {"server": name, "address": listen.listen, "max_connections": cap}})

    def stop_servers(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers.clear()

    def _heartbeat(self) -> None:
        interval = self.notifier.watchdog_interval
        period = max(0.5, (interval or 10.0) / 3)
        while not self.stop.wait(period):
            if interval is None or time.monotonic() - self.alive < interval:
                self.notifier.watchdog()
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        if self.busy:
            return f"working: {self.activity or self.busy}"[:200]
        n = self.health().get("bundles", {})
        return f"serving; {n.get('complete', 0)} complete, {n.get('quarantined', 0)} quarantined bundles"

    def run(self) -> int:
        self._single_instance()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        with self.pipeline.locked():
            n = self.pipeline.journal.recover()
            t = self.pipeline.store.clean_tmp()
        if n or t:
            log.info("recovered after an unclean stop", extra={"kv": {"steps_resumed": n, "temp_files_removed": t}})
        nofile = raise_open_files_limit()
        log.debug("open files limit", extra={"kv": {"soft": nofile}})
        self.start_servers()
        self.watcher.start()
        self.notifier.ready(self._status_line())
        upgrade.started(self.pipeline.journal)  # serving: a pending upgrade to this version succeeded
        log.info("agent ready", extra={"kv": {"version": __version__, "drop_dir": str(self.config.drop_dir),
                                              "state_dir": str(self.config.state_dir), "pid": os.getpid()}})
        hb = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        hb.start()
        try:
            self._resume((BundleState.RECEIVED, BundleState.RUNNING))
            self._loop()
        finally:
            self.notifier.stopping()
            log.info("agent stopping")
            self.stop.set()
            self.watcher.stop()
            self.stop_servers()
            self.db.close()
        return UPGRADE_EXIT if self.upgraded else 0

    def _on_signal(self, *_args: object) -> None:
        self.stop.set()
        self.wake.set()

    def _resume(self, states: tuple[BundleState, ...], older_than: float | None = None) -> None:
        for row in self.pipeline.journal.bundles(states):
            if self.stop.is_set():
                return
            if older_than is not None and (row.updated_at or 0) > older_than:
                continue
            if row.state == BundleState.RUNNING and self._run_elsewhere(row.id):
                continue
            self.busy = f"{row.name} {row.version}"
            try:
                self.pipeline.resume(row.id)
            except Exception:
                log.exception("resume failed", extra={"kv": {"bundle": row.name, "digest": row.id}})
            finally:
                self.busy = self.activity = None

    def _run_elsewhere(self, bundle_id: str) -> bool:
        """Is another process (``agent ingest``/``apply``) running this bundle now (or one it cannot name), or
        holding the pipeline for a task of its own (``agent gc``)? Then it is not resumed now but later."""
        with PipelineLock.probe(self.config.state_dir) as h:
            return h.busy and (h.task is not None or h.bundle in (None, bundle_id))

    def _loop(self) -> None:
        next_scan = 0.0
        next_retry = time.monotonic() + self.config.retry_interval
        settle_due: float | None = None  # when a watched file may have settled (its timer must wake the scan)
        while not self.stop.is_set():
            now = time.monotonic()
            self.alive = now
            if now >= next_scan or self.wake.is_set() or (settle_due is not None and now >= settle_due):
                self.wake.clear()
                for path, verdict in self.settler.observe(scan(self.config.drop_dir)):
                    if self.stop.is_set():
                        break
                    self._handle(path, verdict)
                if now >= next_scan:
                    next_scan = now + self.config.poll_interval
            if now >= next_retry:  # a `running` row nothing runs: its failure could not be recorded (disk full)
                self._resume((BundleState.FAILED, BundleState.WAITING, BundleState.RUNNING),
                             older_than=time.time() - self.config.retry_interval)
                next_retry = now + self.config.retry_interval
            waits = [next_scan - time.monotonic(), next_retry - time.monotonic()]
            pending = self.settler.next_check()
            settle_due = None if pending is None else time.monotonic() + pending
            if pending is not None:
                waits.append(pending)
            self.wake.wait(max(0.05, min(waits)))

    def _handle(self, path: Path, verdict: Verdict) -> None:
        self.busy = path.name
        log.info("bundle file settled" if verdict == Verdict.READY else "bundle file stable but incomplete",
                 extra={"kv": {"file": str(path)}})
        try:
            res = self.pipeline.process_file(path)
        except Exception:
            log.exception("pipeline error", extra={"kv": {"file": str(path)}})
            self.settler.retry(path, self.config.retry_interval)
            return
        finally:
            self.busy = self.activity = None
        if res.state == Outcome.UNSETTLED:
            self.settler.retry(path)
        elif res.reason == "journal-error":  # e.g. the disk is full: try the file again later
            self.settler.retry(path, self.config.retry_interval)
