"""A small OCI distribution client that streams both ways and verifies every digest while reading.

One pooled, thread-safe ``httpx.Client`` serves all threads. Blobs go straight from the socket to a file
(hashed on the way; resumed with ``Range`` when a partial file exists) and are pushed from files in chunked
PATCH uploads, so memory never grows with blob size. See docs/design.md for why not oras-py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin

import httpx

from .. import __version__
from ..digest import CHUNK
from ..errors import AuthError, DigestMismatch, NotFound, SourceError
from ..httpio import Body, HttpxBody, download, fast_get, tls_verify
from . import mediatypes as mt
from .auth import Credential, CredentialStore, TokenCache, parse_challenge
from .reference import Reference, api_host

MAX_MANIFEST = 4 << 20
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as fetched: exact bytes (digests are over these), media type and digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        body = json.loads(self.data)
        if not isinstance(body, dict):
            raise SourceError(f"{self.digest}: manifest is not a JSON object")
        return body

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEX_TYPES


@dataclass(frozen=True)
class Endpoint:
    """Where requests for a registry actually go (after ``--mirror``), and the repo prefix there."""

    base: str            # scheme://host[:port]
    host: str            # key for auth (host[:port])
    prefix: str = ""     # repository prefix on a mirror (Harbor proxy projects)

    def repo(self, repository: str) -> str:
        return f"{self.prefix}/{repository}" if self.prefix else repository


def media_type_of(data: bytes, header: str | None) -> str:
    """The manifest's own mediaType wins over a sloppy Content-Type header."""
    try:
        mt_field = json.loads(data).get("mediaType")
    except (ValueError, AttributeError):
        mt_field = None
    if mt_field:
        return str(mt_field)
    if header:
        return header.split(";")[0].strip()
    return mt.OCI_MANIFEST


