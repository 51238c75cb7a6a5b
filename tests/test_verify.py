"""verify / inspect / the signature: tampering, truncation, trailing data and every bad tar entry kind.

The bundles here are built from local files only (no servers), so these tests are fast.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hydra_bundle.bundle.reader import verify_bundle
from hydra_bundle.bundle.sign import load_public_key
from hydra_bundle.errors import VerifyError
from tests.support.bundles import (
    blob,
    component,
    keypair,
    layout_index,
    member_bytes,
    read_index,
    run_cli,
    sha256_hex,
    tar_members,
    write_spec,
)

EPOCH = "1700000000"


@dataclass(frozen=True)
class Built:
    bundle: Path
    key: Path
    pub: Path
    other_pub: Path
    big: bytes
    manifest: bytes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("verify")
    key, pub = keypair(d, "k")
    _, other_pub = keypair(d, "other")
    big = random.Random(1).randbytes(200_000)
    manifest = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo}\ndata: {a: b}\n"
    (d / "big.bin").write_bytes(big)
    (d / "cm.yaml").write_bytes(manifest)
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text('{"hidden_size": 8}')
    (d / "model" / "model.safetensors").write_bytes(random.Random(2).randbytes(9_000))
    spec = write_spec(
        d / "bundle-spec.yaml",
        manifests=[{"name": "cm", "path": "cm.yaml"}],
        files=[{"name": "big", "path": "big.bin", "sha256": sha256_hex(big)}],
        models=[{"name": "tiny", "path": "model", "files": [{"path": "config.json"}, {"path": "model.safetensors"}]}],
    )
    out = d / "bundle.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "-q", "--cache-dir", d / "cache"],
                  env={"SOURCE_DATE_EPOCH": EPOCH})
    assert res.exit_code == 0, res.output
    return Built(out, key, pub, other_pub, big, manifest)


def _verify_fails(bundle: Path, pub: Path) -> tuple[str, str]:
    """verify must exit 1 with exactly one line on stderr; returns (that line, the --json reason)."""
    res = run_cli(["verify", bundle, "--pub", pub])
    assert res.exit_code == 1, res.output
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"FAILED: {bundle}: "), res.stderr
    res = run_cli(["verify", bundle, "--pub", pub, "--json"])
    assert res.exit_code == 1
    out = json.loads(res.stdout)
    assert out["ok"] is False
    assert lines[0] == f"FAILED: {bundle}: {out['reason']}: {out['detail']}"
    return lines[0], out["reason"]


def _copy(built: Built, tmp_path: Path) -> Path:
    p = tmp_path / "copy.tar"
    shutil.copyfile(built.bundle, p)
    return p


# ---------------------------------------------------------------- the good bundle


def test_verify_ok(built: Built) -> None:
    res = run_cli(["verify", built.bundle, "--pub", built.pub])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"OK: {built.bundle}: demo 1.0.0 (sequence 1),")
    res = run_cli(["verify", built.bundle, "--pub", built.other_pub, "--pub", built.pub, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] is True and out["name"] == "demo" and out["blobs"] == len(read_index(built.bundle)["blobs"])
    ob = verify_bundle(built.bundle, [load_public_key(built.pub)])
    assert ob.signer == out["signer"] and ob.signer.startswith("sha256:")


def test_bundle_layout(built: Built) -> None:
    """Member order, canonical index, every blob once, small blobs first, OCI layout refs."""
    members = tar_members(built.bundle)
    names = [m.name for m in members]
    assert names[:4] == ["hydra-bundle.json", "hydra-bundle.json.sig", "oci-layout", "index.json"]
    idx_bytes = member_bytes(built.bundle, "hydra-bundle.json")
    idx = json.loads(idx_bytes)
    assert idx_bytes == json.dumps(idx, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert idx["format"] == "hydra-bundle/v1" and idx["created"] == "2023-11-14T22:13:20Z"
    blobs = [m for m in members if m.name.startswith("blobs/sha256/")]
    assert [m.name for m in blobs] == ["blobs/sha256/" + b["digest"][7:] for b in idx["blobs"]]
    assert len(set(names)) == len(names) and len(names) == 4 + len(idx["blobs"])
    assert [m.size for m in blobs] == sorted(m.size for m in blobs)
    for b in idx["blobs"]:
        assert sha256_hex(blob(built.bundle, b["digest"])) == b["digest"][7:]
    assert all(m.type == tarfile.REGTYPE for m in members)
    assert json.loads(member_bytes(built.bundle, "oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    layout = layout_index(built.bundle)
    refs = {m["annotations"]["org.opencontainers.image.ref.name"] for m in layout["manifests"]}
    assert refs == {c["ref"] for kind in idx["components"].values() for c in kind}

    f = component(idx, "files", name="big")
    assert f["file"] == {"path": "big.bin", "digest": "sha256:" + sha256_hex(built.big), "size": len(built.big)}
    art = json.loads(blob(built.bundle, f["digest"]))
    assert art["artifactType"] == "application/vnd.hydra-bundle.file.v1"
    assert art["layers"] == [{"mediaType": "application/octet-stream", "digest": f["file"]["digest"],
                              "size": len(built.big), "annotations": {"org.opencontainers.image.title": "big.bin"}}]
    m = component(idx, "manifests", name="cm")
    assert blob(built.bundle, m["file"]["digest"]) == built.manifest
    model = component(idx, "models", name="tiny")
    art = json.loads(blob(built.bundle, model["digest"]))
    assert [(x["annotations"]["org.opencontainers.image.title"], x["mediaType"]) for x in art["layers"]] == [
        ("config.json", "application/vnd.cncf.model.weight.config.v1.raw"),
        ("model.safetensors", "application/vnd.cncf.model.weight.v1.raw"),
    ]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_accepts_signature(built: Built, tmp_path: Path) -> None:
    index = tmp_path / "hydra-bundle.json"
    index.write_bytes(member_bytes(built.bundle, "hydra-bundle.json"))
    sig = tmp_path / "sig.der"
    sig.write_bytes(base64.b64decode(member_bytes(built.bundle, "hydra-bundle.json.sig")))
    cmd = ["openssl", "dgst", "-sha256", "-verify", str(built.pub), "-signature", str(sig), str(index)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.strip() == "Verified OK", ok.stdout + ok.stderr
    wrong = subprocess.run([*cmd[:4], str(built.other_pub), *cmd[5:]], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 1 and "Verification failure" in wrong.stdout


def test_inspect_text_and_json(built: Built) -> None:
    res = run_cli(["inspect", built.bundle])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "demo 1.0.0  sequence 1  created 2023-11-14T22:13:20Z"
    assert lines[1].startswith("builder hydra-bundle ") and "platforms linux/amd64" in lines[1]
    idx = read_index(built.bundle)
    assert lines[2].startswith(f"{len(idx['blobs'])} blobs, ")
    assert "manifests:" in lines and "files:" in lines and "models:" in lines and "images:" not in lines
    assert any(ln.startswith("  hydra-bundle/files/big:1.0.0  sha256:") for ln in lines)
    res = run_cli(["inspect", built.bundle, "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data.pop("signed") is True
    assert data == idx


# ---------------------------------------------------------------- tampering


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def _member(path: Path, name: str):  # type: ignore[no-untyped-def]
    return next(m for m in tar_members(path) if m.name == name)


def test_tampered_blob_byte(built: Built, tmp_path: Path) -> None:
    p = _copy(built, tmp_path)
    m = _member(p, "blobs/sha256/" + sha256_hex(built.big))
    _flip(p, m.data_offset + m.size // 2)
    line, reason = _verify_fails(p, built.pub)
    assert reason == "digest-mismatch" and sha256_hex(built.big) in line


def test_tampered_index(built: Built, tmp_path: Path) -> None:
    p = _copy(built, tmp_path)
    m = _member(p, "hydra-bundle.json")
    data = member_bytes(p, "hydra-bundle.json")
    pos = data.index(b'"sequence":1') + len(b'"sequence":')
    with open(p, "r+b") as f:  # same length, still valid JSON: sequence 1 -> 9
        f.seek(m.data_offset + pos)
        f.write(b"9")
    assert json.loads(member_bytes(p, "hydra-bundle.json"))["sequence"] == 9
    _, reason = _verify_fails(p, built.pub)
    assert reason == "bad-signature"


def test_tampered_layout_index(built: Built, tmp_path: Path) -> None:
    p = _copy(built, tmp_path)
    m = _member(p, "index.json")
    _flip(p, m.data_offset + m.size - 3)
    line, reason = _verify_fails(p, built.pub)
    assert reason == "digest-mismatch" and "index.json" in line


def test_signed_by_another_key(built: Built) -> None:
    line, reason = _verify_fails(built.bundle, built.other_pub)
    assert reason == "bad-signature" and "does not verify against any trusted key" in line


def test_signature_replaced(built: Built, tmp_path: Path) -> None:
    """A valid signature from another key, swapped in: still refused with the right key."""
    other_key = built.other_pub.with_suffix(".key")
    from hydra_bundle.bundle.sign import load_private_key, sign

    sig = sign(load_private_key(other_key), member_bytes(built.bundle, "hydra-bundle.json"))
    p = _rewrite(built.bundle, tmp_path, lambda ms: [(ti, sig if ti.name.endswith(".sig") else d) for ti, d in ms])
    _, reason = _verify_fails(p, built.pub)
    assert reason == "bad-signature"
    res = run_cli(["verify", p, "--pub", built.other_pub])
    assert res.exit_code == 0, res.output


def _truncation_points(bundle: Path) -> dict[str, int]:
    ms = tar_members(bundle)
    last = ms[-1]
    end_of_data = last.data_offset + last.size + (-last.size % 512)
    big = next(m for m in ms if m.size == max(x.size for x in ms))
    return {
        "empty": 0,
        "inside-first-header": 100,
        "inside-index": ms[0].data_offset + 10,
        "after-signature": ms[2].header_offset,
        "inside-layout-header": ms[3].header_offset + 200,
        "between-blobs": ms[5].header_offset,
        "inside-big-blob": big.data_offset + big.size // 2,
        "no-end-of-archive-marker": end_of_data,
        "half-end-of-archive-marker": end_of_data + 512,
    }


@pytest.mark.parametrize("where", [
    "empty", "inside-first-header", "inside-index", "after-signature", "inside-layout-header", "between-blobs",
    "inside-big-blob", "no-end-of-archive-marker", "half-end-of-archive-marker"])
def test_truncated(built: Built, tmp_path: Path, where: str) -> None:
    p = _copy(built, tmp_path)
    n = _truncation_points(p)[where]
    with open(p, "r+b") as f:
        f.truncate(n)
    _, reason = _verify_fails(p, built.pub)
    assert reason in {"truncated", "missing-member", "not-a-tar", "bad-layout"}, reason


def test_trailing_garbage(built: Built, tmp_path: Path) -> None:
    p = _copy(built, tmp_path)
    with open(p, "ab") as f:
        f.write(b"\0" * 1024 + b"smuggled payload" + b"\0" * 512)
    line, reason = _verify_fails(p, built.pub)
    assert reason == "trailing-data" and "non-zero data after the end of the archive" in line
    # zero padding alone (e.g. a bigger tar record size) is fine
    q = tmp_path / "padded.tar"
    shutil.copyfile(built.bundle, q)
    with open(q, "ab") as f:
        f.write(b"\0" * 10240)
    assert run_cli(["verify", q, "--pub", built.pub]).exit_code == 0


def test_data_hidden_in_padding(built: Built, tmp_path: Path) -> None:
    """Bytes in a member's block padding are not part of any digest; end-of-archive blocks must be zero."""
    p = _copy(built, tmp_path)
    ms = tar_members(p)
    last = ms[-1]
    end_of_data = last.data_offset + last.size + (-last.size % 512)
    with open(p, "r+b") as f:
        f.seek(end_of_data + 700)
        f.write(b"X")
    _, reason = _verify_fails(p, built.pub)
    assert reason in {"trailing-data", "truncated"}


