"""``/healthz`` on the registry and file listeners: is this agent fit to take pulls (a load balancer's probe)?

Ready means the servers can answer from what was published: the agent is not stopping, the journal's published
view can be read, the store's blob directory is there, and the newest and the oldest published blobs (up to
``SAMPLE`` of each) are in it at their verified size: an unmounted or wiped store volume says 503 instead of
answering every pull 404.
The body is small and holds nothing secret or unverified: counts and a fingerprint of the published references,
so an operator can compare agents behind one address (the same bundles give the same fingerprint).
No authentication: a probe has no credentials, and nothing here names an image."""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from .published import Published
from .store import Store

log = logging.getLogger("hydra_bundle.agent")
SAMPLE = 32     # the newest and the oldest published blobs checked per probe (a stat each: well under a ms)


class Readiness:
    def __init__(self, store: Store, stopping: threading.Event | None = None):
        self.store = store
        self.stopping = stopping
        self._last: str | None = None       # the last reason logged (a probe every few seconds logs a change once)
        self._lock = threading.Lock()

    def check(self, published: Published) -> tuple[bool, dict[str, Any]]:
        """(ready, JSON body)."""
        reason, detail, body = self._check(published)
        self._log(reason, detail)
        if reason is not None:
            return False, {"ready": False, "reason": reason}
        return True, {"ready": True, **body}

    def _check(self, published: Published) -> tuple[str | None, str, dict[str, Any]]:
        if self.stopping is not None and self.stopping.is_set():
            return "stopping", "the agent is shutting down", {}
        try:
            counts = published.db.query("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM blobs")[0]
            sample = published.db.query(
                f"SELECT digest, size FROM (SELECT digest, size FROM blobs ORDER BY published_at DESC, digest "
                f"LIMIT {SAMPLE}) UNION SELECT digest, size FROM (SELECT digest, size FROM blobs "
                f"ORDER BY published_at, digest LIMIT {SAMPLE})")
            refs = published.db.query("SELECT repo, tag, digest FROM refs ORDER BY repo, tag")
            paths = published.db.query("SELECT COUNT(*) AS n FROM paths")[0]["n"]
        except Exception as e:  # sqlite3.Error, OSError: the journal cannot be read
            return "journal unavailable", repr(e), {}
        if not self.store.blobs.is_dir():
            return "store unavailable", f"{self.store.blobs} is not a directory", {}
        for row in sample:
            try:
                size = self.store.path(row["digest"]).stat().st_size
            except OSError as e:
                return "store unavailable", f"published blob {row['digest']}: {e.strerror}", {}
            if size != row["size"]:
                return "store unavailable", f"published blob {row['digest']} has {size} bytes, not {row['size']}", {}
        h = hashlib.sha256()
        for r in refs:
            h.update(f"{r['repo']}:{r['tag']}={r['digest']}\n".encode())
        return None, "", {"published": {"blobs": int(counts["n"]), "bytes": int(counts["bytes"]),
                                        "references": len(refs), "files": int(paths),
                                        "fingerprint": h.hexdigest()[:16]}}

    def _log(self, reason: str | None, detail: str) -> None:
        with self._lock:
            if reason == self._last:
                return
            self._last = reason
        if reason is None:
            log.info("ready for pulls again (/healthz 200)")
        else:
            log.warning("not ready for pulls (/healthz 503)", extra={"kv": {"reason": reason, "detail": detail}})
