"""A private, throwaway MariaDB server (Debian ``mariadb-server``) on a free 127.0.0.1 port (services.md).

``MariaDB(start=False)`` initialises the data directory and picks the port without starting the server, so a
test can point a client at it first ("database down at start") and call ``start()`` later.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pymysql

from tests.support.registry import free_port

INSTALL_DB = "mariadb-install-db"
SERVER = "mariadbd"


def missing_binaries() -> str | None:
    for b in (INSTALL_DB, SERVER):
        if shutil.which(b) is None:
            return f"{b} is not installed (apt-get install mariadb-server)"
    return None


class MariaDBError(RuntimeError):
    pass


class MariaDB:
    """root has no password (TCP from 127.0.0.1); ``create_user`` makes a password user for DSN tests."""

    def __init__(self, *, start: bool = True, startup_timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hydra-mariadb-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            p = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={self.data}", "--user=root",
                                "--auth-root-authentication-method=normal", "--skip-test-db"],
                               capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise MariaDBError(f"mariadb-install-db failed: {p.stderr[-2000:]}")
            if start:
                self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with open(self.dir / "mariadb.log", "ab") as log:
            self._proc = subprocess.Popen(
                [SERVER, "--no-defaults", "--user=root", f"--datadir={self.data}", f"--socket={self.dir / 'sock'}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-log-bin",
                 f"--pid-file={self.dir / 'mariadb.pid'}", "--character-set-server=utf8mb4",
                 "--collation-server=utf8mb4_unicode_ci", "--innodb-buffer-pool-size=32M"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + self.timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MariaDBError(f"mariadbd exited ({self._proc.returncode}): {self.log_tail()}")
            try:
                self.root().close()
                return
            except pymysql.err.MySQLError as e:
                last = str(e)
            time.sleep(0.1)
        raise MariaDBError(f"mariadbd not ready after {self.timeout:.0f}s ({last}): {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "mariadb.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def root(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database=database,
                               charset="utf8mb4", autocommit=True, connect_timeout=5)

    def execute(self, sql: str, args: tuple[object, ...] | None = None, database: str | None = None) -> list[tuple]:
        conn = self.root(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_user(self, user: str, password: str, database: str) -> None:
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        for host in ("%%", "localhost"):  # TCP from 127.0.0.1 is 'localhost', where an anonymous user would win
            self.execute(f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY %s", (password,))
            self.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'{host.replace('%%', '%')}'")

    def stop(self) -> None:
        """Stop the server (by the PID we started); the data directory stays until ``remove()``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> MariaDB:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()
