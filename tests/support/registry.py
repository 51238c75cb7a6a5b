"""A real `docker-registry` (distribution 2.8) on loopback, in a throwaway directory."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import bcrypt
import httpx

REGISTRY_BIN = "docker-registry"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1, never one this process handed out before: two ports taken
    one after the other (an agent's files and metrics listeners) could otherwise be the same, since neither is
    bound until the agent starts."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port in 100 tries")


def htpasswd_line(username: str, password: str, rounds: int = 5) -> str:
    """One bcrypt htpasswd entry, as `htpasswd -B` writes it."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return f"{username}:{hashed}\n"


class RegistryError(RuntimeError):
    """The registry process failed to start."""


class Registry:
    """A private `docker-registry serve` instance on a free 127.0.0.1 port.

    With `username`/`password` it requires htpasswd basic auth. Storage deletes are enabled.
    Usable as a context manager; `stop()` kills the process and removes its directory.
    """

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        *,
        startup_timeout: float = 20.0,
        binary: str = REGISTRY_BIN,
        tls: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if shutil.which(binary) is None:
            raise RegistryError(f"{binary!r} not found on PATH (apt-get install docker-registry)")
        self.username = username
        self.password = password
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="hydra-registry-"))
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "config.yml"
        self.log_path = self.dir / "registry.log"
        self.port = 0
        self.tls = tls
        self.ca_cert = self.dir / "ca.crt"  # with tls=True: the CA that issued the server certificate
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._start(startup_timeout)
        except BaseException:
            self.stop()
            raise

    # -- public API ---------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """`127.0.0.1:PORT` (a registry reference host)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (`https://` with tls=True)."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """`(username, password)` when auth is on, else None."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the registry's stderr/stdout log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the registry and remove its temp dir (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Registry({self.url}, auth={'on' if self.auth else 'off'})"

    # -- internals ----------------------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log: {level: warn, accesslog: {disabled: true}}",
            "storage:",
            f"  filesystem: {{rootdirectory: {self.data_dir}}}",
            "  delete: {enabled: true}",
            "  cache: {blobdescriptor: inmemory}",
            f"http: {{addr: '127.0.0.1:{self.port}', secret: hydra-test-secret"
            + (f", tls: {{certificate: {self.dir / 'server.crt'}, key: {self.dir / 'server.key'}}}}}" if self.tls
               else "}"),
            "health: {storagedriver: {enabled: false}}",
        ]
        if self.username is not None and self.password is not None:
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.username, self.password))
            lines.append(f"auth: {{htpasswd: {{realm: hydra-test, path: {htpasswd}}}}}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _make_certs(self) -> None:
        """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
        d = self.dir

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=hydra-test-ca")
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")

    def _start(self, timeout: float, attempts: int = 3) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self._make_certs()
        last_error = ""
        for _ in range(attempts):
            self.port = free_port()
            self._write_config()
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                )
            err = self._wait_ready(timeout)
            if err is None:
                return
            last_error = err
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
        raise RegistryError(f"registry failed to start: {last_error}\n--- log tail ---\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> str | None:
        """None when `/v2/` answers as expected, else an error description."""
        ok = {401} if self.auth else {200}
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return f"process exited with code {self._proc.returncode}"
            try:
                r = httpx.get(f"{self.url}/v2/", timeout=2,
                              verify=ssl.create_default_context(cafile=str(self.ca_cert)) if self.tls else True)
                if r.status_code in ok:
                    return None
                last = f"GET /v2/ -> {r.status_code}"
            except httpx.HTTPError as e:
                last = f"GET /v2/: {e!r}"
            time.sleep(0.05)
        return f"not ready after {timeout:.0f}s ({last})"
