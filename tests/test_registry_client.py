"""The registry client (library level): references, credentials, verified pulls, resumed pulls, chunked pushes,
cross-repo mounts, basic auth. Registries are real docker-registry processes; a "lying registry" is a plain
file server serving wrong bytes under registry paths."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from hydra_bundle.cli.options import parse_insecure, parse_mirrors
from hydra_bundle.errors import AuthError, DigestMismatch, NotFound, SourceError, UsageError
from hydra_bundle.oci.auth import CredentialStore, parse_challenge
from hydra_bundle.oci.client import RegistryClient
from hydra_bundle.oci.reference import Reference
from tests.support.bundles import digest_of
from tests.support.images import OCI_MANIFEST, make_image, push_image
from tests.support.registry import Registry

# ---------------------------------------------------------------- references (no servers)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", ("docker.io", "library/ubuntu", "latest", None)),
        ("ubuntu:22.04", ("docker.io", "library/ubuntu", "22.04", None)),
        ("bitnami/redis", ("docker.io", "bitnami/redis", "latest", None)),
        ("index.docker.io/library/nginx:1.27", ("docker.io", "library/nginx", "1.27", None)),
        ("ghcr.io/run-ai/fake-gpu-operator/device-plugin:0.0.63",
         ("ghcr.io", "run-ai/fake-gpu-operator/device-plugin", "0.0.63", None)),
        ("localhost/app", ("localhost", "app", "latest", None)),
        ("127.0.0.1:5000/a/b@sha256:" + "a" * 64, ("127.0.0.1:5000", "a/b", None, "sha256:" + "a" * 64)),
        ("quay.io/x/y:v1@sha256:" + "b" * 64, ("quay.io", "x/y", "v1", "sha256:" + "b" * 64)),
        ("oci://ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator",
         ("ghcr.io", "run-ai/fake-gpu-operator/fake-gpu-operator", "latest", None)),
    ],
)
def test_reference_normalization(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    r = Reference.parse(text)
    assert (r.registry, r.repository, r.tag, r.digest) == expected


def test_reference_str_and_reference() -> None:
    r = Reference.parse("nginx")
    assert str(r) == "docker.io/library/nginx:latest" and r.reference == "latest"
    d = "sha256:" + "c" * 64
    assert Reference.parse(f"ghcr.io/a/b:1@{d}").reference == d
    assert str(r.with_digest(d)) == f"docker.io/library/nginx:latest@{d}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty image reference"),
        ("ghcr.io/Upper/case", "invalid repository path"),
        ("ghcr.io/a/b:bad!tag", "invalid tag"),
        ("ghcr.io/a/b@sha256:abc", "digest must be sha256:<64 lowercase hex>"),
        ("ghcr.io/a/b@md5:" + "a" * 32, "digest must be sha256:<64 lowercase hex>"),
        ("ghcr.io/a//b", "invalid repository path"),
    ],
)
def test_reference_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Reference.parse(text)


def test_flag_parsing() -> None:
    assert parse_insecure(["127.0.0.1:5000", "reg.local:80"]) == {"127.0.0.1:5000", "reg.local:80"}
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        parse_insecure(["http://127.0.0.1:5000/"])
    assert parse_mirrors(["docker.io=https://harbor.example.com/dockerhub/", "ghcr.io=127.0.0.1:5000"]) == {
        "docker.io": "harbor.example.com/dockerhub", "ghcr.io": "127.0.0.1:5000"}
    for bad in ("ghcr.io", "=x", "ghcr.io="):
        with pytest.raises(UsageError, match="expected SRC=DST"):
            parse_mirrors([bad])


def test_mirror_endpoint() -> None:
    with RegistryClient(insecure={"127.0.0.1:5000"}, mirrors={"ghcr.io": "127.0.0.1:5000/proxy"},
                        credentials=CredentialStore([])) as c:
        ep = c.endpoint("ghcr.io")
        assert (ep.base, ep.host, ep.repo("a/b")) == ("http://127.0.0.1:5000", "127.0.0.1:5000", "proxy/a/b")
        assert c.endpoint("docker.io").base == "https://registry-1.docker.io"
        assert c.endpoint("quay.io").base == "https://quay.io"


# ---------------------------------------------------------------- credentials (no servers)


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_credential_store(tmp_path: Path) -> None:
    first = tmp_path / "auth.json"
    first.write_text(json.dumps({"auths": {
        "127.0.0.1:5000": {"auth": _b64("alice:pw:with:colons")},
        "https://index.docker.io/v1/": {"auth": _b64("bob:hub")},
        "quay.io/team": {"username": "carol", "password": "q"},
    }}))
    second = tmp_path / "config.json"
    second.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": _b64("mallory:x")},
                                            "ghcr.io": {"identitytoken": "tok"}}}))
    store = CredentialStore([first, second, tmp_path / "missing.json"])  # earlier files win
    c = store.get("127.0.0.1:5000")
    assert (c.username, c.password) == ("alice", "pw:with:colons")
    assert store.get("docker.io").username == "bob"  # type: ignore[union-attr]
    assert store.get("quay.io", "team/app").username == "carol"  # type: ignore[union-attr]
    assert store.get("quay.io", "other/app") is None
    assert store.get("ghcr.io").identity_token == "tok"  # type: ignore[union-attr]
    assert "pw:with" not in repr(c) and "***" in repr(c)


def test_credential_store_errors(tmp_path: Path) -> None:
    bad = tmp_path / "auth.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read registry credentials"):
        CredentialStore([bad])
    bad.write_text(json.dumps({"auths": {"h": {"auth": "!!!notbase64"}}}))
    with pytest.raises(UsageError, match=r"auths\['h'\]\.auth is not base64 user:password"):
        CredentialStore([bad])


def test_auth_file_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {"r.io": {"auth": _b64("docker:1")}}}))
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {"r.io": {"auth": _b64("podman:2")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert CredentialStore().get("r.io").username == "docker"  # type: ignore[union-attr]
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    assert CredentialStore().get("r.io").username == "podman"  # type: ignore[union-attr]


def test_parse_challenge() -> None:
    scheme, params = parse_challenge('Bearer realm="https://auth.example.com/token",service="registry",'
                                     'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example.com/token", "service": "registry",
                      "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="hydra-test"') == ("basic", {"realm": "hydra-test"})


# ---------------------------------------------------------------- against a real registry


def _client(reg: Registry, store: CredentialStore | None = None) -> RegistryClient:
    return RegistryClient(insecure={reg.host}, credentials=store if store is not None else CredentialStore([]))


@pytest.mark.slow
def test_push_pull_roundtrip_chunked_and_mount(fresh_registry: Registry, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(250_000)
    src = tmp_path / "blob"
    src.write_bytes(data)
    digest = digest_of(data)
    seen: list[int] = []
    with _client(fresh_registry) as c:
        how = c.push_blob(fresh_registry.host, "a/app", digest, len(data), src, chunk_size=64_000,
                          progress=seen.append)
        assert how == "uploaded" and sum(seen) == len(data)
        assert c.push_blob(fresh_registry.host, "a/app", digest, len(data), src) == "exists"
        assert c.push_blob(fresh_registry.host, "b/app", digest, len(data), src, mount_from="a/app") == "mounted"
        assert c.blob_exists(fresh_registry.host, "b/app", digest)
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        assert c.push_blob(fresh_registry.host, "a/app", digest_of(b""), 0, empty) == "uploaded"

        # a segment of a bigger file (offset/size), as the agent pushes blobs straight out of a bundle
        seg = tmp_path / "segmented"
        seg.write_bytes(b"x" * 1000 + data[:5000] + b"y" * 1000)
        assert c.push_blob(fresh_registry.host, "a/app", digest_of(data[:5000]), 5000, seg, offset=1000,
                           chunk_size=2048) == "uploaded"

        dest = tmp_path / "pulled"
        c.fetch_blob(fresh_registry.host, "b/app", digest, len(data), dest)
        assert dest.read_bytes() == data and not (tmp_path / "pulled.partial").exists()
        dest2 = tmp_path / "seg-pulled"
        c.fetch_blob(fresh_registry.host, "a/app", digest_of(data[:5000]), 5000, dest2)
        assert dest2.read_bytes() == data[:5000]

        img = make_image([1000], 5)
        for blob in (img.config, *img.layers):
            p = tmp_path / "x"
            p.write_bytes(blob)
            c.push_blob(fresh_registry.host, "a/img", digest_of(blob), len(blob), p)
        got = c.put_manifest(fresh_registry.host, "a/img", "v1", img.manifest, OCI_MANIFEST)
        assert got == img.digest
        ref = Reference.parse(f"{fresh_registry.host}/a/img:v1")
        m = c.get_manifest(ref)
        assert (m.data, m.digest, m.media_type, m.is_index) == (img.manifest, img.digest, OCI_MANIFEST, False)
        assert c.get_manifest(ref, img.digest).data == img.manifest
        assert c.head_manifest(ref) == img.digest
        assert c.list_tags(fresh_registry.host, "a/img") == ["v1"]
        assert c.head_manifest(Reference.parse(f"{fresh_registry.host}/a/img:nope")) is None
        with pytest.raises(NotFound, match="a/img:nope: not found"):
            c.get_manifest(Reference.parse(f"{fresh_registry.host}/a/img:nope"))


@pytest.mark.slow
def test_fetch_blob_resumes_with_range(registry: Registry, tmp_path: Path) -> None:
    img = make_image([200_000], 6)
    push_image(registry.host, "client/resume", "1", img)
    layer, digest = img.layers[0], img.layer_digests[0]
    dest = tmp_path / "layer"
    partial = tmp_path / "layer.partial"
    with _client(registry) as c:
        # a partial holding wrong bytes: if the client resumes with Range (it must), the digest cannot match
        partial.write_bytes(b"\0" * 100_000)
        with pytest.raises(DigestMismatch) as ei:
            c.fetch_blob(registry.host, "client/resume", digest, len(layer), dest)
        assert ei.value.expected == digest
        assert not partial.exists() and not dest.exists()  # a wrong partial never survives
        partial.write_bytes(layer[:123_456])
        seen: list[int] = []
        c.fetch_blob(registry.host, "client/resume", digest, len(layer), dest, progress=seen.append)
        assert dest.read_bytes() == layer and sum(seen) == len(layer)
        with pytest.raises(SourceError, match="more data than the declared 1000 bytes"):
            c.fetch_blob(registry.host, "client/resume", digest, 1000, tmp_path / "short")
        with pytest.raises(SourceError, match=f"got {len(layer)} of {len(layer) + 1} bytes"):
            c.fetch_blob(registry.host, "client/resume", digest, len(layer) + 1, tmp_path / "long")
        assert not (tmp_path / "short").exists() and not (tmp_path / "long").exists()


@pytest.mark.slow
def test_lying_registry_is_caught(tmp_path: Path, file_server) -> None:  # type: ignore[no-untyped-def]
    """A server that answers registry paths with other bytes than the digest asked for."""
    real = make_image([500], 7)
    evil = make_image([500], 8)
    root = tmp_path / "www"
    (root / "v2" / "x" / "manifests").mkdir(parents=True)
    (root / "v2" / "x" / "blobs").mkdir(parents=True)
    (root / "v2" / "x" / "manifests" / real.digest).write_bytes(evil.manifest)
    (root / "v2" / "x" / "blobs" / real.layer_digests[0]).write_bytes(evil.layers[0])
    srv = file_server(root)
    dest = tmp_path / "blob"
    with RegistryClient(insecure={srv.host}, credentials=CredentialStore([])) as c:
        with pytest.raises(DigestMismatch) as ei:
            c.get_manifest(Reference.parse(f"{srv.host}/x@{real.digest}"))
        assert (ei.value.expected, ei.value.actual) == (real.digest, evil.digest)
        with pytest.raises(DigestMismatch):
            c.fetch_blob(srv.host, "x", real.layer_digests[0], None, dest)
        assert not dest.exists() and not (tmp_path / "blob.partial").exists()


@pytest.mark.slow
def test_basic_auth(auth_registry: Registry, tmp_path: Path) -> None:
    host = auth_registry.host
    img = make_image([700], 9)
    push_image(host, "client/private", "1", img, auth=auth_registry.auth)
    ref = Reference.parse(f"{host}/client/private:1")
    with _client(auth_registry) as c, pytest.raises(AuthError, match="no credentials are configured"):
        c.get_manifest(ref)
    wrong = CredentialStore([])
    wrong.add(host, "hydra", "nope")
    with _client(auth_registry, wrong) as c, pytest.raises(AuthError, match=r"access denied \(HTTP 401"):
        c.get_manifest(ref)
    auth_json = tmp_path / "auth.json"
    user, pw = auth_registry.auth  # type: ignore[misc]
    auth_json.write_text(json.dumps({"auths": {host: {"auth": _b64(f"{user}:{pw}")}}}))
    with _client(auth_registry, CredentialStore([auth_json])) as c:
        assert c.get_manifest(ref).digest == img.digest
        data = random.Random(2).randbytes(100_000)
        src = tmp_path / "blob"
        src.write_bytes(data)
        assert c.push_blob(host, "client/pushed", digest_of(data), len(data), src, chunk_size=30_000) == "uploaded"
        c.fetch_blob(host, "client/pushed", digest_of(data), len(data), tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