class RegistryClient:
    """Pull and push OCI content. ``insecure`` lists ``HOST:PORT`` registries reached over plain HTTP;
    ``mirrors`` maps a registry name to ``host[:port][/prefix]`` to use instead."""

    def __init__(self, insecure: Iterable[str] = (), mirrors: dict[str, str] | None = None,
                 credentials: CredentialStore | None = None, timeout: float = 60.0,
                 verify_tls: bool | str = True, max_connections: int = 16):
        self.insecure = set(insecure)
        self.mirrors = dict(mirrors or {})
        self.creds = credentials if credentials is not None else CredentialStore()
        self.tokens = TokenCache()
        self.verify_tls, self.timeout = verify_tls, timeout
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=15.0),
            verify=tls_verify(verify_tls),
            follow_redirects=True,  # blob GETs redirect to object storage on real registries
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": f"hydra-bundle/{__version__}"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def endpoint(self, registry: str) -> Endpoint:
        target = self.mirrors.get(registry, registry)
        host, _, prefix = target.partition("/")
        host = api_host(host) if target == registry else host
        scheme = "http" if host in self.insecure else "https"
        return Endpoint(f"{scheme}://{host}", host, prefix.strip("/"))

    def _auth_header(self, ep: Endpoint, registry: str, scope: str) -> dict[str, str]:
        token = self.tokens.get(ep.host, scope)
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.tokens.is_basic(ep.host):
            cred = self._cred(ep, registry)
            if cred and cred.username is not None:
                raw = f"{cred.username}:{cred.password or ''}".encode()
                return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _cred(self, ep: Endpoint, registry: str, repository: str = "") -> Credential | None:
        return self.creds.get(ep.host, repository) or self.creds.get(registry, repository)

    def _authenticate(self, ep: Endpoint, registry: str, repo: str, scope: str, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        cred = self._cred(ep, registry, repo)
        if scheme == "basic":
            if not cred or cred.username is None:
                raise AuthError(f"{ep.host}: registry wants basic auth and no credentials are configured "
                                "(docker login / REGISTRY_AUTH_FILE)")
            self.tokens.mark_basic(ep.host)
            return
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(f"{ep.host}: unsupported auth challenge {challenge!r}")
        query = {"service": params.get("service", "")}
        query["scope"] = params.get("scope") or scope
        auth = None
        if cred and cred.identity_token:
            resp = self.http.post(params["realm"], data={
                "grant_type": "refresh_token", "refresh_token": cred.identity_token,
                "service": query["service"], "scope": query["scope"], "client_id": "hydra-bundle"})
        else:
            if cred and cred.username is not None:
                auth = (cred.username, cred.password or "")
            resp = self.http.get(params["realm"], params=query, auth=auth)
        if resp.status_code in (401, 403):
            raise AuthError(f"{ep.host}: token service refused {'our credentials' if auth else 'anonymous access'}"
                            f" for {query['scope']}")
        if resp.status_code != 200:
            raise AuthError(f"{ep.host}: token service answered HTTP {resp.status_code}")
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise AuthError(f"{ep.host}: token service returned no token")
        self.tokens.put(ep.host, scope, token)

    def request(self, method: str, registry: str, repository: str, path: str, *, push: bool = False,
                headers: dict[str, str] | None = None, stream: bool = False, content: Any = None,
                params: dict[str, str] | None = None, url: str | None = None) -> httpx.Response:
        """One authenticated request against ``/v2/<repo>/<path>`` (or an absolute ``url``)."""
        ep = self.endpoint(registry)
        repo = ep.repo(repository)
        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        target = url or f"{ep.base}/v2/{repo}/{path}"
        for attempt in (0, 1):
            h = {**(headers or {}), **self._auth_header(ep, registry, scope)}
            try:
                req = self.http.build_request(method, target, headers=h, content=content, params=params)
                resp = self.http.send(req, stream=stream)
            except httpx.ConnectError as e:
                hint = "" if ep.host in self.insecure else " (plain-HTTP registry? use --insecure-registry HOST:PORT)"
                raise SourceError(f"{ep.host}: cannot connect: {e}{hint}") from None
            except httpx.HTTPError as e:
                raise SourceError(f"{ep.host}: {method} {path}: {e}") from None
            if resp.status_code != 401 or attempt == 1:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            if not challenge:
                raise AuthError(f"{ep.host}: 401 without a WWW-Authenticate challenge")
            if content is not None and not isinstance(content, bytes | str):
                raise AuthError(f"{ep.host}: authentication required mid-upload")
            self._authenticate(ep, registry, repo, scope, challenge)
        raise AssertionError("unreachable")

    @staticmethod
    def _fail(resp: httpx.Response, what: str) -> SourceError:
        if not resp.is_stream_consumed:
            try:
                resp.read()
            except httpx.HTTPError:
                pass
        try:
            errs = resp.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or resp.text[:200]
        except ValueError:
            detail = resp.text[:200]
        if resp.status_code == 404:
            return NotFound(f"{what}: not found ({detail})")
        if resp.status_code in (401, 403):
            return AuthError(f"{what}: access denied (HTTP {resp.status_code}: {detail})")
        return SourceError(f"{what}: HTTP {resp.status_code}: {detail}")

    # ------------------------------------------------------------------ manifests

    def get_manifest(self, ref: Reference, digest: str | None = None) -> Manifest:
        """Fetch a manifest/index by tag or digest; the bytes are checked against the digest we asked for
        (or the registry's Docker-Content-Digest header when asking by tag)."""
        want = digest or ref.digest
        what = f"{ref.name}@{want}" if want else str(ref)
        resp = self.request("GET", ref.registry, ref.repository, f"manifests/{want or ref.tag}",
                            headers={"Accept": mt.ACCEPT}, stream=True)
        try:
            if resp.status_code != 200:
                raise self._fail(resp, what)
            data = bytearray()
            for chunk in resp.iter_raw():
                data += chunk
                if len(data) > MAX_MANIFEST:
                    raise SourceError(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
        finally:
            resp.close()
        body = bytes(data)
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        expect = want or resp.headers.get("Docker-Content-Digest")
        if expect and expect.startswith("sha256:") and got != expect:
            raise DigestMismatch(what, expect, got)
        return Manifest(body, media_type_of(body, resp.headers.get("Content-Type")), got)

    def head_manifest(self, ref: Reference) -> str | None:
        """Digest the registry reports for a tag (None if absent or not reported)."""
        resp = self.request("HEAD", ref.registry, ref.repository, f"manifests/{ref.reference}",
                            headers={"Accept": mt.ACCEPT})
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, str(ref))
        digest = resp.headers.get("Docker-Content-Digest")
        return str(digest) if digest else None

    def put_manifest(self, registry: str, repository: str, reference: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", registry, repository, f"manifests/{reference}", push=True,
                            headers={"Content-Type": media_type}, content=data)
        if resp.status_code not in (200, 201):
            raise self._fail(resp, f"{registry}/{repository}:{reference}: push manifest")
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        server = resp.headers.get("Docker-Content-Digest")
        if server and server != got:
            raise DigestMismatch(f"{registry}/{repository}:{reference}", got, server)
        return got

    def list_tags(self, registry: str, repository: str) -> list[str]:
        resp = self.request("GET", registry, repository, "tags/list")
        if resp.status_code != 200:
            raise self._fail(resp, f"{registry}/{repository}: tags")
        return list(resp.json().get("tags") or [])

    # ------------------------------------------------------------------ blobs

    def blob_exists(self, registry: str, repository: str, digest: str, push: bool = False) -> bool:
        resp = self.request("HEAD", registry, repository, f"blobs/{digest}", push=push)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self._fail(resp, f"{registry}/{repository}@{digest}")

    def fetch_blob(self, registry: str, repository: str, digest: str, size: int | None, dest: Path,
                   progress: Progress | None = None, attempts: int = 1,
                   log: Callable[[str], None] | None = None) -> None:
        """Download a blob to ``dest`` via ``dest.partial``: resumed with Range, hashed while written,
        renamed into place only when size and digest match."""
        what = f"{registry}/{repository}@{digest}"
        partial = dest.with_name(dest.name + ".partial")
        download(self.blob_opener(registry, repository, digest), what, partial, size, digest, progress, self._fail,
                 attempts, log)
        os.replace(partial, dest)

    def blob_opener(self, registry: str, repository: str, digest: str) -> Callable[[dict[str, str]], Body]:
        """A function that starts a streamed GET of the blob with extra headers (Range when resuming): the lean
        http.client body reader when it can take it (see httpio), else httpx (auth challenges, errors)."""

        def open_response(headers: dict[str, str]) -> Body:
            ep = self.endpoint(registry)
            repo = ep.repo(repository)
            auth = self._auth_header(ep, registry, f"repository:{repo}:pull")
            fast = fast_get(f"{ep.base}/v2/{repo}/blobs/{digest}", {**headers, **auth}, self.verify_tls,
                            self.timeout)
            if fast is not None:
                return fast
            return HttpxBody(self.request("GET", registry, repository, f"blobs/{digest}", headers=headers,
                                          stream=True))

        return open_response

    def fail(self, resp: httpx.Response, what: str) -> SourceError:
        return self._fail(resp, what)

    def push_blob(self, registry: str, repository: str, digest: str, size: int, path: Path,
                  mount_from: str | None = None, chunk_size: int = 64 << 20, offset: int = 0,
                  progress: Progress | None = None) -> str:
        """Upload ``size`` bytes of ``path`` (from ``offset``) as ``digest`` unless the registry has it.
        Tries a cross-repo mount first when ``mount_from`` names a repo that holds it. Returns how:
        ``exists``, ``mounted`` or ``uploaded``."""
        what = f"{registry}/{repository}@{digest}"
        if self.blob_exists(registry, repository, digest, push=True):
            return "exists"
        params = {"mount": digest, "from": self.endpoint(registry).repo(mount_from)} if mount_from else None
        resp = self.request("POST", registry, repository, "blobs/uploads/", push=True, params=params,
                            content=b"")
        if resp.status_code == 201 and mount_from:
            return "mounted"
        if resp.status_code != 202:
            raise self._fail(resp, f"{what}: start upload")
        location = self._location(registry, resp)
        sent = 0
        with open(path, "rb") as f:
            while sent < size or size == 0:
                n = min(chunk_size, size - sent)
                body = _file_slice(f, offset + sent, n, progress)
                resp = self.request("PATCH", registry, repository, "", push=True, url=location, content=body,
                                    headers={"Content-Type": "application/octet-stream",
                                             "Content-Length": str(n),
                                             "Content-Range": f"{sent}-{sent + n - 1}"} if n else
                                    {"Content-Type": "application/octet-stream", "Content-Length": "0"})
                if resp.status_code != 202:
                    raise self._fail(resp, f"{what}: upload chunk at {sent}")
                location = self._location(registry, resp)
                sent += n
                if size == 0:
                    break
        sep = "&" if "?" in location else "?"
        resp = self.request("PUT", registry, repository, "", push=True,
                            url=f"{location}{sep}{urlencode({'digest': digest})}", content=b"")
        if resp.status_code not in (201, 204):
            raise self._fail(resp, f"{what}: finish upload")
        return "uploaded"

    def _location(self, registry: str, resp: httpx.Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise SourceError(f"{registry}: upload response without Location")
        return urljoin(self.endpoint(registry).base + "/", str(loc))


def _file_slice(f: BinaryIO, offset: int, n: int, progress: Progress | None) -> Iterator[bytes]:
    f.seek(offset)
    remaining = n
    while remaining:
        chunk = f.read(min(CHUNK, remaining))
        if not chunk:
            raise SourceError(f"{getattr(f, 'name', 'file')}: ended {remaining} bytes early")
        remaining -= len(chunk)
        if progress:
            progress(len(chunk))
        yield chunk
