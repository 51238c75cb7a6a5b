"""The ``hydra-bundle`` CLI with one kill point armed: ``python -m tests.faults.killhook agent run --config …``.

With ``HYDRA_FAULT=POINT[@N]`` in the environment the process SIGKILLs itself (no cleanup, no atexit, exactly like
``kill -9``) the N-th time (default 1) it reaches POINT. The hooks wrap real functions of the agent without
changing what they do; POINTS says where each one fires.

With ``HYDRA_FAULT_FILL=DIR`` as well, reaching the armed point does not kill: it fills the filesystem holding DIR
(writes ``DIR/filler`` until ENOSPC) and the agent goes on, so the disk is full from exactly that point on. With
``HYDRA_FAULT_FILL_RESERVE=1`` it first deletes the store's journal reserve (``DIR/store/.reserve``) too, so not
even the journal can write any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

POINTS = {
    "blob-start": "a blob the store lacks is about to be written (no temp file yet)",
    "mid-blob": "half of a new blob's bytes are in its temp file",
    "batch-before-sync": "the step's (or part's) blobs are complete in tmp/, not yet synced nor renamed",
    "blob-before-rename": "a blob is complete and synced in tmp/, not yet renamed to its digest",
    "blob-after-rename": "a blob was renamed to its digest, the directory not yet fsynced",
    "ingest-before-done": "every blob is stored, the journal does not know yet",
    "between-steps": "ingest is recorded done, publish has not started",
    "publish-in-tx": "inside the publish transaction, store/index.json rewritten, before COMMIT",
    "publish-before-index": "every row of the publish transaction written (no COMMIT), store/index.json not yet "
                            "rewritten",
    "index-tmp-written": "the new store/index.json is written to tmp/, not yet renamed (before COMMIT)",
    "before-complete": "publish (or push) recorded done, the bundle not yet complete",
    "push-mid-upload": "a chunk of a blob upload was sent to the push registry",
    "push-before-manifest": "the blobs of a manifest are pushed, the manifest is not",
}
# apply:sql (tests/faults/test_sql_kill.py)
SQL_POINTS = {
    "sql-mid-rows": "an INSERT/UPDATE of the sql step's transaction was sent, the rest and COMMIT not",
    "sql-before-commit": "every row of the sql step is written, COMMIT not sent",
    "sql-after-commit": "the sql transaction is committed, the journal does not know yet",
}
# agent gc (tests/faults/test_gc_kill.py)
GC_POINTS = {
    "gc-before-tx": "the mark is done, nothing unpublished or deleted yet",
    "gc-in-tx": "every row of the unpublish transaction written, store/index.json rewritten, before COMMIT",
    "gc-after-commit": "unpublished and marked collected (committed), no blob unlinked yet",
    "gc-mid-sweep": "the N-th unmarked blob was unlinked, the rest are still there",
    "gc-before-event": "every blob unlinked, the history event not yet written",
}
# agent remove / rollback: their unpublish (tests/faults/test_remove_kill.py)
REMOVE_POINTS = {
    "unpublish-before-tx": "remove:unpublish started, nothing unpublished yet",
    "unpublish-in-tx": "every row of the unpublish transaction deleted, store/index.json rewritten, before COMMIT",
    "unpublish-after-commit": "unpublished (committed), the journal does not know the step is done",
    "remove-before-removed": "every remove step is done, the bundles are not marked removed yet",
}
EVERY = {**POINTS, **SQL_POINTS, **GC_POINTS, **REMOVE_POINTS}

_counts: dict[str, int] = {}
_writing_index = False  # inside the publish step's rewrite of store/index.json


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get("HYDRA_FAULT")
    if not spec:
        return None
    point, _, n = spec.partition("@")
    if point not in EVERY:
        raise SystemExit(f"HYDRA_FAULT: unknown point {point!r} (one of {', '.join(EVERY)})")
    return point, int(n or 1)


ARMED = _armed()


def _fill(d: Path) -> None:
    if os.environ.get("HYDRA_FAULT_FILL_RESERVE"):
        (d / "store" / ".reserve").unlink(missing_ok=True)
    with open(d / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    sys.stderr.write(f"killhook: filled {d} at {ARMED}\n")
    sys.stderr.flush()


def hit(point: str) -> None:
    if ARMED is None or ARMED[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == ARMED[1] and os.environ.get("HYDRA_FAULT_FILL"):
        _fill(Path(os.environ["HYDRA_FAULT_FILL"]))
    elif _counts[point] == ARMED[1]:
        sys.stderr.write(f"killhook: SIGKILL at {point}@{ARMED[1]}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _before_commit(db: Any, point: str) -> Iterator[None]:
    """While inside: every transaction of ``db`` reaches ``point`` after its last statement, before COMMIT."""
    orig_tx = db.tx

    @contextlib.contextmanager
    def tx() -> Iterator[Any]:
        with orig_tx() as c:
            yield c
            hit(point)

    db.tx = tx
    try:
        yield
    finally:
        del db.tx


def install() -> None:
    from hydra_bundle.agent import journal, published, store
    from hydra_bundle.bundle import reader
    from hydra_bundle.oci import client

    orig_put = store.Store.put_member

    def put_member(self: store.Store, member: reader.BlobMember, progress: Any = None) -> bool:
        if not self.has(member.digest, member.size):
            hit("blob-start")
        return orig_put(self, member, progress)

    store.Store.put_member = put_member  # type: ignore[method-assign]

    orig_sync = store.sync_files

    def sync_files(root: Any, paths: Any) -> None:
        hit("batch-before-sync")
        orig_sync(root, paths)

    store.sync_files = sync_files

    orig_read = reader.BlobMember.read_into

    def read_into(self: reader.BlobMember, sink: Callable[[memoryview], object] | None,
                  progress: Any = None) -> None:
        if sink is None or self.size == 0:
            return orig_read(self, sink, progress)
        done = 0
        fired = False

        def counting(chunk: memoryview) -> None:
            nonlocal done, fired
            sink(chunk)
            done += len(chunk)
            if not fired and done * 2 >= self.size:
                fired = True
                hit("mid-blob")

        return orig_read(self, counting, progress)

    reader.BlobMember.read_into = read_into  # type: ignore[method-assign]

    orig_replace = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        d = Path(dst)
        blob = d.parent.name == "sha256" and d.parent.parent.name == "blobs"
        if blob:
            hit("blob-before-rename")
        elif d.name == "index.json" and _writing_index:
            hit("index-tmp-written")
        orig_replace(src, dst, **kw)
        if blob:
            hit("blob-after-rename")

    os.replace = replace

    orig_finished = journal.Journal.step_finished

    def step_finished(self: journal.Journal, bundle_id: str, name: str, state: str, *a: Any, **kw: Any) -> None:
        if name == "ingest" and state == "done":
            hit("ingest-before-done")
        orig_finished(self, bundle_id, name, state, *a, **kw)
        if name in ("publish", "push") and state == "done":
            hit("before-complete")

    journal.Journal.step_finished = step_finished  # type: ignore[method-assign]

    orig_started = journal.Journal.step_started

    def step_started(self: journal.Journal, bundle_id: str, name: str) -> None:
        if name == "publish":  # after ingest (and the agent upgrade step, when the bundle has a kit)
            hit("between-steps")
        orig_started(self, bundle_id, name)

    journal.Journal.step_started = step_started  # type: ignore[method-assign]

    orig_publish = published.Published.publish

    def publish(self: published.Published, *a: Any, **kw: Any) -> None:
        with _before_commit(self.db, "publish-in-tx"):  # every row is written, COMMIT has not run
            orig_publish(self, *a, **kw)

    published.Published.publish = publish  # type: ignore[method-assign]

    orig_write_index = store.Store.write_index

    def write_index(self: store.Store, manifests: list[dict[str, Any]]) -> None:
        global _writing_index
        if manifests:
            hit("publish-before-index")
        _writing_index = bool(manifests)
        try:
            orig_write_index(self, manifests)
        finally:
            _writing_index = False

    store.Store.write_index = write_index  # type: ignore[method-assign]

    orig_request = client.RegistryClient.request

    def request(self: client.RegistryClient, method: str, *a: Any, **kw: Any) -> Any:
        resp = orig_request(self, method, *a, **kw)
        if method == "PATCH":
            hit("push-mid-upload")
        return resp

    client.RegistryClient.request = request  # type: ignore[method-assign]

    orig_put_manifest = client.RegistryClient.put_manifest

    def put_manifest(self: client.RegistryClient, *a: Any, **kw: Any) -> str:
        hit("push-before-manifest")
        return orig_put_manifest(self, *a, **kw)

    client.RegistryClient.put_manifest = put_manifest  # type: ignore[method-assign]

    import pymysql

    orig_execute = pymysql.cursors.Cursor.execute

    def execute(self: Any, query: str, args: Any = None) -> int:
        n = orig_execute(self, query, args)
        if query.lstrip().startswith(("INSERT", "UPDATE")):
            hit("sql-mid-rows")
        return n

    pymysql.cursors.Cursor.execute = execute  # type: ignore[method-assign]

    orig_commit = pymysql.connections.Connection.commit

    def commit(self: Any) -> None:
        hit("sql-before-commit")
        orig_commit(self)
        hit("sql-after-commit")

    pymysql.connections.Connection.commit = commit  # type: ignore[method-assign]

    _install_gc()
    _install_remove()


def _install_gc() -> None:
    from hydra_bundle.agent import gc, journal

    orig_unpublish = gc.unpublish

    def unpublish(j: journal.Journal, *a: Any, **kw: Any) -> tuple[int, int]:
        hit("gc-before-tx")
        with _before_commit(j.db, "gc-in-tx"):  # rows written and index.json rewritten, COMMIT has not run
            return orig_unpublish(j, *a, **kw)

    gc.unpublish = unpublish

    orig_sweep = gc.sweep

    def sweep(store: Any, plan: Any) -> int:
        hit("gc-after-commit")
        orig_unlink = Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            orig_unlink(self, missing_ok=missing_ok)
            if self.parent == store.blobs:
                hit("gc-mid-sweep")

        Path.unlink = unlink  # type: ignore[method-assign]
        try:
            return orig_sweep(store, plan)
        finally:
            Path.unlink = orig_unlink  # type: ignore[method-assign]

    gc.sweep = sweep

    orig_event = journal.Journal.event

    def event(self: journal.Journal, bundle_id: str | None, name: str | None, version: str | None, ev: str,
              detail: str | None = None) -> None:
        if ev == "gc":
            hit("gc-before-event")
        orig_event(self, bundle_id, name, version, ev, detail)

    journal.Journal.event = event  # type: ignore[method-assign]


def _install_remove() -> None:
    from hydra_bundle.agent import journal, published, unpublish

    orig_unpublish = unpublish.unpublish

    def unpublish_(j: journal.Journal, *a: Any, **kw: Any) -> tuple[int, int, int]:
        hit("unpublish-before-tx")
        out = orig_unpublish(j, *a, **kw)
        hit("unpublish-after-commit")
        return out

    unpublish.unpublish = unpublish_
    for mod in _importers("unpublish", orig_unpublish):
        mod.unpublish = unpublish_

    orig_tx = published.Published.unpublish

    def published_unpublish(self: published.Published, ids: list[str], blobs: set[str],
                            before_commit: Callable[[], None] | None = None) -> tuple[int, int, int]:
        def hooked() -> None:
            if before_commit is not None:
                before_commit()
            hit("unpublish-in-tx")  # rows deleted and index.json rewritten, COMMIT has not run
        return orig_tx(self, ids, blobs, hooked)

    published.Published.unpublish = published_unpublish  # type: ignore[method-assign]

    orig_state = journal.Journal.set_state

    def set_state(self: journal.Journal, bundle_id: str, state: str, *a: Any, **kw: Any) -> None:
        if state == "removed":
            hit("remove-before-removed")
        orig_state(self, bundle_id, state, *a, **kw)

    journal.Journal.set_state = set_state  # type: ignore[method-assign]


def _importers(name: str, fn: Any) -> list[Any]:
    """Modules that did ``from .unpublish import unpublish`` (they hold the original function)."""
    import importlib

    out = []
    for m in ("hydra_bundle.agent.remove", "hydra_bundle.agent.rollback"):
        mod = importlib.import_module(m)
        if getattr(mod, name, None) is fn:
            out.append(mod)
    return out


if __name__ == "__main__":
    if ARMED is not None:
        install()
    from hydra_bundle.cli.main import main

    sys.argv[0] = "hydra-bundle"
    main()
