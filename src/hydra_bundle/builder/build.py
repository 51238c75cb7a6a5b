"""``hydra-bundle build``: spec → resolve → fetch (parallel, cached, verified) → sign → write."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from .. import __version__
from ..bundle import FORMAT, INSTALLER_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME
from ..bundle import index as ix
from ..bundle.parts import WrittenPart, plan_split
from ..bundle.sign import load_private_key, sign
from ..bundle.tarwriter import Piece
from ..bundle.writer import write_bundle, write_parts
from ..digest import canonical_json, sha256_bytes
from ..disk import BlobSink, ensure_free_space
from ..errors import Cancelled, DigestMismatch, SourceError, UsageError
from ..httpio import tls_verify
from ..oci import mediatypes as mt
from ..oci.client import RegistryClient
from ..oci.layout import OCI_LAYOUT
from ..progress import QuietReporter, Reporter
from ..spec.model import BundleSpec
from .cache import BlobCache
from .context import BlobTask, Context, Finished
from .delta import load_inventory, omit_present
from .kit import KitOptions, build_kit
from .ledger import Ledger
from .sources import make_sources

DIRECT_MIN = 1 << 20  # smaller blobs go through the cache (cheap, and rebuilds reuse them); bigger ones in place


@dataclass
class BuildOptions:
    cache_dir: Path
    key_path: Path | None = None          # None only with unsigned=True
    unsigned: bool = False
    insecure: set[str] = field(default_factory=set)
    mirrors: dict[str, str] = field(default_factory=dict)
    platforms: list[str] | None = None    # override spec platforms
    locked: bool = False
    lock_path: Path | None = None
    expires: str | None = None            # override metadata.expires
    jobs: int = 4
    verify_tls: bool | str = True
    split: int | None = None              # max part size (--split); None: one tar
    site_inventory: Path | None = None    # --site-inventory: leave out blobs the site holds
    cache_blobs: bool = False             # --cache-blobs: big blobs into the blob cache too (a second write)
    agent_kit: bool = True                # --no-agent-kit leaves the agent's wheels and install.sh out
    kit: KitOptions = field(default_factory=KitOptions)


@dataclass
class BuildResult:
    out: Path | None
    index: ix.BundleIndex
    size: int
    downloaded: int
    cached: int
    seconds: float
    signed: bool = False
    parts: list[WrittenPart] = field(default_factory=list)
    omitted: tuple[int, int] = (0, 0)     # blobs, bytes left out (delta)

    def summary(self) -> dict[str, Any]:
        c = self.index.components
        return {
            "bundle": str(self.out) if self.out else None, "name": self.index.name,
            "version": self.index.version, "sequence": self.index.sequence,
            "size": self.size, "blobs": len(self.index.blobs),
            "images": len(c.images), "charts": len(c.charts), "manifests": len(c.manifests),
            "files": len(c.files), "models": len(c.models),
            "downloadedBytes": self.downloaded, "cachedBytes": self.cached,
            "seconds": round(self.seconds, 3), "signed": self.signed,
            "carriedBytes": self.index.carried_size, "omittedBlobs": self.omitted[0],
            "omittedBytes": self.omitted[1],
            **({"parts": [{"path": str(p.path), "size": p.size, "sha256": p.sha256} for p in self.parts]}
               if self.parts else {}),
        }


def source_date() -> datetime:
    """SOURCE_DATE_EPOCH (reproducible builds) or now, to the second."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return datetime.fromtimestamp(int(sde), UTC)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH={sde!r} is not an integer") from None
    return datetime.now(UTC).replace(microsecond=0)


def expiry(created: datetime, value: str | None) -> str | None:
    if not value:
        return None
    m = re.match(r"^(\d+)([hdw])$", value)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        delta = {"h": timedelta(hours=n), "d": timedelta(days=n), "w": timedelta(weeks=n)}[unit]
        return ix.format_time(created + delta)
    try:
        return ix.format_time(ix.parse_time(value))
    except ValueError:
        raise UsageError(f"expires {value!r}: expected RFC 3339 time or a duration like 90d") from None


def tag_for(version: str) -> str:
    t = re.sub(r"[^\w.-]", "_", version)[:128]
    return t if re.match(r"^\w", t) else f"v{t}"


