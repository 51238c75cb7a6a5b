"""The embedded registry and file server, checked with real clients (skopeo, rclone) and raw HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hydra_bundle.oci.sitename import site_name
from tests.support import agent_fixtures
from tests.support.agent import AgentProc
from tests.support.agent_fixtures import Built, Keys, Site

agent_keys, agent_site, agent_bundles = (agent_fixtures.agent_keys, agent_fixtures.agent_site,
                                       agent_fixtures.agent_bundles)  # fixtures

pytestmark = pytest.mark.slow
skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
rclone = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed")
OCI_ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.list.v2+json",
                        "application/vnd.docker.distribution.manifest.v2+json"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, agent_keys: Keys,
           agent_bundles: dict[str, Built]) -> Iterator[AgentProc]:
    agent = AgentProc(tmp_path_factory.mktemp("served"), [agent_keys.release_pub])
    agent.start()
    try:
        agent.drop_file(agent_bundles["demo1"].path)
        agent.wait_state("demo", "1.0.0", "complete")
        yield agent
    finally:
        agent.stop()


def skopeo_copy(src: str, dest: Path, tag: str, *extra: str) -> dict:
    subprocess.run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", *extra, src,
                    f"oci:{dest}:{tag}"], check=True, capture_output=True, text=True, timeout=120)
    index = json.loads((dest / "index.json").read_text())
    return next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)


@skopeo
def test_skopeo_pulls_every_image_with_identical_digests(served: AgentProc, agent_site: Site,
                                                         agent_bundles: dict[str, Built], tmp_path: Path) -> None:
    reg = served.registry
    out = tmp_path / "layout"
    for img in agent_bundles["demo1"].index.components.images:
        sn = site_name(img.ref)
        repo = f"{sn.repository}:{sn.tag}"     # the source registry's host stays in the name
        name = img.ref.split("/", 1)[1].rsplit(":", 1)[0].replace("/", "-")
        if img.platforms and len(img.platforms) > 1 and "filtered3" not in img.ref:
            got = skopeo_copy(f"docker://{reg}/{repo}", out, name, "--all")  # every platform is in the bundle
            assert got["digest"] == img.digest
        elif "filtered" in img.ref:
            # platform-filtered index: the embedded registry serves the original index (digest preserved);
            # a pull for this host's platform gets that child, unchanged
            r = httpx.get(f"http://{reg}/v2/{repo.replace(':', '/manifests/')}", headers={"Accept": OCI_ACCEPT})
            assert r.headers["docker-content-digest"] == img.digest
            assert hashlib.sha256(r.content).hexdigest() == img.digest.split(":")[1]
            got = skopeo_copy(f"docker://{reg}/{repo}", out, name, "--override-arch", "amd64")
            images = agent_site.filtered if img.ref.endswith("filtered:1.0") else agent_site.filtered3
            assert got["digest"] == images[0].digest
        else:
            got = skopeo_copy(f"docker://{reg}/{repo}", out, name)
            assert got["digest"] == img.digest == agent_site.app1.digest
    # every layer pulled is byte-identical to the source
    for layer in agent_site.app1.layers:
        assert (out / "blobs/sha256" / hashlib.sha256(layer).hexdigest()).read_bytes() == layer


def test_registry_api(served: AgentProc, agent_site: Site, agent_bundles: dict[str, Built]) -> None:
    base = f"http://{served.registry}/v2"
    src = agent_site.site_host
    with httpx.Client() as c:
        r = c.get(f"{base}/")
        assert r.status_code == 200 and r.headers["docker-distribution-api-version"] == "registry/2.0"
        repos = c.get(f"{base}/_catalog").json()["repositories"]
        assert repos == sorted([f"{src}/agent/app", f"{src}/agent/multi", f"{src}/agent/filtered",
                                f"{src}/agent/filtered3", f"{src}/agent/charts/demo",
                                "hydra-bundle/models/tiny", "hydra-bundle/files/tool"])
        page = c.get(f"{base}/_catalog", params={"n": 2})
        assert page.json()["repositories"] == repos[:2] and 'rel="next"' in page.headers["link"]
        assert c.get(f"{base}/{src}/agent/app/tags/list").json() == {"name": f"{src}/agent/app", "tags": ["1.0"]}
        assert c.get(f"{base}/{src}/agent/charts/demo/tags/list").json()["tags"] == ["0.1.0"]

        app = agent_site.app1
        h = c.head(f"{base}/{src}/agent/app/manifests/1.0", headers={"Accept": OCI_ACCEPT})
        assert h.status_code == 200 and h.headers["docker-content-digest"] == app.digest
        assert h.headers["content-type"] == app.media_type and int(h.headers["content-length"]) == len(app.manifest)
        g = c.get(f"{base}/{src}/agent/app/manifests/{app.digest}")
        assert g.content == app.manifest
        chart = c.get(f"{base}/{src}/agent/charts/demo/manifests/0.1.0")
        assert chart.headers["docker-content-digest"] == agent_site.chart_digest
        filt = c.get(f"{base}/{src}/agent/filtered/manifests/1.0")
        assert filt.headers["content-type"] == "application/vnd.docker.distribution.manifest.list.v2+json"
        # a platform the bundle left out is named, with the platforms it carries (not a bare "manifest unknown")
        gone = c.get(f"{base}/{src}/agent/filtered/manifests/{agent_site.filtered[1].digest}")
        assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert gone.json()["errors"][0]["message"].startswith(
            "linux/arm64/v8 is not in the bundle: it carries linux/amd64 of this image"), gone.json()

        layer = app.layers[1]
        url = f"{base}/{src}/agent/app/blobs/sha256:{hashlib.sha256(layer).hexdigest()}"
        h = c.head(url)
        assert h.status_code == 200 and int(h.headers["content-length"]) == len(layer)
        assert h.headers["docker-content-digest"].endswith(hashlib.sha256(layer).hexdigest())
        assert c.get(url).content == layer
        r = c.get(url, headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == layer[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{len(layer)}"
        r = c.get(url, headers={"Range": "bytes=1000-"})
        assert r.status_code == 206 and r.content == layer[1000:]
        r = c.get(url, headers={"Range": "bytes=-10"})
        assert r.status_code == 206 and r.content == layer[-10:]
        assert c.get(url, headers={"Range": f"bytes={len(layer)}-"}).status_code == 416

        for method, path in [("PUT", f"{src}/agent/app/manifests/9.9"), ("POST", f"{src}/agent/app/blobs/uploads/"),
                             ("DELETE", f"{src}/agent/app/manifests/{app.digest}"),
                             ("PATCH", f"{src}/agent/app/blobs/uploads/x")]:
            r = c.request(method, f"{base}/{path}", content=b"{}")
            assert r.status_code == 405, (method, path)
            assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
        r = c.get(f"{base}/nope/manifests/1.0")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        # without its host an image is not found: never guessed, never another registry's image
        r = c.get(f"{base}/agent/app/manifests/1.0")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        # containerd's mirror form: the path without the host, ?ns= names it
        r = c.get(f"{base}/agent/app/manifests/1.0", params={"ns": agent_site.registry.host},
                  headers={"Accept": OCI_ACCEPT})
        assert r.status_code == 200 and r.headers["docker-content-digest"] == app.digest
        r = c.get(f"{base}/agent/app/manifests/1.0", params={"ns": "quay.io"}, headers={"Accept": OCI_ACCEPT})
        assert r.status_code == 404
        # page sizes of 0 and digits that are not ASCII are answered, not crashed on
        assert c.get(f"{base}/_catalog", params={"n": 0}).json() == {"repositories": []}
        assert c.get(f"{base}/{src}/agent/app/tags/list", params={"n": 0}).json()["tags"] == []
        assert c.get(f"{base}/_catalog", params={"n": "²"}).status_code == 200
        r = c.get(f"{base}/{src}/agent/app/manifests/9.9")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        r = c.get(f"{base}/{src}/agent/app/blobs/sha256:{'0' * 64}")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    # the store itself is a valid OCI layout with ref names (skopeo can read it directly)
    index = json.loads((served.state / "store/index.json").read_text())
    refs = {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}
    assert f"{agent_site.registry.host}/agent/app:1.0" in refs


@rclone
def test_rclone_copies_a_model_directory(served: AgentProc, agent_site: Site, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    subprocess.run(["rclone", "copy", "--http-url", f"{served.files_url}/model/tiny/", ":http:", str(dest)],
                   check=True, capture_output=True, text=True, timeout=120)
    got = {str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in dest.rglob("*") if p.is_file()}
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in agent_site.model_files.items()}
    dest2 = tmp_path / "files"
    subprocess.run(["rclone", "copy", "--http-url", f"{served.files_url}/files/tool/", ":http:", str(dest2)],
                   check=True, capture_output=True, text=True, timeout=120)
    assert (dest2 / "tool.bin").read_bytes() == agent_site.tool


def test_file_server_http(served: AgentProc, agent_site: Site) -> None:
    base = served.files_url
    weights = agent_site.model_files["weights/model-00001-of-00001.safetensors"]
    with httpx.Client() as c:
        h = c.head(f"{base}/model/tiny/weights/model-00001-of-00001.safetensors")
        assert h.status_code == 200 and int(h.headers["content-length"]) == len(weights)
        assert "last-modified" in h.headers and h.headers["accept-ranges"] == "bytes"
        r = c.get(f"{base}/model/tiny/weights/model-00001-of-00001.safetensors", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == weights[10:20]
        assert c.get(f"{base}/files/tool/tool.bin").content == agent_site.tool
        listing = c.get(f"{base}/model/tiny/").text
        assert 'href="config.json"' in listing and 'href="weights/"' in listing and 'href="tokenizer/"' in listing
        assert 'href="tiny/"' in c.get(f"{base}/model/").text
        r = c.get(f"{base}/model/tiny")
        assert r.status_code == 301 and r.headers["location"] == "/model/tiny/"
        assert c.get(f"{base}/model/tiny/../../etc/passwd").status_code == 404
        assert c.get(f"{base}/model/nope/").status_code == 404
        assert c.put(f"{base}/files/tool/tool.bin", content=b"x").status_code == 405
        m = c.get(f"{served.metrics_url}/metrics").text
        assert 'hydra_agent_bundles{state="complete"} 1.0' in m
        assert "hydra_agent_http_requests_total" in m
        assert c.get(f"{served.metrics_url}/healthz").json()["ok"] is True


def _raw(addr: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_refused_writes_are_answered_whatever_body_they_carry(served: AgentProc, agent_site: Site) -> None:
    """A write is answered 405 and the answer reaches the client: a small body is read and dropped (the
    connection stays usable), a large or chunked one gets ``Connection: close`` and a lingering close, never a
    reset that destroys the answer."""
    base = f"http://{served.registry}/v2/{agent_site.site_host}/agent/app"
    with httpx.Client() as c:
        for i in range(300):   # one keep-alive connection: each answer is read, the next request reuses it
            r = c.put(f"{base}/manifests/x{i}", content=b"{}" * (i % 7))
            assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert "connection" not in r.headers
        assert c.get(f"{base}/tags/list").status_code == 200
    big = b"x" * (3 << 20)   # over what the agent reads and drops: answered, then closed
    out = _raw(served.registry, b"PUT /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
               % (len(big), big[: 1 << 20]))
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 405") and b"connection: close" in head, out[:300]
    out = _raw(served.files_url.removeprefix("http://"), b"POST /files/tool/tool.bin HTTP/1.1\r\nHost: a\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 405") and b"connection: close" in head, out[:300]
    assert httpx.get(f"{base}/tags/list").status_code == 200   # the agent serves on
