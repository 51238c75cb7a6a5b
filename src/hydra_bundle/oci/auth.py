"""Registry credentials and the token dance.

Credentials come from the files podman/skopeo and docker use, first match wins:
``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``. Challenges follow the distribution token spec: ``Bearer realm=…,service=…,scope=…``
(token fetched with basic credentials when we have them, anonymously otherwise) or ``Basic``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credential:
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:  # never leak secrets into logs or tracebacks
        return f"Credential(username={self.username!r}, password=***)"


def auth_files() -> list[Path]:
    files: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_dir = Path(os.environ["DOCKER_CONFIG"]) if os.environ.get("DOCKER_CONFIG") else Path.home() / ".docker"
    files.append(docker_dir / "config.json")
    return files


def _norm_key(key: str) -> str:
    k = re.sub(r"^https?://", "", key).rstrip("/")
    if k in ("index.docker.io/v1", "index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return k


class CredentialStore:
    """Looks up credentials by registry host (and, like podman, by ``host/namespace`` prefixes)."""

    def __init__(self, files: list[Path] | None = None):
        self._entries: dict[str, Credential] = {}
        for f in reversed(files if files is not None else auth_files()):  # earlier files win
            self._load(f)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot read registry credentials ({e})") from None
        for key, entry in (data.get("auths") or {}).items():
            if not isinstance(entry, dict):
                continue
            user = entry.get("username")
            pw = entry.get("password")
            if entry.get("auth"):
                try:
                    user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise UsageError(f"{path}: auths[{key!r}].auth is not base64 user:password") from None
            self._entries[_norm_key(key)] = Credential(user, pw, entry.get("identitytoken"))

    def add(self, registry: str, username: str, password: str) -> None:
        self._entries[_norm_key(registry)] = Credential(username, password)

    def get(self, registry: str, repository: str = "") -> Credential | None:
        path = f"{_norm_key(registry)}/{repository}".rstrip("/")
        while path:
            if path in self._entries:
                return self._entries[path]
            if "/" not in path:
                break
            path = path.rsplit("/", 1)[0]
        return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


class TokenCache:
    """Bearer tokens per (host, scope); thread-safe (blobs are fetched in parallel)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic: set[str] = set()

    def get(self, host: str, scope: str) -> str | None:
        with self._lock:
            return self._tokens.get((host, scope))

    def put(self, host: str, scope: str, token: str) -> None:
        with self._lock:
            self._tokens[(host, scope)] = token

    def mark_basic(self, host: str) -> None:
        with self._lock:
            self._basic.add(host)

    def is_basic(self, host: str) -> bool:
        with self._lock:
            return host in self._basic
