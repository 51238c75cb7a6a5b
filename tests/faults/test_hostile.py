"""Hostile input: crafted tar members (``..``, absolute paths, links, devices, duplicates, huge and negative
declared sizes, odd PAX records, GNU extension headers), malformed indexes signed by the trusted key, indexes
signed by an untrusted key, and specs/agent configs with a wrong-typed value at every field of their schema.
Every one is refused with a typed error (VerifyError with a reason, SpecError naming file:line: field.path),
never a traceback; a sample goes through the real agent (quarantined, nothing written outside its state)."""

from __future__ import annotations

import base64
import json
import re
import tarfile
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from hydra_bundle.agent.config import AgentConfig, load_config
from hydra_bundle.bundle.index import MAX_INDEX_BYTES
from hydra_bundle.bundle.reader import verify_bundle
from hydra_bundle.bundle.sign import load_private_key, load_public_key, sign, verify
from hydra_bundle.errors import SpecError, UsageError, VerifyError
from hydra_bundle.spec import load_spec
from hydra_bundle.spec.model import BundleSpec
from hydra_bundle.spec.yamlmodel import fmt_loc
from tests.faults.conftest import Bundle, Keys
from tests.faults.support import TIMEOUT, Tally, journal, store_blobs
from tests.support.agent import AgentProc, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

Members = list[tuple[tarfile.TarInfo, bytes]]
BLOCK = 512


def read_members(path: Path) -> Members:
    out = []
    with tarfile.open(path, "r:") as tf:
        for ti in tf:
            f = tf.extractfile(ti)
            out.append((ti, f.read() if f else b""))
    return out


