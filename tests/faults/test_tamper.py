"""Tamper trials: one flipped byte at random offsets stratified over every part of a signed bundle, and cuts at
random lengths. Every trial must be refused by ``verify_bundle`` with a reason; a sample goes through the real
agent, which must quarantine each one with a reason file and publish nothing."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest

from hydra_bundle.bundle import INDEX_NAME, LAYOUT_INDEX_NAME, LAYOUT_NAME, SIG_NAME
from hydra_bundle.bundle.reader import verify_bundle
from hydra_bundle.bundle.sign import load_public_key
from hydra_bundle.errors import VerifyError
from hydra_bundle.oci import mediatypes as mt
from tests.faults.conftest import Bundle, Bundles, Keys
from tests.faults.support import SEED, TIMEOUT, Tally, journal, rng, store_blobs, trials
from tests.support.agent import AgentProc, wait_for
from tests.support.bundles import tar_members

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(TIMEOUT)]

Ranges = list[tuple[int, int]]


def strata(b: Bundle) -> dict[str, Ranges]:
    """Byte ranges of the bundle file by what they hold."""
    idx = b.index
    model = {f.digest for m in idx.components.models for f in m.files}
    files = {c.file.digest for c in [*idx.components.files, *idx.components.manifests]}
    media = {x.digest: x.mediaType for x in idx.blobs}
    out: dict[str, Ranges] = {k: [] for k in ("index", "signature", "layout", "manifests", "layers", "model data",
                                              "file data", "tar headers", "padding and trailer")}
    ms = tar_members(b.path)
    for m in ms:
        data = (m.data_offset, m.data_offset + m.size)
        out["tar headers"].append((m.header_offset, m.data_offset))
        if m.size % 512:
            out["padding and trailer"].append((data[1], data[1] + 512 - m.size % 512))
        if m.name == INDEX_NAME:
            kind = "index"
        elif m.name == SIG_NAME:
            kind = "signature"
        elif m.name in (LAYOUT_NAME, LAYOUT_INDEX_NAME):
            kind = "layout"
        else:
            d = "sha256:" + m.name.rsplit("/", 1)[1]
            kind = ("model data" if d in model else "file data" if d in files else
                    "manifests" if media[d] in mt.ALL_MANIFEST_TYPES or "config" in media[d] else "layers")
        if m.size:
            out[kind].append(data)
    last = ms[-1]
    end = last.data_offset + last.size + (-last.size % 512)
    out["padding and trailer"].append((end, b.path.stat().st_size))
    return out


def pick(r: object, ranges: Ranges) -> int:
    total = sum(e - s for s, e in ranges)
    k = r.randrange(total)  # type: ignore[attr-defined]
    for s, e in ranges:
        if k < e - s:
            return s + k
        k -= e - s
    raise AssertionError("unreachable")


def flip(src: Path, dest: Path, offset: int, mask: int) -> None:
    shutil.copyfile(src, dest)
    flip_in_place(dest, offset, mask)


def flip_in_place(path: Path, offset: int, mask: int) -> None:
    """XOR one byte (a second call with the same arguments restores it)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


def content_end(b: Bundle) -> int:
    """End of the end-of-archive marker: a cut anywhere before it removes content or the marker (the zero
    record padding after it is not part of the archive)."""
    last = tar_members(b.path)[-1]
    return last.data_offset + last.size + (-last.size % 512) + 1024


