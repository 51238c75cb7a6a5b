"""Fuzzers (hypothesis), bounded by HYDRA_FUZZ_SECONDS in total (default 60, split over the targets):

* the tar/index reader and the store ingest path on random bytes, mutated valid bundles and tars with random
  members (names, types, sizes, PAX records): only VerifyError, and nothing is written except complete,
  correctly named blobs inside the store;
* the spec loader on random YAML documents, valid specs with random values put at random places, and
  character-level mutations of a valid spec: only SpecError/UsageError.

Each round runs with a seed derived from HYDRA_FAULTS_SEED, printed on failure.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from hydra_bundle.agent.store import Store
from hydra_bundle.bundle.reader import open_bundle, verify_bundle
from hydra_bundle.bundle.sign import load_public_key
from hydra_bundle.errors import SpecError, UsageError, VerifyError
from hydra_bundle.spec import load_spec
from tests.faults.conftest import Bundle, Keys
from tests.faults.support import FUZZ_SECONDS, SEED, Tally, sha256_file
from tests.faults.test_hostile import FULL_SPEC, put
from tests.faults.test_tamper import content_end

pytestmark = [pytest.mark.faults, pytest.mark.slow,
              pytest.mark.timeout(int(120 + FUZZ_SECONDS * 2))]

TARGETS = 5
ROUND = 40  # examples per hypothesis run; runs repeat (new seeds) until the time share is used


def fuzz(name: str, strategy: st.SearchStrategy[Any], body: Callable[[Any], bool]) -> Tally:
    """Run ``body`` on examples of ``strategy`` for this target's share of HYDRA_FUZZ_SECONDS; ``body`` says
    whether the input was refused (a typed error) rather than accepted."""
    tally = Tally(f"fuzz: {name}", na=("converged",))
    deadline = time.monotonic() + FUZZ_SECONDS / TARGETS
    rounds = 0

    def one(x: Any) -> None:
        tally.trials += 1
        tally.refused += bool(body(x))

    while time.monotonic() < deadline:
        rounds += 1
        test = settings(max_examples=ROUND, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck))(given(strategy)(one))
        try:
            seed(SEED * 1000 + rounds)(test)()
        except Exception as e:
            raise AssertionError(f"{name}: HYDRA_FAULTS_SEED={SEED}, round {rounds}: {e!r}") from e
    tally.notes.append(f"{rounds} rounds of {ROUND} examples in {FUZZ_SECONDS / TARGETS:.0f} s; no other exception, "
                       "the rest accepted")
    tally.save()
    return tally


class Ingest:
    """verify_bundle and the agent's ingest path (open_bundle → Store.put_member) on one file."""

    def __init__(self, root: Path, keys: list[Any]):
        self.root = root
        self.keys = keys
        self.file = root / "fuzz.tar"
        self.store = Store(root / "store")

    def check(self, data: bytes) -> bool:
        """True when verify_bundle refused the file."""
        self.file.write_bytes(data)
        refused = False
        try:
            verify_bundle(self.file, self.keys)
        except VerifyError as e:
            assert e.reason and e.detail
            refused = True
        shutil.rmtree(self.store.blobs)
        self.store.blobs.mkdir()
        try:
            with open_bundle(self.file, self.keys) as ob:
                for m in ob.members():
                    self.store.put_member(m)
                ob.finish()
        except VerifyError:
            pass
        assert sorted(p.name for p in self.root.iterdir()) == ["fuzz.tar", "store"]
        files = {str(p.relative_to(self.store.root)) for p in self.store.root.rglob("*") if not p.is_dir()}
        blobs = {f"blobs/sha256/{p.name}" for p in self.store.blobs.iterdir()}
        assert files - blobs == {".reserve", "index.json", "oci-layout"}, files - blobs
        for p in self.store.blobs.iterdir():
            assert sha256_file(p) == f"sha256:{p.name}", "a blob that does not hash to its name"
        return refused


@pytest.fixture
def ingest(fault_keys: Keys, tmp_path: Path) -> Ingest:
    return Ingest(tmp_path, [load_public_key(fault_keys.pub)])


def test_fuzz_reader_random_bytes(small_bundle: Bundle, ingest: Ingest) -> None:
    head = small_bundle.path.read_bytes()[:2048]
    strategy = st.one_of(st.binary(max_size=4096),
                         st.builds(lambda n, tail: head[:n] + tail, st.integers(0, 2048), st.binary(max_size=2048)))
    fuzz("tar/index reader + ingest: random bytes", strategy, ingest.check)


Mutation = tuple[str, int, int, bytes]
mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "dup-block", "truncate",
                                                "zero-block"]),
                               st.integers(0, 1 << 20), st.integers(1, 1024), st.binary(min_size=1, max_size=16)),
                     min_size=1, max_size=4)


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    b = bytearray(data)
    for op, pos, n, blob in ops:
        if not b:
            break
        pos %= len(b)
        if op == "flip":
            b[pos] ^= (n % 255) + 1
        elif op == "set":
            b[pos:pos + len(blob)] = blob
        elif op == "insert":
            b[pos:pos] = blob
        elif op == "delete":
            del b[pos:pos + n]
        elif op == "dup-block":
            start = pos - pos % 512
            b[start:start] = b[start:start + 512]
        elif op == "zero-block":
            start = pos - pos % 512
            b[start:start + 512] = bytes(len(b[start:start + 512]))
        elif op == "truncate":
            del b[pos:]
    return bytes(b)


