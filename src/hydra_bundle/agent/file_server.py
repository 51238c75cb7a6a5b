"""The embedded HTTP file server: models at ``/model/<name>/<path>``, files at ``/files/<name>/<filename>``.

GET and HEAD with ``Content-Length``, ``Last-Modified`` (when the bundle was published) and ``Range``;
directories answer with HTML listings of ``<a href>`` links, sub-directories ending in ``/`` — what rclone's
``http`` backend (the BaizeAI Dataset HTTP loader) reads. A path without its trailing slash redirects (301).
"""

from __future__ import annotations

import html
import mimetypes
import posixpath
from urllib.parse import quote, unquote, urlsplit

from .httpbase import StoreHandler

AREAS = {"model": "model", "files": "files"}


def _listing(title: str, entries: list[str]) -> bytes:
    items = "\n".join(f'<li><a href="{quote(e)}">{html.escape(e)}</a></li>' for e in entries)
    t = html.escape(title)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {t}</title></head><body>\n"
            f"<h1>Index of {t}</h1>\n<ul>\n{items}\n</ul>\n</body></html>\n").encode()


class FileHandler(StoreHandler):
    server_version = "hydra-bundle-files"

    def _not_found(self) -> None:
        self.reply(404, b"not found\n")

    def _route(self) -> None:
        raw = unquote(urlsplit(self.path).path)
        if "\0" in raw or "\\" in raw:
            self._not_found()
            return
        parts = raw.split("/")
        if any(p in (".", "..") for p in parts):
            self._not_found()
            return
        trailing = raw.endswith("/")
        clean = posixpath.normpath(raw)
        segs = [s for s in clean.split("/") if s]
        if not segs:
            self._list("/", [f"{a}/" for a in AREAS])
            return
        area = segs[0]
        if area not in AREAS:
            self._not_found()
            return
        if len(segs) == 1:
            if not trailing:
                self._redirect(f"/{area}/")
                return
            self._list(f"/{area}/", [f"{n}/" for n in self.published.names(area)])
            return
        name, rel = segs[1], "/".join(segs[2:])
        if rel and not trailing:  # a file: one lookup (every Range request of a download comes here)
            hit = self.published.file(area, name, rel)
            if hit is not None:
                digest, size, published = hit
                ctype = mimetypes.guess_type(rel)[0] or "application/octet-stream"
                self.send_file(self.store.path(digest), size, {"ETag": f'"{digest}"'}, ctype, published)
                return
        files = self.published.files(area, name)  # listings, redirects to a directory, 404
        if not files:
            self._not_found()
            return
        prefix = f"{rel}/" if rel else ""
        entries: set[str] = set()
        for path, _size, _t in files:
            if path.startswith(prefix):
                rest = path[len(prefix):]
                entries.add(rest.split("/", 1)[0] + "/" if "/" in rest else rest)
        if not entries:
            self._not_found()
            return
        if not trailing:
            self._redirect(quote(f"/{area}/{name}/{prefix}"))
            return
        dirs = sorted(e for e in entries if e.endswith("/"))
        self._list(f"/{area}/{name}/{prefix}", dirs + sorted(e for e in entries if not e.endswith("/")))

    def _redirect(self, location: str) -> None:
        self.reply(301, b"", {"Location": location})

    def _list(self, title: str, entries: list[str]) -> None:
        self.reply(200, _listing(title, entries), content_type="text/html; charset=utf-8")