# ---------------------------------------------------------------- bad tar entries (crafted with tarfile)

Members = list[tuple[tarfile.TarInfo, bytes]]


def _rewrite(src: Path, tmp_path: Path, edit: Callable[[Members], Members]) -> Path:
    """Re-tar the bundle member by member through `edit` (keeps the signed index and signature valid)."""
    ms: Members = []
    with tarfile.open(src, "r:") as tf:
        for ti in tf:
            f = tf.extractfile(ti)
            ms.append((ti, f.read() if f else b""))
    out = tmp_path / "crafted.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in edit(ms):
            ti.size = len(data) if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return out


def _insert_after_layout(entry: tarfile.TarInfo, data: bytes = b"") -> Callable[[Members], Members]:
    def edit(ms: Members) -> Members:
        return [*ms[:4], (entry, data), *ms[4:]]

    return edit


def _ti(name: str, type_: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = 0o644
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def test_rewrite_roundtrip_still_verifies(built: Built, tmp_path: Path) -> None:
    """The crafting helper itself produces a bundle that verifies (so the failures below are the entries')."""
    p = _rewrite(built.bundle, tmp_path, lambda ms: ms)
    res = run_cli(["verify", p, "--pub", built.pub])
    assert res.exit_code == 0, res.output


def _first_blob(ms: Members) -> tuple[tarfile.TarInfo, bytes]:
    return next((ti, d) for ti, d in ms if ti.name.startswith("blobs/"))


BAD_ENTRIES: dict[str, tuple[Callable[[], Callable[[Members], Members]], str, str]] = {
    "dotdot-path": (lambda: _insert_after_layout(_ti("blobs/../../etc/cron.d/x"), b"boom"), "bad-member",
                    "unsafe member name"),
    "absolute-path": (lambda: _insert_after_layout(_ti("/etc/cron.d/x"), b"boom"), "bad-member",
                      "unsafe member name"),
    "symlink": (lambda: _insert_after_layout(_ti("blobs/sha256/link", tarfile.SYMTYPE, linkname="/etc/passwd")),
                "bad-member", "symlink members are not allowed"),
    "hardlink": (lambda: _insert_after_layout(_ti("blobs/sha256/hard", tarfile.LNKTYPE, linkname="oci-layout")),
                 "bad-member", "hardlink members are not allowed"),
    "char-device": (lambda: _insert_after_layout(_ti("blobs/sha256/null", tarfile.CHRTYPE, devmajor=1,
                                                     devminor=3)), "bad-member", "char device members"),
    "block-device": (lambda: _insert_after_layout(_ti("blobs/sha256/sda", tarfile.BLKTYPE, devmajor=8)),
                     "bad-member", "block device members"),
    "fifo": (lambda: _insert_after_layout(_ti("blobs/sha256/fifo", tarfile.FIFOTYPE)), "bad-member",
             "fifo members are not allowed"),
    "directory": (lambda: _insert_after_layout(_ti("blobs/sha256", tarfile.DIRTYPE)), "bad-member",
                  "directory members are not allowed"),
    "duplicate-member": (lambda: lambda ms: [*ms, _first_blob(ms)], "duplicate-member", "appears twice"),
    "duplicate-index": (lambda: lambda ms: [*ms[:4], ms[0], *ms[4:]], "duplicate-member",
                        "hydra-bundle.json appears twice"),
    "member-not-in-index": (lambda: _insert_after_layout(_ti("blobs/sha256/" + "0" * 64), b"extra"),
                            "unknown-member", "is not listed in the signed index"),
    "extra-file-outside-layout": (lambda: _insert_after_layout(_ti("README"), b"hi"), "unknown-member",
                                  "README is not listed"),
    "member-larger-than-index": (
        lambda: lambda ms: [(ti, d + b"more" if (ti, d) == _first_blob(ms) else d) for ti, d in ms],
        "size-mismatch", "index says"),
    "member-missing": (lambda: lambda ms: [x for x in ms if x != _first_blob(ms)], "missing-member",
                       "member(s) missing"),
}


@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
def test_bad_tar_entry(built: Built, tmp_path: Path, kind: str) -> None:
    make_edit, want_reason, want_text = BAD_ENTRIES[kind]
    p = _rewrite(built.bundle, tmp_path, make_edit())
    line, reason = _verify_fails(p, built.pub)
    assert reason == want_reason, line
    assert want_text in line


@pytest.mark.parametrize("member", ["hydra-bundle.json", "index.json", "blob"])
def test_data_in_member_padding(built: Built, tmp_path: Path, member: str) -> None:
    """The block padding after a member's data is outside every digest: it must be zero."""
    p = _copy(built, tmp_path)
    ms = tar_members(p)
    m = next(x for x in ms if (x.name.startswith("blobs/") and x.size % 512) or x.name == member)
    assert m.size % 512, m
    with open(p, "r+b") as f:
        f.seek(m.data_offset + m.size)
        f.write(b"X")
    line, reason = _verify_fails(p, built.pub)
    assert reason == "trailing-data" and f"{m.name}: non-zero bytes in the block padding" in line


def test_pax_payload_refused(built: Built, tmp_path: Path) -> None:
    """A PAX record such as `comment` carries data that no digest covers."""
    def edit(ms: Members) -> Members:
        _first_blob(ms)[0].pax_headers = {"comment": "smuggled " * 100}
        return ms

    p = _rewrite(built.bundle, tmp_path, edit)
    line, reason = _verify_fails(p, built.pub)
    assert reason == "bad-member" and "unexpected PAX header record 'comment'" in line


def test_bad_first_member(built: Built, tmp_path: Path) -> None:
    """Nothing but the index may come first; a '..' member is refused before anything is read."""
    p = _rewrite(built.bundle, tmp_path, lambda ms: [(_ti("../x"), b"x"), *ms])
    _, reason = _verify_fails(p, built.pub)
    assert reason == "bad-member"
    p = _rewrite(built.bundle, tmp_path, lambda ms: [ms[2], *ms[:2], *ms[3:]])
    line, reason = _verify_fails(p, built.pub)
    assert reason == "bad-layout" and "first member must be hydra-bundle.json" in line


def test_library_refuses_with_reason(built: Built, tmp_path: Path) -> None:
    p = _copy(built, tmp_path)
    with open(p, "ab") as f:
        f.write(b"junk")
    with pytest.raises(VerifyError) as ei:
        verify_bundle(p, [load_public_key(built.pub)])
    assert ei.value.reason in {"trailing-data", "truncated"} and ei.value.exit_code == 1