def lock_path_for(spec_path: Path) -> Path:
    stem = spec_path.name.rsplit(".", 1)[0]
    return spec_path.with_name(f"{stem}.lock.yaml")


def load_lock(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--locked: lock file {path} does not exist; run `hydra-bundle lock` first") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or data.get("kind") != "BundleLock":
        raise UsageError(f"{path}: not a hydra-bundle lock file")
    return data


class Builder:
    def __init__(self, spec: BundleSpec, opts: BuildOptions, reporter: Reporter | None = None):
        self.spec = spec
        self.opts = opts
        self.rep = reporter or QuietReporter()
        self.cache = BlobCache(opts.cache_dir)
        self.downloaded = 0
        self.cached = 0
        self.sizes: dict[str, int] = {}           # digest → size of every blob the build knows
        self.direct: dict[str, BlobTask] = {}     # blobs to stream straight into the bundle or its parts
        self.ledger = Ledger(opts.cache_dir)      # earlier bundles: where their blobs lie
        self.located: dict[str, list[Piece]] = {}  # blobs to copy from an earlier bundle
        self.site: dict[str, int] | None = None   # --site-inventory: digest → size the site holds
        self._count = threading.Lock()
        self._close: list[Callable[[], None]] = []

    def _context(self, client: RegistryClient, http: httpx.Client) -> Context:
        locked = None
        if self.opts.locked:
            lp = self.opts.lock_path or lock_path_for(self.spec._path or Path("bundle-spec.yaml"))
            locked = load_lock(lp)
        return Context(client=client, http=http, cache=self.cache, base_dir=self.spec.base_dir,
                       platforms=self.opts.platforms or self.spec.platforms,
                       tag=tag_for(self.spec.metadata.version), locked=locked, log=self.rep.log,
                       url_mirrors={k: v for k, v in self.opts.mirrors.items() if "://" in k},
                       verify_tls=self.opts.verify_tls)

    def resolve_and_fetch(self, pin_only: bool = False) -> tuple[Context, list[Finished]]:
        """Resolve every source, bring every blob into the cache, and finish the components.

        With ``pin_only`` (``lock``) only content without a known digest is downloaded (to hash it), and the
        sources just record their pins: locking a spec never pulls image layers or pinned model weights."""
        registry_mirrors = {k: v for k, v in self.opts.mirrors.items() if "://" not in k}
        client = RegistryClient(self.opts.insecure, registry_mirrors, verify_tls=self.opts.verify_tls)
        http = httpx.Client(timeout=httpx.Timeout(60.0, connect=15.0), follow_redirects=True,
                            verify=tls_verify(self.opts.verify_tls),
                            headers={"User-Agent": f"hydra-bundle/{__version__}"})
        self._close = [client.close, http.close]  # kept open for the in-place downloads while writing; see close()
        ctx = self._context(client, http)
        sources = make_sources(self.spec, ctx)
        self.rep.stage("resolve", None)
        with ThreadPoolExecutor(self.opts.jobs) as pool:
            task_lists = list(pool.map(lambda s: s.resolve(ctx), sources))
        tasks = self._dedup([t for ts in task_lists for t in ts])
        if pin_only:
            for t in tasks:
                if t.digest:
                    t.result = (t.digest, t.size or 0)
            tasks = [t for t in tasks if not t.digest]
        else:
            tasks = self._plan_direct(tasks)
        self._fetch(tasks)
        for t in tasks:
            assert t.result is not None
            self.sizes[t.result[0]] = t.result[1]
        by_key = {t.key: t for t in tasks}
        for ts in task_lists:
            for t in ts:
                if t.key in by_key:
                    t.result = by_key[t.key].result
        if pin_only:
            for s in sources:
                s.pin(ctx)
            return ctx, []
        return ctx, [s.finish(ctx) for s in sources]

    def close(self) -> None:
        """Close the network clients (``build`` and ``lock`` do; library callers of resolve_and_fetch must)."""
        for c in self._close:
            c()
        self._close = []

    @staticmethod
    def _dedup(tasks: list[BlobTask]) -> list[BlobTask]:
        seen: dict[str, BlobTask] = {}
        for t in tasks:
            seen.setdefault(t.key, t)
        return list(seen.values())

    def _plan_direct(self, tasks: list[BlobTask]) -> list[BlobTask]:
        """Take out of the download list the blobs a delta leaves out (the site has them: never fetched), the
        blobs an earlier bundle holds (copied from it while writing) and the big pinned blobs that are not cached
        (downloaded later, straight into their places in the bundle). Returns the tasks still to bring into the
        cache."""
        rest = []
        for t in tasks:
            digest, size = t.digest, t.size
            if digest is None or size is None or self.cache.has(digest, size):
                rest.append(t)
                continue
            if self.site is not None and self.site.get(digest) == size:
                pass
            elif (pieces := self.ledger.find(digest, size)) is not None:
                self.located[digest] = pieces
                self.cached += size
            elif not self.opts.cache_blobs and t.fetch_into is not None and size >= DIRECT_MIN:
                self.direct[digest] = t
            else:
                rest.append(t)
                continue
            t.result = (digest, size)
            self.sizes[digest] = size
        return rest

    def _fill(self, holes: list[tuple[ix.Blob, BlobSink]]) -> None:
        """Download the in-place blobs in parallel into their reserved places (big first)."""
        stop = threading.Event()

        def run(blob: ix.Blob, sink: BlobSink) -> None:
            fetch_into = self.direct[blob.digest].fetch_into
            assert fetch_into is not None
            fetch_into(sink, self.rep.advance, stop)
            with self._count:
                self.downloaded += blob.size

        holes = sorted(holes, key=lambda h: -h[0].size)
        with ThreadPoolExecutor(self.opts.jobs) as pool:
            futures = [pool.submit(run, b, sink) for b, sink in holes]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() and not isinstance(f.exception(), Cancelled)]
            if failed:
                stop.set()
                for g in futures:
                    g.cancel()
                wait(futures)
                raise failed[0].exception()  # type: ignore[misc]
            for f in futures:
                f.result()

    def _fetch(self, tasks: list[BlobTask]) -> None:
        todo = []
        for t in tasks:
            if t.digest and self.cache.has(t.digest, t.size):
                t.result = (t.digest, self.cache.path(t.digest).stat().st_size)
                self.cached += t.result[1]
            else:
                todo.append(t)
        need = sum(t.size or 0 for t in todo)
        if need:
            ensure_free_space(self.cache.root, need, "downloading into the cache")
        self.rep.stage("download", need or None)

        def run(t: BlobTask) -> None:
            def progress(n: int) -> None:
                self.rep.advance(n)

            lock = self.cache.lock(t.key)
            with lock:
                t.result = t.fetch(progress)
            self.cache.written.add(t.result[0])
            with self._count:
                self.downloaded += t.result[1]

        todo.sort(key=lambda t: -(t.size or 0))  # big first: best parallel finish
        with ThreadPoolExecutor(self.opts.jobs) as pool:
            futures = [pool.submit(run, t) for t in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception():
                    for g in futures:
                        g.cancel()
                    raise f.exception()  # type: ignore[misc]
            for f in futures:
                f.result()

    def compose(self, finished: list[Finished], created: datetime,
                installer: bytes | None = None) -> tuple[ix.BundleIndex, dict[str, bytes]]:
        layout_index = canonical_json({
            "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
            "manifests": [d.json() for f in finished for d in (f.top, f.fallback) if d is not None],
        })
        layout = {LAYOUT_NAME: OCI_LAYOUT, LAYOUT_INDEX_NAME: layout_index}
        types: dict[str, str] = {}
        for f in finished:
            for d, t in f.blob_types.items():
                types.setdefault(d, t)
        blobs = [ix.Blob(digest=d, size=self.sizes[d] if d in self.sizes else self.cache.path(d).stat().st_size,
                         mediaType=t) for d, t in types.items()]
        blobs.sort(key=lambda b: (b.size, b.digest))
        comps = ix.Components()
        for f in finished:
            getattr(comps, f.kind).append(f.component)
        md = self.spec.metadata
        index = ix.BundleIndex(
            format=FORMAT, name=md.name, version=md.version, sequence=md.sequence,
            created=ix.format_time(created), expires=expiry(created, self.opts.expires or md.expires),
            builder=f"hydra-bundle {__version__}", specDigest=sha256_bytes(self.spec._raw),
            platforms=self.opts.platforms or self.spec.platforms, components=comps,
            layout={k: ix.Member(digest=sha256_bytes(v), size=len(v)) for k, v in layout.items()},
            blobs=blobs, spec=self.spec.model_dump(mode="json", exclude_none=True, by_alias=True),
            installer=ix.Member(digest=sha256_bytes(installer), size=len(installer)) if installer else None,
        )
        index.validate_self()
        if installer:
            layout[INSTALLER_NAME] = installer
        return index, layout

    def build(self, out: Path) -> BuildResult:
        try:
            return self._build(out)
        finally:
            self.close()

    def _build(self, out: Path) -> BuildResult:
        t0 = time.monotonic()
        key = None
        if not self.opts.unsigned:
            if self.opts.key_path is None:
                raise UsageError("a signing key is required (--key PREFIX.key), or pass --unsigned explicitly")
            key = load_private_key(self.opts.key_path)  # fail on a bad key before downloading anything
        created = source_date()
        expiry(created, self.opts.expires or self.spec.metadata.expires)  # a bad --expires fails before downloading
        site = load_inventory(self.opts.site_inventory) if self.opts.site_inventory else None
        self.site = site
        _, finished = self.resolve_and_fetch()
        installer = None
        if self.opts.agent_kit:
            self.rep.stage("agent kit", None)
            kit = build_kit(self.opts.platforms or self.spec.platforms, self.opts.kit, self.cache,
                            tag_for(self.spec.metadata.version), self.rep.log)
            finished.append(kit.finished)
            installer = kit.installer
        index, layout = self.compose(finished, created, installer)
        omitted = omit_present(index, site) if site is not None else (0, 0)
        written: list[WrittenPart] = []
        sizes = {b.digest: b.size for b in index.blobs}

        def locate(digest: str) -> list[Piece]:
            return self.located.get(digest) or [(self.cache.path(digest), 0, sizes[digest])]

        def verify(digest: str) -> bool:
            return digest not in self.cache.written

        direct = set(self.direct)
        try:
            if self.opts.split is not None:
                index.parts = plan_split(index, self.opts.split, key is not None)
                index.validate_self()
                self.rep.stage("write", index.carried_size)
                signer = (lambda data: sign(key, data)) if key is not None else None
                written, placed, sig = write_parts(out, index, signer, layout, locate, int(created.timestamp()),
                                                   self.rep.advance, verify, direct, self._fill)
                size = sum(p.size for p in written)
            else:
                index_bytes = index.to_bytes()
                sig = sign(key, index_bytes) if key is not None else None
                self.rep.stage("write", index.carried_size)
                size, placed = write_bundle(out, index, index_bytes, sig, layout, locate, int(created.timestamp()),
                                            self.rep.advance, verify, direct, self._fill)
        except DigestMismatch as e:
            if e.expected in self.direct:
                raise  # the source served other bytes than its manifest names: nothing cached to blame
            if e.expected in self.located:
                self.ledger.forget()
                raise SourceError(f"an earlier bundle this build copies from was changed since it was written "
                                  f"({e}); its record was dropped: run the build again to download the blob") from None
            self.cache.discard(e.expected)
            raise SourceError(f"the build cache held a damaged blob ({e}); it was removed: run the build again "
                              "to download it") from None
        self.ledger.record({d: ext for d, ext in placed.items() if sizes[d] >= DIRECT_MIN})
        return BuildResult(out, index, size, self.downloaded, self.cached, time.monotonic() - t0, sig is not None,
                           written, omitted)

    def lock(self, path: Path) -> dict[str, Any]:
        try:
            ctx, _ = self.resolve_and_fetch(pin_only=True)
        finally:
            self.close()
        data = {"apiVersion": "hydra-bundle/v1", "kind": "BundleLock",
                "specDigest": sha256_bytes(self.spec._raw),
                **{k: dict(sorted(ctx.lock_out[k].items())) for k in sorted(ctx.lock_out)}}  # resolved in parallel
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("# Written by `hydra-bundle lock`: every tag pinned to a digest, every file to a sha256.\n"
                       + yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)
        return data
