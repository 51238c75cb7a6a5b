"""Shared plumbing of the agent's HTTP servers: a threading server bound to exactly the configured address,
JSON answers, and file bodies sent with ``sendfile`` (single ``Range`` → 206, unsatisfiable → 416)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .published import Published
from .readiness import Readiness
from .store import Store

log = logging.getLogger("hydra_bundle.agent")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

Observer = Callable[[str, str, int, int], None]  # (server, method, status, bytes sent)
DISCARD_MAX = 1 << 20       # a refused request's body read and dropped; a larger one closes the connection
LINGER_MAX = 4 << 20        # bytes drained after the answer before a connection closes
LINGER_SECONDS = 2.0


class Server(ThreadingHTTPServer):
    """A thread per connection, bounded: at most ``max_connections`` open at once (more are closed as soon as
    they are accepted, so the listen queue never fills), and a connection that has not sent a request's headers
    ``header_timeout`` seconds after it opened or finished its last request is shut down by a reaper — a
    client sending one byte every few seconds cannot keep a thread either. Every read and write of a body has
    the same timeout. Nothing a client does reaches the daemon: handler errors are logged and the connection
    closed."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, name: str, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 observe: Observer | None = None, max_connections: int = 4096, header_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, **context: Any):
        self.name = name
        self.context = context
        self.observe = observe or (lambda *_a: None)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.header_timeout = header_timeout
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._waiting: dict[socket.socket, float] = {}   # connections between requests → deadline
        self._waiting_lock = threading.Lock()
        self.refused = 0                                 # connections closed because every slot was taken
        self.reaped = 0                                  # connections shut down by the header timeout
        super().__init__(address, handler)
        self.thread: threading.Thread | None = None
        self._reaper: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                       name=f"{self.name}-server", daemon=True)
        self.thread.start()
        self._reaper = threading.Thread(target=self._reap, name=f"{self.name}-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stopping.set()
        if self.thread is not None:
            self.shutdown()
            self.thread.join(timeout=5)
        self.server_close()

    # ---------------------------------------------------------------- bounded connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # full: closed at once, the thread and the fd are not spent
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                request.settimeout(self.header_timeout)
                try:  # the handshake runs here, in the connection's thread: never in the accept loop
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as e:
                    log.debug("TLS handshake failed", extra={"kv": {"server": self.name, "client": client_address,
                                                                    "error": str(e)}})
                    with contextlib.suppress(OSError):
                        request.close()
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.awaiting_done(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("client connection error", extra={"kv": {"server": self.name, "client": client_address,
                                                           "error": repr(sys.exc_info()[1])}})

    def awaiting_request(self, conn: socket.socket) -> None:
        with self._waiting_lock:
            self._waiting[conn] = time.monotonic() + self.header_timeout

    def awaiting_done(self, conn: socket.socket) -> None:
        with self._waiting_lock:
            self._waiting.pop(conn, None)

    def _reap(self) -> None:
        while not self._stopping.wait(min(1.0, self.header_timeout / 4)):
            now = time.monotonic()
            with self._waiting_lock:
                late = [c for c, deadline in self._waiting.items() if deadline < now]
                for c in late:
                    del self._waiting[c]
            for c in late:
                self.reaped += 1
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)  # the handler's read returns; its thread ends and closes it


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """A single byte range → (start, end inclusive); None = whole body; False = unsatisfiable."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or not (m.group(1) or m.group(2)):
        return None  # multi-range or garbage: ignore Range, send everything (RFC 9110 allows it)
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < start:
            return None
    else:
        n = int(m.group(2))
        if n == 0:
            return False
        start, end = max(0, size - n), size - 1
    if start >= size:
        return False
    return start, end


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hydra-bundle-agent"
    sent = 0
    status = 0
    linger = False      # after the answer (the last: close_connection), drain what the client still sends

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.srv.header_timeout)  # each read and write of the connection

    def handle_one_request(self) -> None:
        self.status = 0
        self.srv.awaiting_request(self.connection)   # until the headers are in (the reaper's deadline)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.srv.awaiting_done(self.connection)
        return ok

    def finish(self) -> None:
        try:
            super().finish()
            if self.linger:
                self._lingering_close()
        finally:
            self.release()

    def _lingering_close(self) -> None:
        """Half-close, then read and drop what the client still sends (at most ``LINGER_MAX`` bytes for at most
        ``LINGER_SECONDS``) so the answer already sent is not reset away."""
        conn = self.connection
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_MAX and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)

    def release(self) -> None:
        """What this connection's thread holds beyond its socket (subclasses: a database connection)."""

    @property
    def srv(self) -> Server:
        assert isinstance(self.server, Server)
        return self.server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        self.status = code
        super().send_response(code, message)

    def _observed(self) -> None:
        self.srv.observe(self.srv.name, self.command, self.status, self.sent)
        self.sent = 0

    def _closing_header(self) -> None:
        """Tell the client when this answer is the connection's last, so it does not send the next request into
        a closing socket."""
        if self.close_connection:
            self.send_header("Connection", "close")

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self._closing_header()
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.sent += len(body)
        self._observed()

    def reply_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj).encode(), headers, "application/json")

    def send_file(self, path: Path, size: int, headers: dict[str, str], content_type: str,
                  mtime: float | None = None) -> None:
        """Send ``path`` (whose verified size is ``size``), honouring a single Range."""
        rng = parse_range(self.headers.get("Range"), size)
        if rng is False:
            self.reply(416, b"", {"Content-Range": f"bytes */{size}"})
            return
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self.reply(404, b"not found\n")
            return
        with f:
            start, end = rng if isinstance(rng, tuple) else (0, size - 1)
            length = end - start + 1 if size else 0
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if mtime is not None:
                self.send_header("Last-Modified", formatdate(mtime, usegmt=True))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            for k, v in headers.items():
                self.send_header(k, v)
            self._closing_header()
            self.end_headers()
            if self.command != "HEAD" and length:
                try:
                    self.wfile.flush()
                    self.sent += self.connection.sendfile(f, start, length)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    self.close_connection = True
        self._observed()

    def method_not_allowed(self) -> None:
        self.reply(405, b"read-only\n", {"Allow": "GET, HEAD"})

    def discard_body(self) -> None:
        """Read and drop a refused request's body. Closing a socket with unread bytes in its receive queue sends
        a TCP reset, which can destroy the answer before the client reads it ("server disconnected without
        sending a response"). A body of at most ``DISCARD_MAX`` bytes is read (within ``header_timeout`` in all)
        and the connection stays usable; a larger, chunked or unreadable one is answered with ``Connection:
        close`` and drained for a moment after the answer (a lingering close), never buffered."""
        length = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") or not (length.isascii() and length.isdigit()) \
                or int(length) > DISCARD_MAX:
            self.linger = self.close_connection = True
            return
        left = int(length)
        deadline = time.monotonic() + self.srv.header_timeout  # in all: one byte every few seconds is not enough
        try:
            while left and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # TimeoutError included
            left = -1
        finally:
            self.connection.settimeout(self.srv.header_timeout)
        if left:
            self.linger = self.close_connection = True   # not all read: the rest is drained after the answer

    def do_POST(self) -> None:
        self.discard_body()
        self.method_not_allowed()

    do_PUT = do_PATCH = do_DELETE = do_POST


