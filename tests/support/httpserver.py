"""A small threaded HTTP file server with Range support, request log, basic auth and fault injection."""

from __future__ import annotations

import base64
import html
import mimetypes
import os
import posixpath
import re
import threading
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RequestRecord:
    """One request seen by the server."""

    method: str
    path: str
    range: str | None
    status: int = 0


class FileServer:
    """Serve `root` on a free 127.0.0.1 port (GET/HEAD, byte ranges, HTML directory listings)."""

    def __init__(self, root: Path | str, auth: tuple[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(str(self.root))
        self.auth = auth
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._faults: dict[str, list[int]] = {}  # path -> [nbytes, remaining times]
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="FileServer", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (no trailing slash)."""
        return f"http://{self.host}"

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of requests seen so far."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def fail_after(self, path: str, nbytes: int, times: int = 1) -> None:
        """Make the next `times` GETs of `path` close the connection after `nbytes` of body."""
        with self._lock:
            self._faults[_norm(path)] = [nbytes, times]

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FileServer({self.url} -> {self.root})"

    # -- used by the handler ------------------------------------------------------------------------
    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._requests.append(rec)

    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            fault = self._faults.get(path)
            if not fault:
                return None
            nbytes, fault[1] = fault[0], fault[1] - 1
            if fault[1] <= 0:
                del self._faults[path]
            return nbytes


def _norm(path: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    trailing = path.endswith("/")
    out = posixpath.normpath("/" + path.lstrip("/"))
    if trailing and out != "/":
        out += "/"
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hydra-test-fileserver/1"

    @property
    def owner(self) -> FileServer:
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- helpers ------------------------------------------------------------------------------------
    def _simple(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _authorized(self) -> bool:
        auth = self.owner.auth
        if auth is None:
            return True
        want = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return self.headers.get("Authorization") == want

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before any byte of the answer is sent: a client that has read the whole response
        # always finds its request in `requests` (recording after the body raced with fast clients).
        self.owner._record(RequestRecord(self.command, _norm(self.path), self.headers.get("Range"), code))
        super().send_response(code, message)

    def _serve(self, head: bool) -> None:
        self._dispatch(_norm(self.path), head, self.headers.get("Range"))

    def _dispatch(self, path: str, head: bool, range_header: str | None) -> int:
        if not self._authorized():
            self._simple(401, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="hydra-test"'})
            return 401
        fs_path = (self.owner.root / path.lstrip("/")).resolve()
        if fs_path != self.owner.root and self.owner.root not in fs_path.parents:
            self._simple(404, b"not found\n")
            return 404
        if fs_path.is_dir():
            if not path.endswith("/"):
                self._simple(301, b"", {"Location": urllib.parse.quote(path + "/")})
                return 301
            return self._listing(fs_path, path)
        if not fs_path.is_file():
            self._simple(404, b"not found\n")
            return 404
        st = fs_path.stat()
        size = st.st_size
        last_modified = formatdate(st.st_mtime, usegmt=True)
        start, end = 0, size - 1
        status = 200
        if range_header and self.headers.get("If-Range") in (None, last_modified):
            m = _RANGE.match(range_header.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: last N bytes
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    self._simple(416, b"", {"Content-Range": f"bytes */{size}"})
                    return 416
                status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        ctype = mimetypes.guess_type(fs_path.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Last-Modified", last_modified)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return status
        cut = self.owner._take_fault(path)
        limit = length if cut is None else min(cut, length)
        try:
            with open(fs_path, "rb") as f:
                f.seek(start)
                left = limit
                while left > 0:
                    chunk = f.read(min(1 << 16, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return status
        if cut is not None and limit < length:
            self.close_connection = True
            try:
                self.connection.shutdown(2)  # SHUT_RDWR: the client sees a short body
            except OSError:
                pass
        return status

    def _listing(self, fs_path: Path, url_path: str) -> int:
        items = []
        for entry in sorted(os.scandir(fs_path), key=lambda e: e.name):
            name = entry.name + ("/" if entry.is_dir() else "")
            items.append(f'<li><a href="{urllib.parse.quote(name)}">{html.escape(name)}</a></li>')
        title = html.escape(url_path)
        body = (
            f"<!DOCTYPE html>\n<html><head><title>Index of {title}</title></head><body>"
            f"<h1>Index of {title}</h1><ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
        ).encode()
        self._simple(200, body, {"Content-Type": "text/html; charset=utf-8"})
        return 200