def header(ti: tarfile.TarInfo, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


def entry(ti: tarfile.TarInfo, data: bytes, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return header(ti, fmt) + data + b"\0" * (-len(data) % BLOCK)


def tar_bytes(parts: list[bytes]) -> bytes:
    body = b"".join(parts)
    return body + b"\0" * (2 * BLOCK + (-(len(body) + 2 * BLOCK) % tarfile.RECORDSIZE))


def ti(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, **kw: Any) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.size, t.mode, t.mtime = type_, size, 0o644, 1700000000
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def pax_raw(records: bytes, name: str, data: bytes, pad: bytes = b"") -> bytes:
    """An 'x' header carrying exactly ``records`` (``pad`` overwrites the start of its block padding)."""
    x = ti("././@PaxHeader", tarfile.XHDTYPE, len(records))
    padding = b"\0" * (-len(records) % BLOCK)
    padding = (pad + padding[len(pad):]) if padding else b""
    return header(x, tarfile.USTAR_FORMAT) + records + padding + entry(ti(name, size=len(data)), data,
                                                                          tarfile.USTAR_FORMAT)


def rec(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    n = len(body) + len(str(n))
    return f"{n}".encode() + body


class Crafted:
    """The small signed bundle, member by member, to splice hostile entries into."""

    def __init__(self, b: Bundle):
        self.ms = read_members(b.path)

    def entries(self, idx: slice) -> list[bytes]:
        return [entry(t, d) for t, d in self.ms[idx]]

    def splice(self, *hostile: bytes, at: int = 4) -> bytes:
        return tar_bytes([*self.entries(slice(0, at)), *hostile, *self.entries(slice(at, None))])

    def first_blob(self) -> tuple[tarfile.TarInfo, bytes]:
        return next((t, d) for t, d in self.ms if t.name.startswith("blobs/"))


def hostile_tars(b: Bundle, outside: Path) -> Iterator[tuple[str, bytes, set[str]]]:
    """(case, tar bytes, acceptable reasons)."""
    c = Crafted(b)
    blob_t, blob_d = c.first_blob()
    bad = {"bad-member"}
    esc = str(outside / "escape-abs")
    yield "dotdot", c.splice(entry(ti("blobs/../../escape-dotdot", size=4), b"boom")), bad
    yield "dotdot-first", tar_bytes([entry(ti("../escape-first", size=1), b"x"), *c.entries(slice(None))]), bad
    yield "absolute", c.splice(entry(ti(esc, size=4), b"boom")), bad
    yield "symlink", c.splice(entry(ti(blob_t.name, tarfile.SYMTYPE, linkname="/etc/passwd"), b"")), bad
    yield "hardlink", c.splice(entry(ti("blobs/sha256/x", tarfile.LNKTYPE, linkname="hydra-bundle.json"), b"")), bad
    yield "char-device", c.splice(entry(ti("dev-null", tarfile.CHRTYPE, devmajor=1, devminor=3), b"")), bad
    yield "block-device", c.splice(entry(ti("dev-sda", tarfile.BLKTYPE, devmajor=8), b"")), bad
    yield "fifo", c.splice(entry(ti("fifo", tarfile.FIFOTYPE), b"")), bad
    yield "directory", c.splice(entry(ti("blobs", tarfile.DIRTYPE), b"")), bad
    yield "duplicate-blob", c.splice(entry(blob_t, blob_d), at=len(c.ms)), {"duplicate-member"}
    yield "duplicate-index", c.splice(entry(*c.ms[0])), {"duplicate-member"}
    tb = ti(blob_t.name, size=1 << 40)
    yield "1TB-declared-pax", c.splice(header(tb)), {"truncated"}
    yield "1TB-declared-gnu-base256", c.splice(header(tb, tarfile.GNU_FORMAT)), {"truncated"}
    yield "negative-size", c.splice(header(ti(blob_t.name, size=-512), tarfile.GNU_FORMAT)), bad | {"truncated"}
    yield "sparse-member", c.splice(entry(ti("sparse", tarfile.GNUTYPE_SPARSE), b"")), bad | {"truncated"}
    yield "gnu-longname", c.splice(entry(ti("blobs/sha256/" + "a" * 120, size=4), b"long", tarfile.GNU_FORMAT)), bad
    yield "pax-comment", c.splice(pax_raw(rec("comment", "smuggled"), "blob-c", b"x")), bad
    yield "pax-vendor-key", c.splice(pax_raw(rec("SCHILY.xattr.security.capability", "x"), "blob-v", b"x")), bad
    yield "pax-global", c.splice(entry(ti("pax_global_header", tarfile.XGLTYPE, pax_headers={"comment": "g"}),
                                       b"")), bad
    yield "pax-bad-length", c.splice(pax_raw(b"99 path=blobs/x\n", "blob-l", b"x")), bad | {"truncated"}
    yield "pax-short-length", c.splice(pax_raw(b"9 path=blobs/xyz\n", "blob-s", b"x")), bad | {"truncated"}
    yield "pax-junk-after-records", c.splice(pax_raw(rec("mtime", "1") + b"junk junk", "blob-j", b"x")), bad
    yield "pax-data-in-padding", c.splice(pax_raw(rec("mtime", "1"), "blob-p", b"x", pad=b"hidden")), \
        {"trailing-data", "bad-member"}
    yield "pax-path-dotdot", c.splice(pax_raw(rec("path", "../../escape-pax"), "ok-name", b"x")), bad
    yield "pax-path-absolute", c.splice(pax_raw(rec("path", esc + "-pax"), "ok-name", b"x")), bad
    yield "pax-size-huge", c.splice(pax_raw(rec("size", str(1 << 40)), blob_t.name, b"")), {"truncated"} | bad
    yield "pax-two-headers", c.splice(header(ti("././@PaxHeader", tarfile.XHDTYPE, len(rec("mtime", "1"))),
                                             tarfile.USTAR_FORMAT)
                                      + rec("mtime", "1").ljust(BLOCK, b"\0")
                                      + pax_raw(rec("mtime", "2"), "blob-2", b"x")), bad
    yield "pax-binary-path", c.splice(pax_raw(rec("hdrcharset", "BINARY") + b"15 path=bl\xffob\n", "n", b"x")), \
        bad | {"unknown-member"}
    # the signed index itself, with a header that `tar -x` as root would obey: setuid, another owner
    idx_t, idx_d = c.ms[0]
    for case, kw in (("index-setuid", {"mode": 0o4755}), ("index-owner", {"uid": 1000, "gid": 1000}),
                     ("index-owner-names", {"uname": "user", "gname": "user"}),
                     ("index-linkname", {"linkname": "x"})):
        t = ti(idx_t.name, size=idx_t.size, **kw)
        yield case, tar_bytes([entry(t, idx_d), *c.entries(slice(1, None))]), bad
    yield "checksum-field-space", c.splice(entry(ti("blobs/x", size=1), b"x")[:155] + b"!"
                                           + entry(ti("blobs/x", size=1), b"x")[156:]), bad


def test_hostile_tar_members(small_bundle: Bundle, fault_keys: Keys, tmp_path: Path) -> None:
    keys = [load_public_key(fault_keys.pub)]
    verify_bundle(small_bundle.path, keys)
    outside = tmp_path / "outside"
    outside.mkdir()
    tally = Tally("hostile: crafted tar members (verify_bundle)", na=("converged",))
    wrong = []
    for case, data, reasons in hostile_tars(small_bundle, outside):
        p = tmp_path / f"{case}.tar"
        p.write_bytes(data)
        tally.trials += 1
        try:
            verify_bundle(p, keys)
            wrong.append(f"{case}: accepted")
        except VerifyError as e:
            if e.reason not in reasons:
                wrong.append(f"{case}: {e.reason}: {e.detail}")
            else:
                tally.refused += 1
    tally.save()
    assert not wrong
    assert list(outside.iterdir()) == [] and not list(tmp_path.parent.glob("escape-*"))


# ---------------------------------------------------------------- indexes

def signed(index: bytes, key: Path, rest: list[bytes] | None = None) -> bytes:
    sig = sign(load_private_key(key), index)
    return tar_bytes([entry(ti("hydra-bundle.json", size=len(index)), index),
                      entry(ti("hydra-bundle.json.sig", size=len(sig)), sig), *(rest or [])])


def bad_indexes(b: Bundle) -> Iterator[tuple[str, bytes]]:
    good = json.loads(read_members(b.path)[0][1])

    def edit(fn: Callable[[dict[str, Any]], None]) -> bytes:
        d = json.loads(json.dumps(good))
        fn(d)
        return json.dumps(d).encode()

    yield "not-json", b"{not json"
    yield "json-array", b"[]"
    yield "empty", b""
    yield "utf8-garbage", b"\xff\xfe{}"
    yield "deep-nesting", b'{"spec":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    yield "sequence-string", edit(lambda d: d.update(sequence="one"))
    yield "sequence-negative", edit(lambda d: d.update(sequence=-1))
    yield "name-number", edit(lambda d: d.update(name=5))
    yield "blobs-object", edit(lambda d: d.update(blobs={}))
    yield "layout-list", edit(lambda d: d.update(layout=[]))
    yield "images-string", edit(lambda d: d["components"].update(images="x"))
    yield "blob-size-negative", edit(lambda d: d["blobs"][0].update(size=-1))
    yield "blob-size-float", edit(lambda d: d["blobs"][0].update(size=1.5))
    yield "blob-digest-path", edit(lambda d: d["blobs"][0].update(digest="sha256:../../etc/passwd"))
    yield "created-garbage", edit(lambda d: d.update(created="yesterday"))
    yield "expires-garbage", edit(lambda d: d.update(expires="never"))
    yield "format-v2", edit(lambda d: d.update(format="hydra-bundle/v2"))
    yield "unknown-key", edit(lambda d: d.update(evil=1))
    yield "layout-missing-index", edit(lambda d: d["layout"].pop("index.json"))
    yield "duplicate-blob", edit(lambda d: d["blobs"].append(d["blobs"][0]))
    yield "component-blob-unlisted", edit(lambda d: d["components"]["files"][0]["blobs"].append("sha256:" + "e" * 64))
    yield "missing-fields", b"{}"


def test_malformed_indexes_signed_by_the_trusted_key(small_bundle: Bundle, fault_keys: Keys, tmp_path: Path) -> None:
    keys = [load_public_key(fault_keys.pub)]
    tally = Tally("hostile: malformed index signed by the trusted key (verify_bundle)", na=("converged",))
    wrong = []
    for case, index in bad_indexes(small_bundle):
        p = tmp_path / f"{case}.tar"
        p.write_bytes(signed(index, fault_keys.key))
        tally.trials += 1
        try:
            verify_bundle(p, keys)
            wrong.append(f"{case}: accepted")
        except VerifyError as e:
            tally.refused += 1
            if e.reason != "bad-index":
                wrong.append(f"{case}: {e.reason}: {e.detail}")
    # a 100 MB index: refused from its header, before it is read (a sparse file, nothing is written)
    p = tmp_path / "huge-index.tar"
    size = 100 << 20
    with open(p, "wb") as f:
        f.write(header(ti("hydra-bundle.json", size=size)))
        f.truncate(BLOCK + size + 2 * BLOCK)
    tally.trials += 1
    try:
        verify_bundle(p, keys)
        wrong.append("100 MB index: accepted")
    except VerifyError as e:
        tally.refused += 1
        if e.reason != "too-large" or str(MAX_INDEX_BYTES) not in e.detail:
            wrong.append(f"100 MB index: {e}")
    tally.save()
    assert not wrong


def test_signatures_from_untrusted_keys_and_odd_signatures(small_bundle: Bundle, fault_keys: Keys,
                                                           tmp_path: Path) -> None:
    good, other = load_public_key(fault_keys.pub), load_public_key(fault_keys.other_pub)
    c = Crafted(small_bundle)
    tally = Tally("hostile: untrusted or malformed signatures (verify_bundle)", na=("converged",))
    cases: dict[str, tuple[bytes, list[Any], str]] = {
        "untrusted-key": (small_bundle.path.read_bytes(), [other], "bad-signature"),
        "no-trusted-keys": (small_bundle.path.read_bytes(), [], "no-trusted-keys"),
        "unsigned": (tar_bytes([*c.entries(slice(0, 1)), *c.entries(slice(2, None))]), [good], "unsigned"),
        "resigned-by-other": (tar_bytes([*c.entries(slice(0, 1)),
                                         entry(ti("hydra-bundle.json.sig", size=96),
                                               sign(load_private_key(fault_keys.other_key), c.ms[0][1]).ljust(96)),
                                         *c.entries(slice(2, None))]), [good], "bad-signature"),
        "not-base64": (tar_bytes([*c.entries(slice(0, 1)), entry(ti("hydra-bundle.json.sig", size=8), b"!!!!????"),
                                  *c.entries(slice(2, None))]), [good], "bad-signature"),
        "huge-signature": (tar_bytes([*c.entries(slice(0, 1)), entry(ti("hydra-bundle.json.sig", size=5000),
                                                                     b"A" * 5000), *c.entries(slice(2, None))]),
                           [good], "too-large"),
    }
    wrong = []
    for case, (data, keys, want) in cases.items():
        p = tmp_path / f"{case}.tar"
        p.write_bytes(data)
        tally.trials += 1
        try:
            verify_bundle(p, keys)
            wrong.append(f"{case}: accepted")
        except VerifyError as e:
            tally.refused += 1
            if e.reason != want:
                wrong.append(f"{case}: {e}")
    tally.save()
    assert not wrong


def test_non_canonical_base64_signature_is_refused(fault_keys: Keys) -> None:
    """A DER signature whose length is not a multiple of 3 leaves unused bits in the last base64 digit; another
    spelling of the same signature must not verify (every byte of the bundle is covered)."""
    key, pub = load_private_key(fault_keys.key), load_public_key(fault_keys.pub)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in range(50):
        data = b"index %d" % i
        sig = sign(key, data)
        if not sig.endswith(b"="):
            continue
        assert verify([pub], data, sig) is pub
        body = sig.rstrip(b"=")
        mask = 0b1111 if sig.endswith(b"==") else 0b11  # the unused low bits of the last digit
        other = alphabet.index(body[-1:]) ^ mask
        variant = body[:-1] + alphabet[other:other + 1] + sig[len(body):]
        assert base64.b64decode(variant) == base64.b64decode(sig)
        with pytest.raises(VerifyError) as ei:
            verify([pub], data, variant)
        assert "canonical" in ei.value.detail
        return
    pytest.fail("no signature with base64 padding in 50 tries")


def test_whitespace_around_the_signature_is_refused(small_bundle: Bundle, fault_keys: Keys, tmp_path: Path) -> None:
    keys = [load_public_key(fault_keys.pub)]
    c = Crafted(small_bundle)
    (idx_t, idx_d), (sig_t, sig_d) = c.ms[0], c.ms[1]
    for extra in (b"\n", b" ", b"\r\n"):
        padded = sig_d + extra
        p = tmp_path / f"sig-{len(extra)}.tar"
        p.write_bytes(tar_bytes([entry(idx_t, idx_d), entry(ti(sig_t.name, size=len(padded)), padded),
                                 *c.entries(slice(2, None))]))
        with pytest.raises(VerifyError) as ei:
            verify_bundle(p, keys)
        assert ei.value.reason == "bad-signature" and "whitespace" in ei.value.detail


def test_hostile_bundles_through_the_agent(small_bundle: Bundle, fault_keys: Keys, tmp_path: Path) -> None:
    """A sample of the crafted tars and signed malformed indexes: each quarantined with a reason, the agent keeps
    running, nothing is published and nothing appears outside its state."""
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    names = []
    for case, data, _ in hostile_tars(small_bundle, outside):
        if case in ("dotdot", "absolute", "symlink", "hardlink", "char-device", "1TB-declared-pax",
                    "pax-path-dotdot", "pax-junk-after-records", "duplicate-blob"):
            (work / f"{case}.tar").write_bytes(data)
            names.append(f"{case}.tar")
    for case, index in bad_indexes(small_bundle):
        if case in ("not-json", "expires-garbage", "created-garbage", "deep-nesting", "blob-digest-path"):
            (work / f"index-{case}.tar").write_bytes(signed(index, fault_keys.key))
            names.append(f"index-{case}.tar")
    tally = Tally("hostile: crafted tars and signed malformed indexes through the agent", trials=len(names))
    with AgentProc(tmp_path / "a", [fault_keys.pub]) as agent:
        agent.start()
        for n in names:
            agent.drop_file(work / n)
        wait_for(lambda: len(agent.quarantined()) >= len(names), 60, f"quarantined\n{agent.log_tail()}")
        q = {Path(x["file"]).name: x for x in agent.quarantined()}
        assert sorted(q) == sorted(names)
        assert all(x["reason"] and x["detail"] for x in q.values())
        tally.refused = len(q)
        assert "Traceback" not in agent.log.read_text() and "pipeline error" not in agent.log.read_text()
        assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == []
        assert journal(agent.state, "SELECT COUNT(*) FROM refs") == [(0,)] and store_blobs(agent.state) == {}
        agent.drop_file(small_bundle.path)  # still healthy: a good bundle goes through
        agent.wait_state("small", "1.0.0", "complete")
        tally.converged = len(names)
    assert list(outside.iterdir()) == [] and not list(tmp_path.rglob("escape-*"))
    tally.save()


# ---------------------------------------------------------------- specs and configs: a wrong type at every field

def _models(ann: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """('model'|'list'|'dict', Model) for the models inside an annotation (Optional/list/dict unwrapped)."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(ann):
            yield from _models(a)
    elif origin is list and typing.get_args(ann):
        for kind, m in _models(typing.get_args(ann)[0]):
            yield ("list" if kind == "model" else kind), m
    elif origin is dict and len(typing.get_args(ann)) == 2:
        for kind, m in _models(typing.get_args(ann)[1]):
            yield ("dict" if kind == "model" else kind), m
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        yield "model", ann


def _is_list(ann: Any) -> bool:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(ann) if a is not type(None))
    return typing.get_origin(ann) is list or ann is list


def field_paths(model: type[BaseModel], data: dict[str, Any], loc: tuple[str | int, ...] = ()
                ) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every field of every model object present in ``data`` (present or not), with its annotation."""
    for name, f in model.model_fields.items():
        key = f.alias or name
        yield (*loc, key), f.annotation
        sub = data.get(key)
        for kind, m in _models(f.annotation):
            if kind == "model" and isinstance(sub, dict):
                yield from field_paths(m, sub, (*loc, key))
            elif kind == "list" and isinstance(sub, list):
                for i, item in enumerate(sub):
                    if isinstance(item, dict):
                        yield from field_paths(m, item, (*loc, key, i))
            elif kind == "dict" and isinstance(sub, dict):
                for k, item in sub.items():
                    if isinstance(item, dict):
                        yield from field_paths(m, item, (*loc, key, k))


def put(data: Any, loc: tuple[str | int, ...], value: Any) -> Any:
    out = json.loads(json.dumps(data))
    cur = out
    for p in loc[:-1]:
        cur = cur[p]
    cur[loc[-1]] = value
    return out


FULL_SPEC = """\
apiVersion: hydra-bundle/v1
kind: BundleSpec
metadata: {name: full, version: 1.0.0, sequence: 3, description: every field, expires: 90d}
platforms: [linux/amd64, linux/arm64]
vars:
  INSTALLER: {description: NFS installer URL, default: "https://example.com/nfs.tgz", example: "https://x/y"}
images:
- {ref: "registry.example.com/app:1.0", platforms: [linux/amd64]}
charts:
- {name: demo, version: 0.1.0, ref: "oci://registry.example.com/charts/demo", release: demo, namespace: demo,
   values: {replicas: 2}}
- {name: istio-base, version: 1.2.3, repo: "https://charts.example.com", chart: base, sha256: "HEX0"}
manifests:
- {name: crds, path: crds.yaml, sha256: "HEX1"}
files:
- {name: nfs, url: "${vars.INSTALLER}", filename: nfs.tgz}
models:
- {name: tiny, base_url: "https://models.example.com/tiny", files: [{path: config.json, sha256: "HEX2", size: 10}]}
deploy:
  prune: true
  timeout: 10m
  steps:
  - {manifests: [crds], name: crds, when: always, timeout: 90s, wait: true, notes: [first]}
  - {name: simulate-gpu, when: no-gpu, label_nodes: {labels: {run.ai/simulated-gpu-node-pool: default}, nodes: [n1]}}
  - chart: {name: demo, release: demo, namespace: demo, values: {a: 1}, pull_secrets: [gcr-secret],
            image_values: {image.repository: "registry.example.com/app"}, registry_values: [global.registry],
            create_namespace: true}
  - sql: {database: hydra, tables: [{table: vendor, key: [name], rows: [{name: alibaba, display: {enUS: A}}]}]}
  - warmup: {model: tiny, dataset: tiny, namespace: public, model_id: tiny, storage_class: nfs-csi, uri: "http://x/m/",
             data_sync_round: 1, share: true, mount: {uid: 1000, gid: 1000, mode: "0774", path: /}}
  - wait_for: [{kind: Service, name: gw, namespace: istio-system, api_version: v1}]
  - tls: {secret: "${site.domain}", namespace: default, hosts: ["${site.domain}"]}
""".replace("HEX0", "0" * 64).replace("HEX1", "1" * 64).replace("HEX2", "2" * 64)


def wrong_value(ann: Any) -> Any:
    return {"wrong": ["type"]} if _is_list(ann) else ["wrong", "type"]


def check_wrong_types(model: type[BaseModel], base: dict[str, Any], load: Callable[[Path], object], tmp: Path,
                      tally: Tally) -> list[str]:
    wrong = []
    for loc, ann in field_paths(model, base):
        path = fmt_loc(loc)
        f = tmp / "doc.yaml"
        f.write_text(yaml.safe_dump(put(base, loc, wrong_value(ann)), sort_keys=False))
        tally.trials += 1
        try:
            load(f)
            wrong.append(f"{path}: accepted {wrong_value(ann)!r}")
            continue
        except SpecError as e:
            named = re.compile(rf"^{re.escape(str(f))}:\d+: {re.escape(path)}(?:$|[.\[:])")
            if any(named.match(p) for p in e.problems):
                tally.refused += 1
            else:
                wrong.append(f"{path}: {e.problems}")
        except UsageError as e:
            wrong.append(f"{path}: UsageError without file:line: field ({e})")
    return wrong


def test_spec_with_a_wrong_type_at_every_field(tmp_path: Path) -> None:
    base = yaml.safe_load(FULL_SPEC)
    (tmp_path / "full.yaml").write_text(FULL_SPEC)
    load_spec(tmp_path / "full.yaml")  # the base itself is valid
    tally = Tally("hostile: spec with a wrong-typed value at each schema field (SpecError names file:line: field)",
                  na=("converged",))
    wrong = check_wrong_types(BundleSpec, base, load_spec, tmp_path, tally)
    tally.save()
    assert tally.trials > 100 and not wrong, wrong


def test_agent_config_with_a_wrong_type_at_every_field(fault_keys: Keys, tmp_path: Path) -> None:
    for name in ("auth.json", "ca.pem", "kubeconfig", "mysql-password", "tls.crt", "tls.key", "helm"):
        (tmp_path / name).write_text("x")
    base = {
        "drop_dir": str(tmp_path / "drop"), "state_dir": str(tmp_path / "state"), "trusted_keys": [str(fault_keys.pub)],
        "registry": {"listen": "127.0.0.1:5000"}, "files": {"listen": "127.0.0.1:8081"},
        "metrics": {"listen": "127.0.0.1:9480"},
        "push": {"registry": "harbor.site/hydra", "insecure": False, "credentials_file": str(tmp_path / "auth.json"),
                 "ca_file": str(tmp_path / "ca.pem"), "tls_verify": True, "chunk_size": 1 << 24},
        "site": {"cluster_name": "c1", "domain": "cn-sh-a1", "registry": "10.0.0.5:5000", "registry_scheme": "http",
                 "registry_skip_verify": False, "file_server": "http://10.0.0.5:81",
                 "metallb": {"addresses": ["10.0.0.10-10.0.0.20"]}, "kubeconfig": str(tmp_path / "kubeconfig"),
                 "kube_context": "admin", "in_cluster": False,
                 "mysql": {"dsn": "mysql://hydra@10.0.0.7:3306/hydra",
                           "password_file": str(tmp_path / "mysql-password"), "connect_timeout": 5},
                 "storage_class": "nfs-csi", "tls": {"cert_file": str(tmp_path / "tls.crt"),
                                                     "key_file": str(tmp_path / "tls.key")},
                 "helm": str(tmp_path / "helm"), "timeout": "10m", "simulated_gpu_nodes": ["n1"], "vars": {"a": "b"}},
        "limits": {"max_bundle_bytes": 1 << 40, "min_free_bytes": 1 << 30, "ingest_bytes_per_second": 1 << 27},
        "allow_downgrade": False, "poll_interval": 30, "settle_seconds": 5, "incomplete_timeout": 3600,
        "retry_interval": 60, "drops": "keep",
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    load_config(tmp_path / "base.yaml")
    tally = Tally("hostile: agent config with a wrong-typed value at each schema field", na=("converged",))
    wrong = check_wrong_types(AgentConfig, base, load_config, tmp_path, tally)
    tally.save()
    assert tally.trials >= 40 and not wrong, wrong
