"""The test support code itself works against real services."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.chartrepo import make_chart, read_chart_metadata, write_index
from tests.support.httpserver import FileServer
from tests.support.images import (
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    HELM_CHART,
    HELM_CONFIG,
    OCI_INDEX,
    diff_id,
    get_manifest,
    make_image,
    make_index,
    make_layer,
    push_helm_chart,
    push_image,
    push_index,
    push_random_image,
    write_random_layer,
)
from tests.support.registry import Registry

skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def _skopeo_inspect(ref: str, *extra: str) -> dict:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *extra, ref],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def test_layers_are_deterministic(tmp_path: Path) -> None:
    a, b = make_layer(10_000, 7), make_layer(10_000, 7)
    assert a == b and a != make_layer(10_000, 8)
    assert len(a) > 10_000  # incompressible
    digest, size, did = write_random_layer(tmp_path / "l.tgz", 10_000, 7)
    assert digest == "sha256:" + hashlib.sha256(a).hexdigest() and size == len(a)
    assert did == diff_id(a)


def test_image_config_and_docker_media_types() -> None:
    img = make_image([1000, 2000], seed=3, platform="linux/arm64/v8", docker=True)
    cfg = json.loads(img.config)
    assert (cfg["os"], cfg["architecture"], cfg["variant"]) == ("linux", "arm64", "v8")
    assert cfg["rootfs"]["diff_ids"] == [diff_id(x) for x in img.layers]
    man = json.loads(img.manifest)
    assert man["mediaType"] == DOCKER_MANIFEST
    assert {x["mediaType"] for x in man["layers"]} == {DOCKER_LAYER}
    assert make_image([1000, 2000], seed=3, platform="linux/arm64/v8", docker=True).digest == img.digest


@pytest.mark.slow
@skopeo
def test_registry_serves_pushed_image(registry: Registry) -> None:
    img = make_image([2048, 4096], seed=1)
    digest = push_image(registry.host, "support/plain", "v1", img)
    assert digest == img.digest
    info = _skopeo_inspect(f"docker://{registry.host}/support/plain:v1")
    assert info["Digest"] == img.digest
    assert info["Layers"] == img.layer_digests


@pytest.mark.slow
def test_auth_registry(auth_registry: Registry) -> None:
    assert auth_registry.auth == ("hydra", "s3cret-pw")
    r = httpx.get(f"{auth_registry.url}/v2/")
    assert r.status_code == 401 and "basic" in r.headers["www-authenticate"].lower()
    assert httpx.get(f"{auth_registry.url}/v2/", auth=("hydra", "wrong")).status_code == 401
    assert httpx.get(f"{auth_registry.url}/v2/", auth=auth_registry.auth).status_code == 200
    img = make_image([1024], seed=2)
    with pytest.raises(RuntimeError, match="401"):
        push_image(auth_registry.host, "support/auth", "v1", img)
    push_image(auth_registry.host, "support/auth", "v1", img, auth=auth_registry.auth)
    if shutil.which("skopeo"):
        info = _skopeo_inspect(f"docker://{auth_registry.host}/support/auth:v1", "--creds", "hydra:s3cret-pw")
        assert info["Digest"] == img.digest


@pytest.mark.slow
@pytest.mark.parametrize("docker", [False, True])
def test_multiarch_index(fresh_registry: Registry, docker: bool) -> None:
    images = [
        make_image([1024], seed=10, platform="linux/amd64", docker=docker),
        make_image([1024], seed=11, platform="linux/arm64/v8", docker=docker),
    ]
    index = make_index(images, docker=docker)
    digest = push_index(fresh_registry.host, "support/multi", "latest", index, images)
    r = get_manifest(fresh_registry.host, "support/multi", "latest")
    assert r.status_code == 200 and r.content == index
    assert r.headers["docker-content-digest"] == digest
    body = r.json()
    assert body["mediaType"] == (DOCKER_LIST if docker else OCI_INDEX)
    assert [m["platform"].get("variant") for m in body["manifests"]] == [None, "v8"]
    for img in images:
        assert get_manifest(fresh_registry.host, "support/multi", img.digest).content == img.manifest


@pytest.mark.slow
def test_random_image_streams(fresh_registry: Registry, tmp_path: Path) -> None:
    pushed = push_random_image(fresh_registry.host, "support/big", "v1", [5000, 7000], seed=4, tmp_dir=tmp_path)
    assert pushed.digest == make_image([5000, 7000], seed=4).digest
    assert get_manifest(fresh_registry.host, "support/big", "v1").status_code == 200
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_helm_chart_push(registry: Registry) -> None:
    tgz = make_chart("demo", "0.1.0+build.1", app_version="2.3.4")
    assert read_chart_metadata(tgz)["appVersion"] == "2.3.4"
    digest = push_helm_chart(registry.host, "charts/demo", "0.1.0+build.1", tgz)
    r = get_manifest(registry.host, "charts/demo", "0.1.0_build.1")
    assert r.status_code == 200 and r.headers["docker-content-digest"] == digest
    man = r.json()
    assert man["config"]["mediaType"] == HELM_CONFIG
    assert [x["mediaType"] for x in man["layers"]] == [HELM_CHART]
    assert man["annotations"]["org.opencontainers.image.version"] == "0.1.0+build.1"
    cfg = httpx.get(f"{registry.url}/v2/charts/demo/blobs/{man['config']['digest']}").json()
    assert cfg == {
        "name": "demo",
        "version": "0.1.0+build.1",
        "description": "A hydra-bundle test chart",
        "apiVersion": "v2",
        "appVersion": "2.3.4",
        "type": "application",
    }


def test_chart_repo_index(tmp_path: Path) -> None:
    (tmp_path / "a-1.0.0.tgz").write_bytes(make_chart("a", "1.0.0"))
    (tmp_path / "a-1.1.0.tgz").write_bytes(make_chart("a", "1.1.0"))
    index = write_index(
        tmp_path,
        [(tmp_path / "a-1.0.0.tgz", ""), (tmp_path / "a-1.1.0.tgz", "http://example.invalid/charts/")],
    )
    data = yaml.safe_load(index.read_text())
    assert data["apiVersion"] == "v1"
    entries = data["entries"]["a"]
    assert [e["urls"] for e in entries] == [["a-1.0.0.tgz"], ["http://example.invalid/charts/a-1.1.0.tgz"]]
    assert entries[0]["digest"] == hashlib.sha256((tmp_path / "a-1.0.0.tgz").read_bytes()).hexdigest()


@pytest.mark.slow
def test_file_server_range_and_faults(tmp_path: Path, file_server) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(data)
    srv: FileServer = file_server(tmp_path)
    url = f"{srv.url}/sub/f.bin"
    with httpx.Client() as c:
        head = c.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == "10240"
        assert "last-modified" in head.headers and "etag" not in head.headers
        r = c.get(url, headers={"Range": "bytes=100-"})
        assert r.status_code == 206 and r.content == data[100:]
        assert r.headers["content-range"] == "bytes 100-10239/10240"
        r = c.get(url, headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == data[10:20]
        assert c.get(url, headers={"Range": "bytes=99999-"}).status_code == 416
        assert c.get(f"{srv.url}/missing").status_code == 404
        assert 'href="f.bin"' in c.get(f"{srv.url}/sub/").text

        srv.fail_after("/sub/f.bin", 1000)
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(url)
        # resume from where the cut happened; the fault fired only once
        r = c.get(url, headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == data[1000:]
    methods = [(x.method, x.path, x.range) for x in srv.requests]
    assert methods[0] == ("HEAD", "/sub/f.bin", None)
    assert ("GET", "/sub/f.bin", "bytes=1000-") in methods


@pytest.mark.slow
def test_file_server_auth(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello")
    with FileServer(tmp_path, auth=("u", "p")) as srv:
        assert httpx.get(f"{srv.url}/x").status_code == 401
        assert httpx.get(f"{srv.url}/x", auth=("u", "p")).content == b"hello"


@pytest.mark.slow
def test_registry_stop_cleans_up() -> None:
    reg = Registry()
    d, url = reg.dir, reg.url
    assert httpx.get(f"{url}/v2/").status_code == 200
    reg.stop()
    assert not d.exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v2/", timeout=2)
