"""The embedded registry: the read-only part of the OCI distribution API, straight from the content store.

``/v2/``, ``/v2/_catalog``, ``/v2/<name>/tags/list``, manifests by tag or digest (GET/HEAD with the stored
media type as ``Content-Type`` and ``Docker-Content-Digest``), blobs (GET/HEAD, a single ``Range`` → 206,
bodies sent with ``sendfile``). Names are site names (``oci/sitename.py``): ``/v2/docker.io/library/ubuntu/…``,
or containerd's mirror form ``/v2/library/ubuntu/…?ns=docker.io``; never another registry's image. Every write
is answered 405 with the spec's ``UNSUPPORTED`` error. Only
published content is served (``published.py``): a bundle being ingested or refused is invisible.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

from ..oci.sitename import lookup_repository
from .auth import REALM
from .httpbase import StoreHandler

_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64})$")
_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
API = {"Docker-Distribution-API-Version": "registry/2.0"}


def _err(code: str, message: str, detail: object = None) -> dict[str, object]:
    e: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        e["detail"] = detail
    return {"errors": [e]}


def _page(items: list[str], query: dict[str, list[str]]) -> tuple[list[str], bool]:
    last = (query.get("last") or [""])[0]
    if last:
        items = [i for i in items if i > last]
    n = (query.get("n") or [""])[0]
    if n.isascii() and n.isdigit():  # "²".isdigit() is True too, and int() refuses it
        k = int(n)
        return items[:k], 0 < k < len(items)   # n=0: an empty page, no next link
    return items, False


class RegistryHandler(StoreHandler):
    server_version = "hydra-bundle-registry"

    def method_not_allowed(self) -> None:
        self.reply_json(405, _err("UNSUPPORTED", "this registry is read-only (hydra-bundle agent)"),
                        {**API, "Allow": "GET, HEAD"})

    def _route(self) -> None:
        users = self.srv.context.get("htpasswd")
        if users is not None and not users.check(self.headers.get("Authorization")):
            self.reply_json(401, _err("UNAUTHORIZED", "authentication required"),
                            {**API, "WWW-Authenticate": f'Basic realm="{REALM}"'})
            return
        u = urlsplit(self.path)
        path, query = u.path, parse_qs(u.query)
        ns = (query.get("ns") or [""])[0] or None  # containerd's mirror requests name the upstream host
        if path in ("/v2", "/v2/"):
            self.reply_json(200, {}, API)
        elif path == "/v2/_catalog":
            repos, more = _page(self.published.repositories(), query)
            link = {"Link": f'</v2/_catalog?last={repos[-1]}&n={query["n"][0]}>; rel="next"'} if more else {}
            self.reply_json(200, {"repositories": repos}, {**API, **link})
        elif m := _TAGS.match(path):
            name = lookup_repository(m["name"], ns)
            if not self.published.repo_exists(name):
                self.reply_json(404, _err("NAME_UNKNOWN", "repository name not known to registry", {"name": name}),
                                API)
                return
            tags, more = _page(self.published.tags(name), query)
            link = ({"Link": f'</v2/{name}/tags/list?last={tags[-1]}&n={query["n"][0]}>; rel="next"'}
                    if more else {})
            self.reply_json(200, {"name": name, "tags": tags}, {**API, **link})
        elif m := _MANIFEST.match(path):
            self._manifest(lookup_repository(m["name"], ns), m["ref"])
        elif m := _BLOB.match(path):
            self._blob(lookup_repository(m["name"], ns), m["digest"])
        elif path.startswith("/v2/"):
            self.reply_json(404, _err("NAME_UNKNOWN", "not found"), API)
        else:
            self.reply(404, b"not found\n")

    def _manifest(self, name: str, ref: str) -> None:
        found = self.published.manifest(name, ref)
        if found is None:
            code = "MANIFEST_UNKNOWN" if self.published.repo_exists(name) else "NAME_UNKNOWN"
            message = self._left_out(name, ref) if code == "MANIFEST_UNKNOWN" else None
            self.reply_json(404, _err(code, message or "manifest unknown", {"name": name, "reference": ref}), API)
            return
        digest, media = found
        try:
            data = self.store.path(digest).read_bytes()
        except FileNotFoundError:
            self.reply_json(404, _err("MANIFEST_UNKNOWN", "manifest missing from the store"), API)
            return
        self.reply(200, data, {**API, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'}, media)

    def _blob(self, name: str, digest: str) -> None:
        size = self.published.blob_size(digest)
        if size is None or not self.published.repo_exists(name):
            self.reply_json(404, _err("BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest}), API)
            return
        self.send_file(self.store.path(digest), size,
                       {**API, "Docker-Content-Digest": digest, "ETag": f'"{digest}"',
                        "Cache-Control": "max-age=31536000, immutable"}, "application/octet-stream")

    def _left_out(self, name: str, ref: str) -> str | None:
        """A child manifest of a published multi-platform index that the bundle left out (``platforms:``): say
        which platforms the bundle carries instead of a bare "manifest unknown" (``skopeo copy --all``, ``ctr
        --all-platforms`` and pulls for another architecture ask for them)."""
        if not ref.startswith("sha256:"):
            return None
        for digest in self.published.indexes(name):
            try:
                index = json.loads(self.store.path(digest).read_bytes())
            except (OSError, ValueError):
                continue
            children = index.get("manifests") or []
            if not any(isinstance(c, dict) and c.get("digest") == ref for c in children):
                continue
            want = next(c.get("platform") or {} for c in children if c.get("digest") == ref)
            kept = sorted({_platform(c.get("platform") or {}) for c in children
                           if isinstance(c, dict) and self.store.has(str(c.get("digest")))})
            return (f"{_platform(want)} is not in the bundle: it carries {', '.join(kept) or 'no platform'} of this "
                    "image (the spec's platforms: decide which; list every platform to carry them all)")
        return None


def _platform(p: dict[str, object]) -> str:
    out = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return f"{out}/{p['variant']}" if p.get("variant") else out
