"""Split bundles (parts), deltas from a site inventory, diff and copy-to — built from local files, ingested by
one-shot `agent ingest` runs (no daemon, no servers)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hydra_bundle.bundle import PART_NAME
from hydra_bundle.bundle.tarreader import TarReader
from tests.support.agent import AgentProc, wait_for
from tests.support.bundles import keypair, read_index, run_cli, sha256_hex, tar_members, write_spec

EPOCH = "1700000000"
SPLIT = 100_000


@dataclass(frozen=True)
class Env:
    d: Path
    key: Path
    pub: Path
    spec: Path


def _make(d: Path, big_seed: int, version: str = "1.0.0", sequence: int = 1) -> Path:
    (d / "big.bin").write_bytes(random.Random(big_seed).randbytes(300_000))   # > a part: segments
    (d / "mid.bin").write_bytes(random.Random(2).randbytes(60_000))
    (d / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo}\n")
    return write_spec(d / f"spec-{version}.yaml", version=version, sequence=sequence,
                      manifests=[{"name": "cm", "path": "cm.yaml"}],
                      files=[{"name": "big", "path": "big.bin"}, {"name": "mid", "path": "mid.bin"}])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    d = tmp_path_factory.mktemp("parts")
    key, pub = keypair(d, "k")
    return Env(d, key, pub, _make(d, 1))


def _build(env: Env, out: Path, *extra: object, spec: Path | None = None) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    res = run_cli(["build", "--no-agent-kit",
                   spec or env.spec, "-o", out, "--key", env.key, "--cache-dir", env.d / "cache",
                   "--json", *extra], env={"SOURCE_DATE_EPOCH": EPOCH})
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _flip(path: Path) -> None:
    """Change bytes in the middle of the largest member."""
    with open(path, "rb") as f:
        m = max(TarReader(f), key=lambda e: e.size)
    with open(path, "r+b") as f:
        f.seek(m.offset + m.size // 2)
        f.write(b"\x00\xff\x00")


def _parts(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("*.part-*-of-*.tar"))


def test_split_sizes_segments_verify_alone_and_sums(env: Env, tmp_path: Path) -> None:
    summary = _build(env, tmp_path / "o" / "demo.tar", "--split", str(SPLIT))
    parts = _parts(tmp_path / "o")
    assert len(parts) == len(summary["parts"]) >= 4
    assert not (tmp_path / "o" / "demo.tar").exists()          # never written whole
    idx = read_index(parts[0])
    assert idx["parts"]["count"] == len(parts) and idx["parts"]["maxSize"] == SPLIT
    segs = [s for p in idx["parts"]["parts"] for s in p["segments"]]
    assert len({s["blob"] for s in segs}) == 1 and len(segs) >= 3   # the 300 kB blob is cut across parts
    for k, p in enumerate(parts, 1):
        assert p.stat().st_size <= SPLIT
        names = [m.name for m in tar_members(p)]
        assert names[:5] == ["hydra-bundle.json", "hydra-bundle.json.sig", PART_NAME, "oci-layout", "index.json"]
        assert read_index(p) == idx                              # the same signed index in every part
        res = run_cli(["verify", p, "--pub", env.pub, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["results"][0]["part"] == k
    ok = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "o", capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.count(": OK") == len(parts), ok.stdout + ok.stderr
    res = run_cli(["verify", parts[0], parts[2], "--pub", env.pub])
    assert res.exit_code == 0 and "missing parts 2, 4" in res.stdout, res.output
    res = run_cli(["inspect", parts[1]])
    assert f"split: {len(parts)} parts" in res.stdout and "this file is part 2" in res.stdout
    # a part whose data was altered fails alone, naming the member
    bad = tmp_path / "bad.tar"
    shutil.copyfile(parts[1], bad)
    _flip(bad)
    res = run_cli(["verify", bad, "--pub", env.pub])
    assert res.exit_code == 1 and "digest-mismatch" in res.stderr


def test_unsplit_layout_unchanged(env: Env, tmp_path: Path) -> None:
    _build(env, tmp_path / "one.tar")
    names = [m.name for m in tar_members(tmp_path / "one.tar")]
    assert PART_NAME not in names and names[2:4] == ["oci-layout", "index.json"]
    assert "parts" not in read_index(tmp_path / "one.tar")


def _agent(root: Path, env: Env, **kw: object) -> AgentProc:
    a = AgentProc(root, [env.pub], **kw)
    a.drop.mkdir(parents=True, exist_ok=True)
    return a


def _bundles(agent: AgentProc) -> list[dict]:
    return json.loads(agent.cli("status", "--json").stdout)["bundles"]


def _state(agent: AgentProc) -> dict:
    (b,) = _bundles(agent)
    return b


@pytest.mark.slow
def test_agent_parts_shuffled_corrupt_part_quarantined_then_complete(env: Env, tmp_path: Path) -> None:
    _build(env, tmp_path / "o" / "demo.tar", "--split", str(SPLIT))
    parts = _parts(tmp_path / "o")
    n = len(parts)
    order = list(range(n))
    random.Random(7).shuffle(order)
    agent = _agent(tmp_path / "a", env)
    bad_k = order[1]
    bad = tmp_path / "corrupt" / parts[bad_k].name
    bad.parent.mkdir()
    shutil.copyfile(parts[bad_k], bad)
    _flip(bad)
    for i, k in enumerate(order[:-1]):
        src = bad if k == bad_k else parts[k]
        res = agent.cli("ingest", str(src), check=False)
        if k == bad_k:
            assert "quarantined" in res.stdout + res.stderr, res.stdout + res.stderr
        st = _state(agent)
        assert st["state"] == "waiting", st
        have = {order[j] + 1 for j in range(i + 1) if order[j] != bad_k}
        want = ", ".join(str(x) for x in range(1, n + 1) if x not in have)
        assert f"waiting for parts {want} of {n}" in st["detail"], st
    assert st["parts"]["missing"] == [x for x in range(1, n + 1) if x not in have]
    assert parts[order[0]].exists()                                  # parts are not deleted by default
    # the same part again: no-op
    agent.cli("ingest", str(parts[order[0]]), check=False)
    assert _state(agent)["state"] == "waiting"
    text = agent.cli("status").stdout
    assert "waiting for parts" in text
    # the last part, then a good copy of the quarantined one → complete
    agent.cli("ingest", str(parts[order[-1]]), check=False)
    assert f"waiting for parts {bad_k + 1} of {n}" in _state(agent)["detail"]
    agent.cli("ingest", str(parts[bad_k]), check=False)
    st = _state(agent)
    assert st["state"] == "complete", st
    big = sha256_hex((env.d / "big.bin").read_bytes())
    blob = agent.state / "store" / "blobs" / "sha256" / big
    assert blob.exists() and sha256_hex(blob.read_bytes()) == big
    assert not list((agent.state / "store" / "assembling").iterdir())
    assert list((agent.state / "quarantine").glob("*.reason.json"))


@pytest.mark.slow
def test_a_corrupt_part_of_one_bundle_never_damages_another(env: Env, tmp_path: Path) -> None:
    """Two split bundles in flight share a blob (the same big file). A corrupt part of the second, carrying a
    segment of that blob, is quarantined; the first still completes with its own good parts."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(env.d / "big.bin", other / "big.bin")         # the shared blob
    (other / "own.bin").write_bytes(random.Random(77).randbytes(50_000))
    spec_b = write_spec(other / "spec.yaml", name="other", files=[{"name": "big", "path": "big.bin"},
                                                                  {"name": "own", "path": "own.bin"}])
    _build(env, tmp_path / "a" / "demo.tar", "--split", str(SPLIT))
    _build(env, tmp_path / "b" / "other.tar", "--split", str(SPLIT), spec=spec_b)
    parts_a, parts_b = _parts(tmp_path / "a"), _parts(tmp_path / "b")
    big = "sha256:" + sha256_hex((env.d / "big.bin").read_bytes())
    idx_b = read_index(parts_b[0])
    seg_parts = sorted({k + 1 for k, p in enumerate(idx_b["parts"]["parts"])
                        if any(sg["blob"] == big for sg in p["segments"])})
    agent = _agent(tmp_path / "site", env)
    for p in parts_a[:-1]:
        agent.cli("ingest", str(p), check=False)
    # every part of B but one, then a corrupt copy of a part holding a segment of the shared blob
    bad_k = seg_parts[0]
    for k, p in enumerate(parts_b, 1):
        if k != bad_k:
            agent.cli("ingest", str(p), check=False)
    bad = tmp_path / "corrupt" / parts_b[bad_k - 1].name
    bad.parent.mkdir()
    shutil.copyfile(parts_b[bad_k - 1], bad)
    _flip(bad)
    res = agent.cli("ingest", str(bad), check=False)
    assert "quarantined" in res.stdout + res.stderr, res.stdout + res.stderr
    # A's last part: A completes, its blob whole
    agent.cli("ingest", str(parts_a[-1]), check=False)
    states = {b["name"]: b for b in _bundles(agent)}
    assert states["demo"]["state"] == "complete", states["demo"]
    blob = agent.state / "store" / "blobs" / "sha256" / big.split(":")[1]
    assert sha256_hex(blob.read_bytes()) == big.split(":")[1]
    # B waits for a good copy of its bad part, and completes with it
    assert states["other"]["state"] == "waiting" and f"waiting for parts {bad_k} of" in states["other"]["detail"]
    agent.cli("ingest", str(parts_b[bad_k - 1]), check=False)
    assert {b["name"]: b["state"] for b in _bundles(agent)} == {"demo": "complete", "other": "complete"}
    assert not list((agent.state / "store" / "assembling").iterdir())


