"""Read-only basic auth for the embedded registry: ``registry.htpasswd`` in Apache's format with bcrypt hashes
(``htpasswd -B``, ``user:$2y$…``), the only kind accepted (MD5/SHA/crypt entries are refused at start).

bcrypt costs tens of milliseconds per check by design; a client sends its credentials with every request, so a
successful check is remembered (a keyed hash of ``user:password``, never the password) for a bounded number of
users. Failures are not remembered and cost the full bcrypt time, which is what limits guessing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from pathlib import Path

from ..errors import UsageError

REALM = "hydra-bundle"
_CACHE_MAX = 256


class Htpasswd:
    def __init__(self, path: Path):
        self.path = path
        self.users: dict[str, bytes] = {}
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise UsageError(f"registry.htpasswd {path}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, h = line.strip().partition(":")
            if not sep or not user or not h.startswith(("$2y$", "$2b$", "$2a$")):
                raise UsageError(f"registry.htpasswd {path}:{n}: not a bcrypt entry (create it with `htpasswd -B`)")
            self.users[user] = h.encode()
        if not self.users:
            raise UsageError(f"registry.htpasswd {path}: no users")
        try:
            import bcrypt
        except ImportError:
            raise UsageError("registry.htpasswd needs the bcrypt package (pip install 'hydra-bundle[site]'; the agent "
                             "kit has it)") from None
        self._bcrypt = bcrypt
        self._key = os.urandom(32)
        self._ok: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries a valid user and password."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, pw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        h = self.users.get(user)
        if not sep or h is None:
            return False
        token = hmac.new(self._key, f"{user}:{pw}".encode(), hashlib.sha256).digest()
        with self._lock:
            if token in self._ok:
                return True
        try:
            ok = bool(self._bcrypt.checkpw(pw.encode(), h.replace(b"$2y$", b"$2b$", 1)))
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._ok) >= _CACHE_MAX:
                    self._ok.pop(next(iter(self._ok)))
                self._ok[token] = None
        return ok
