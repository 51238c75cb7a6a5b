"""sd_notify without dependencies: READY=1, STATUS=…, WATCHDOG=1, STOPPING=1 over ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket


class Notifier:
    """No-op unless systemd set ``NOTIFY_SOCKET`` (Type=notify)."""

    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr: str | bytes | None = None
        if addr.startswith("@"):
            self.addr = "\0" + addr[1:]  # abstract namespace
        elif addr.startswith("/"):
            self.addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ok_pid = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and ok_pid else None

    @property
    def enabled(self) -> bool:
        return self.addr is not None

    def send(self, *lines: str) -> bool:
        if self.addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.addr)
                s.sendall("\n".join(lines).encode())
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