def test_byte_flips_and_cuts_are_all_refused(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    b = fault_bundles.rich
    keys = [load_public_key(fault_keys.pub)]
    verify_bundle(b.path, keys)  # the original is fine
    r = rng("tamper")
    st = strata(b)
    per = trials(240) // len(st) + 1
    work = tmp_path / "t.tar"
    shutil.copyfile(b.path, work)
    flips = Tally("tamper: one byte flipped (verify_bundle)", na=("converged",))
    reasons: Counter[str] = Counter()
    accepted: list[str] = []
    for kind, ranges in st.items():
        assert ranges, kind
        for _ in range(per):
            off, mask = pick(r, ranges), r.randrange(1, 256)
            flip_in_place(work, off, mask)
            flips.trials += 1
            try:
                verify_bundle(work, keys)
            except VerifyError as e:
                assert e.reason and e.detail
                flips.refused += 1
                reasons[e.reason] += 1
            else:
                accepted.append(f"{kind}: offset {off} ^ {mask:#04x}")
            flip_in_place(work, off, mask)
    flips.notes.append("reasons: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))
    flips.notes.append(f"{per} per stratum: " + ", ".join(st))
    flips.save()
    assert not accepted, f"accepted after a flip (seed {SEED}): {accepted}"

    cuts = Tally("tamper: truncated at a random length (verify_bundle)", na=("converged",))
    creasons: Counter[str] = Counter()
    end = content_end(b)
    data = b.path.read_bytes()
    for n in sorted({0, 1, 511, 512, end - 1, end - 512, *(r.randrange(end) for _ in range(trials(60)))}):
        work.write_bytes(data[:n])
        cuts.trials += 1
        try:
            verify_bundle(work, keys)
        except VerifyError as e:
            cuts.refused += 1
            creasons[e.reason] += 1
        else:
            accepted.append(f"cut at {n}")
    cuts.notes.append("reasons: " + ", ".join(f"{k} {v}" for k, v in creasons.most_common()))
    cuts.save()
    assert not accepted, f"accepted after a cut (seed {SEED}): {accepted}"


def test_every_byte_of_a_header_block_and_the_signature(fault_bundles: Bundles, fault_keys: Keys,
                                                         tmp_path: Path) -> None:
    """Exhaustive over the bytes tarfile does not check (the checksum field's terminators) and the base64
    signature (whose last digit has unused bits): regression for both."""
    b = fault_bundles.rich
    keys = [load_public_key(fault_keys.pub)]
    ms = {m.name: m for m in tar_members(b.path)}
    blob = next(m for m in ms.values() if m.name.startswith("blobs/"))
    sig = ms[SIG_NAME]
    offsets = [*range(blob.header_offset, blob.data_offset), *range(sig.data_offset, sig.data_offset + sig.size)]
    work = tmp_path / "t.tar"
    shutil.copyfile(b.path, work)
    accepted = []
    for off in offsets:
        for mask in (0x01, 0x02, 0x20, 0xFF):
            flip_in_place(work, off, mask)
            try:
                verify_bundle(work, keys)
                accepted.append(f"{off} ^ {mask:#x}")
            except VerifyError:
                pass
            flip_in_place(work, off, mask)
    assert not accepted


def test_tampered_bundles_through_the_agent(fault_bundles: Bundles, fault_keys: Keys, tmp_path: Path) -> None:
    b = fault_bundles.rich
    r = rng("tamper-agent")
    st = strata(b)
    kinds = list(st)
    n = trials(10)
    work = tmp_path / "copies"
    work.mkdir()
    made = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        p = work / f"t{i:03d}-{kind.replace(' ', '-')}.tar"
        flip(b.path, p, pick(r, st[kind]), r.randrange(1, 256))
        made.append(p)
    tally = Tally("tamper: through the agent (quarantined, nothing published)", trials=n)
    with AgentProc(tmp_path / "a", [fault_keys.pub]) as agent:
        agent.start()
        for p in made:
            agent.drop_file(p)
        wait_for(lambda: len(agent.quarantined()) >= n, 60 + 3 * n, f"{n} quarantined\n{agent.log_tail()}")
        q = agent.quarantined()
        assert sorted(Path(x["file"]).name for x in q) == sorted(p.name for p in made)
        for x in q:
            assert x["reason"] and x["detail"] and Path(x["quarantined"]).is_file(), x
        tally.refused = len(q)
        # nothing published, nothing left in the store, no bundle in any state but quarantined
        assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == []
        assert journal(agent.state, "SELECT COUNT(*) FROM refs") == [(0,)]
        assert store_blobs(agent.state) == {}
        assert {s for (s,) in journal(agent.state, "SELECT state FROM bundles")} == {"quarantined"}
        assert list(agent.drop.iterdir()) == []
        tally.converged = n
        tally.notes.append("reasons: " + ", ".join(f"{k} {v}" for k, v in
                                                   Counter(x["reason"] for x in q).most_common()))
    tally.save()