@pytest.mark.slow
def test_delta_ratio_waiting_state_and_diff(env: Env, tmp_path: Path) -> None:
    d = tmp_path / "v2"
    d.mkdir()
    # v2: a bigger blob changed ("one image changed"), the rest identical
    shutil.copyfile(env.d / "mid.bin", d / "mid.bin")
    shutil.copyfile(env.d / "cm.yaml", d / "cm.yaml")
    (d / "big.bin").write_bytes(random.Random(99).randbytes(2_000_000))
    spec2 = write_spec(d / "spec.yaml", version="2.0.0", sequence=2, manifests=[{"name": "cm", "path": "cm.yaml"}],
                       files=[{"name": "big", "path": "big.bin"}, {"name": "mid", "path": "mid.bin"}])
    full1 = tmp_path / "v1.tar"
    _build(env, full1)
    site = _agent(tmp_path / "site", env)
    assert site.cli("ingest", str(full1), check=False).returncode == 0
    inv = tmp_path / "site.json"
    site.cli("inventory", "-o", str(inv))
    delta = tmp_path / "v2-delta.tar"
    summary = _build(env, delta, "--site-inventory", inv, spec=spec2)
    have = {b["digest"] for b in json.loads(inv.read_text())["blobs"]}
    idx = read_index(delta)
    lacking = sum(b["size"] for b in idx["blobs"] if b["digest"] not in have)
    assert summary["omittedBlobs"] > 0 and all(b.get("omitted") for b in idx["blobs"] if b["digest"] in have)
    ratio = delta.stat().st_size / lacking
    print(f"delta ratio {ratio:.4f} ({delta.stat().st_size} / {lacking})")
    assert ratio <= 1.05
    res = run_cli(["verify", delta, "--pub", env.pub])
    assert res.exit_code == 0, res.output
    # diff: one component changed, bytes to carry = the blobs the site lacks
    res = run_cli(["diff", full1, delta, "--json"])
    dd = json.loads(res.stdout)
    # refs carry the bundle version, so every component of v2 is "added" and its v1 ref "removed"
    assert dd["changed"] == []
    assert "hydra-bundle/files/big:2.0.0" in {c["ref"] for c in dd["added"]}
    assert "hydra-bundle/files/big:1.0.0" in {c["ref"] for c in dd["removed"]}
    assert dd["carryBytes"] >= 2_000_000
    assert "to carry" in run_cli(["diff", full1, delta]).stdout
    # the site holding v1 completes the delta
    site.cli("ingest", str(delta), check=False)
    assert {b["version"]: b["state"] for b in _bundles(site)}["2.0.0"] == "complete"
    # a site without the base waits, naming the missing blob, nothing published; completes once the base came
    fresh = _agent(tmp_path / "fresh", env, allow_downgrade=True)  # the base (sequence 1) arrives after v2
    fresh.cli("ingest", str(delta), check=False)
    b = _state(fresh)
    assert b["state"] == "waiting" and "missing blob sha256:" in b["detail"], b
    publish = next(s for s in b["steps"] if s["name"] == "publish")
    assert publish["state"] == "pending"
    fresh.cli("ingest", str(full1), check=False)
    fresh.cli("ingest", str(delta), check=False)
    states = {b["version"]: b["state"] for b in _bundles(fresh)}
    assert states == {"1.0.0": "complete", "2.0.0": "complete"}, states


