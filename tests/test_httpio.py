"""The lean body reader (httpio.fast_get): when it takes a request, what it sends, and when it leaves it to httpx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from hydra_bundle.errors import BodyInterrupted
from hydra_bundle.httpio import FastBody, fast_get

DATA = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", self.server.other + "/blob")  # type: ignore[attr-defined]
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/denied":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:1000])
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA)


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    _Handler.seen = []
    a, b = ThreadingHTTPServer(("127.0.0.1", 0), _Handler), ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ua, ub = f"http://127.0.0.1:{a.server_port}", f"http://localhost:{b.server_port}"
    a.other, b.other = ub, ua  # type: ignore[attr-defined]
    for s in (a, b):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield ua, ub
    for s in (a, b):
        s.shutdown()
        s.server_close()


def _read(body: FastBody) -> bytes:
    try:
        return b"".join(bytes(c) for c in body.chunks())
    finally:
        body.close()


def test_reads_the_body_and_drops_credentials_on_a_cross_host_redirect(servers: tuple[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    a, _ = servers
    body = fast_get(f"{a}/redirect", {"Authorization": "Bearer secret"})
    assert body is not None and body.status_code == 200
    assert _read(body) == DATA
    assert _Handler.seen == [("/redirect", "Bearer secret"), ("/blob", None)]


def test_declines_what_httpx_must_handle(servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = servers
    assert fast_get(f"{a}/denied", {}) is None                 # the token dance
    assert fast_get("http://127.0.0.1:9/blob", {}) is None     # cannot connect: httpx reports it
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert fast_get(f"{a}/blob", {}) is None                   # a proxy applies: httpx honours it


def test_a_cut_body_is_an_error_not_a_short_file(servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    a, _ = servers
    body = fast_get(f"{a}/cut", {})
    assert body is not None
    with pytest.raises(BodyInterrupted, match="after 1000 of 1048576 bytes"):
        _read(body)