class StoreHandler(Handler):
    """Base of the read-only servers over the published view and the content store (registry, files)."""

    def release(self) -> None:
        self.published.db.close()  # this thread's sqlite connection: its fds go with the client

    @property
    def published(self) -> Published:
        p = self.srv.context["published"]
        assert isinstance(p, Published)
        return p

    @property
    def store(self) -> Store:
        s = self.srv.context["store"]
        assert isinstance(s, Store)
        return s

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        """Route the request; a bug or a failing store/journal read answers 500 (and is logged with what failed)
        instead of closing the connection without a word, which clients report as a protocol error."""
        try:
            if self.path.split("?", 1)[0] == "/healthz":  # before any credentials: a load balancer's probe
                self._healthz()
            else:
                self._route()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as e:
            log.error("request failed", extra={"kv": {"server": self.srv.name, "path": self.path[:200],
                                                      "error": repr(e)}})
            self.close_connection = True
            if self.status == 0:  # nothing sent yet: the client gets an answer
                with contextlib.suppress(OSError):
                    self.reply(500, b"internal error (see the agent log)\n")

    def _route(self) -> None:
        raise NotImplementedError

    def _healthz(self) -> None:
        """200 with a small JSON body when this listener can serve what was published, 503 when not
        (``readiness.py``)."""
        r = self.srv.context.get("readiness")
        if not isinstance(r, Readiness):
            r = self.srv.context["readiness"] = Readiness(self.store)
        ready, body = r.check(self.published)
        self.reply_json(200 if ready else 503, body, {"Cache-Control": "no-store"})