def test_copy_to_verifies_and_writes_sums(env: Env, tmp_path: Path) -> None:
    _build(env, tmp_path / "o" / "demo.tar", "--split", str(SPLIT))
    parts = _parts(tmp_path / "o")
    stick = tmp_path / "stick"
    stick.mkdir()
    res = run_cli(["copy-to", stick, *parts])
    assert res.exit_code == 0, res.output
    assert "verified by reading back" in res.stdout and "ETA" in res.stderr
    assert sorted(p.name for p in stick.glob("*.tar")) == [p.name for p in parts]
    assert not list(stick.glob("*.part"))
    ok = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=stick, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.slow
def test_split_peak_rss_flat(env: Env, tmp_path: Path) -> None:
    d = tmp_path / "rss"
    d.mkdir()
    with open(d / "w.bin", "wb") as f:
        rnd = random.Random(3)
        for _ in range(48):
            f.write(rnd.randbytes(4 << 20))   # 192 MiB blob, split into 64 MB parts
    spec = write_spec(d / "spec.yaml", files=[{"name": "w", "path": "w.bin"}])
    # VmHWM is the peak of this process's own memory map (ru_maxrss would include the forking pytest's size)
    code = ("import re, sys; from hydra_bundle.cli.main import cli\n"
            "try:\n    cli(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
            "    print('RSS', hwm, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code, "build", "--no-agent-kit",
                        str(spec), "-o", str(d / "o.tar"), "--key",
                        str(env.key), "--cache-dir", str(d / "cache"), "--split", "64MB", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rss_kb = int(p.stderr.split("RSS", 1)[1].split()[0])
    print(f"peak RSS {rss_kb / 1024:.1f} MiB")
    assert rss_kb < 150 * 1024
    assert len(list(d.glob("o.part-*.tar"))) == 4


@pytest.mark.slow
def test_daemon_takes_parts_as_they_land(env: Env, tmp_path: Path) -> None:
    """The running agent: parts dropped one by one in shuffled order (with the .part → rename convention)."""
    _build(env, tmp_path / "o" / "demo.tar", "--split", str(SPLIT))
    parts = _parts(tmp_path / "o")
    order = list(range(len(parts)))
    random.Random(11).shuffle(order)
    with AgentProc(tmp_path / "a", [env.pub]) as agent:
        agent.start()
        for i, k in enumerate(order):
            tmp = agent.drop / (parts[k].name + ".part")
            shutil.copyfile(parts[k], tmp)
            tmp.rename(agent.drop / parts[k].name)
            if i < len(order) - 1:
                want = [x + 1 for x in sorted(order[i + 1:])]
                wait_for(lambda w=want: (agent.bundle("demo", "1.0.0") or {}).get("parts", {}).get("missing") == w,
                         what=f"parts {want} missing")
                assert agent.bundle("demo", "1.0.0")["state"] == "waiting"
        agent.wait_state("demo", "1.0.0", "complete")
        assert all((agent.drop / p.name).exists() for p in parts)   # drops: keep
        assert agent.quarantined() == []