def test_fuzz_reader_mutated_bundle(small_bundle: Bundle, ingest: Ingest) -> None:
    data = small_bundle.path.read_bytes()
    end = content_end(small_bundle)

    def body(ops: list[Mutation]) -> bool:
        m = mutate(data, ops)
        if ingest.check(m):
            return True
        assert m[:end] == data[:end], f"accepted a mutation before the end-of-archive marker: {ops}"
        return False  # only the zero record padding after the archive changed

    t = fuzz("tar/index reader + ingest: mutated valid bundle", mutations, body)
    assert t.refused > t.trials // 2


names = st.one_of(st.sampled_from(["hydra-bundle.json", "hydra-bundle.json.sig", "oci-layout", "index.json",
                                   "../x", "/etc/x", "blobs/sha256/" + "0" * 64, "blobs//x", "./a", "a\\b"]),
                  st.text(min_size=1, max_size=120))
pax = st.dictionaries(st.sampled_from(["path", "size", "mtime", "comment", "uname", "hdrcharset", "linkpath",
                                       "SCHILY.xattr.x", "GNU.sparse.map"]), st.text(max_size=30), max_size=3)
member = st.tuples(names, st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                           tarfile.CHRTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE,
                                           tarfile.GNUTYPE_SPARSE, b"Z"]),
                   st.binary(max_size=600), pax, st.integers(-10, 1 << 34))


def crafted(prefix: list[tuple[tarfile.TarInfo, bytes]], ms: list[Any], fmt: int) -> bytes | None:
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for t, d in prefix:
                tf.addfile(t, io.BytesIO(d))
            for name, type_, data, pax_headers, mtime in ms:
                t = tarfile.TarInfo(name)
                t.type, t.size, t.mtime, t.linkname = type_, len(data), mtime, "target"
                t.pax_headers = dict(pax_headers)
                tf.addfile(t, io.BytesIO(data))
    except (ValueError, UnicodeError, tarfile.TarError, OverflowError):
        return None
    return buf.getvalue()


def test_fuzz_reader_crafted_members(small_bundle: Bundle, ingest: Ingest) -> None:
    with tarfile.open(small_bundle.path) as tf:
        prefix = []
        for t in tf.getmembers()[:4]:
            f = tf.extractfile(t)
            prefix.append((t, f.read() if f else b""))
    strategy = st.tuples(st.lists(member, max_size=4), st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
                         st.integers(0, 4))

    def body(x: Any) -> bool:
        ms, fmt, keep = x
        data = crafted(prefix[:keep], ms, fmt)
        return data is not None and ingest.check(data)

    fuzz("tar/index reader + ingest: random members after a signed index", strategy, body)


# ---------------------------------------------------------------- spec loader

def load(tmp: Path, text: str | bytes) -> bool:
    p = tmp / "spec.yaml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_spec(p)
    except (SpecError, UsageError) as e:
        assert str(e)
        return True
    return False


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["${vars.X}", "${site.domain}", "oci://x/y", "linux/amd64", "90d", "10m",
                                     "sha256:" + "a" * 64, "https://e.com/x", "docker-daemon:x", "~", "*a", "&a"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=20)
yaml_chars = st.text(alphabet=st.sampled_from(list("abc01 :-?,[]{}#&*!|>'\"%@`\t\n.=/$~\\")), max_size=300)


def test_fuzz_spec_random_documents(tmp_path: Path) -> None:
    def body(x: Any) -> bool:
        kind, v = x
        return load(tmp_path, yaml.safe_dump(v) if kind == "dump" else v)

    fuzz("spec loader: random YAML documents",
         st.one_of(st.tuples(st.just("dump"), values), st.tuples(st.just("text"), yaml_chars),
                   st.tuples(st.just("bytes"), st.binary(max_size=300))), body)


def _locs(d: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [loc] if loc else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _locs(v, (*loc, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _locs(v, (*loc, i))
    return out


def test_fuzz_spec_mutated_valid_spec(tmp_path: Path) -> None:
    base = yaml.safe_load(FULL_SPEC)
    locs = _locs(base)

    def body(x: Any) -> bool:
        kind, i, v, edits = x
        if kind == "value":
            return load(tmp_path, yaml.safe_dump(put(base, locs[i % len(locs)], v), sort_keys=False))
        text = FULL_SPEC
        for pos, n, s in edits:
            pos %= len(text)
            text = text[:pos] + s + text[pos + n % 8:]
        return load(tmp_path, text)

    edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 16), yaml_chars.map(lambda s: s[:6])),
                     min_size=1, max_size=5)
    fuzz("spec loader: valid spec with a random value at a random place, or edited text",
         st.tuples(st.sampled_from(["value", "text"]), st.integers(0, 1 << 16), values, edits), body)


def test_fuzz_round_trip_is_still_valid(tmp_path: Path) -> None:
    """Sanity for the mutation fuzzer: the unmutated spec loads and round-trips through JSON."""
    (tmp_path / "spec.yaml").write_text(FULL_SPEC)
    spec = load_spec(tmp_path / "spec.yaml")
    assert json.loads(spec.model_dump_json())["metadata"]["name"] == "full"
