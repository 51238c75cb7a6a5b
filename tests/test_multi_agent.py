"""More than one agent on a site: two agents ingest the same bundle (each verifying it on its own) and serve the
same digests; `mirror-config --endpoint …` lists them in order with fallback (a real containerd falls back to the
second when the first is down); `/healthz` on the registry and file listeners says 200 only while the store can
serve, 503 when it cannot (a load balancer's probe)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml

from hydra_bundle.oci.sitename import normalize_host, site_name
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, build_bundle, run_cli
from tests.support.agent_fixtures import Keys
from tests.support.images import Image, make_image, push_image
from tests.support.registry import Registry
from tests.test_site_names import Containerd

agent_keys = agent_fixtures.agent_keys  # fixture

pytestmark = pytest.mark.slow
TOOL = os.urandom(50_000)


@dataclass
class Pair:
    a: AgentProc
    b: AgentProc
    image: Image
    ref: str                  # the upstream name the bundle carries
    upstream: str             # its registry host (127.0.0.1:PORT, gone after the build)
    bundle: Path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, agent_keys: Keys) -> Iterator[Pair]:
    d = tmp_path_factory.mktemp("multi")
    img = make_image([40_000, 30_000], seed=811)
    with Registry() as src:
        push_image(src.host, "multi/app", "1.0", img)
        (d / "src").mkdir()
        (d / "src/tool.bin").write_bytes(TOOL)
        spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
                "metadata": {"name": "multi", "version": "1.0.0", "sequence": 1},
                "images": [{"ref": f"{src.host}/multi/app:1.0"}], "files": [{"name": "tool", "path": "tool.bin"}]}
        bundle = d / "multi.tar"
        build_bundle(d / "src", spec, agent_keys.release_key, bundle, {src.host})
        ref, upstream = f"{src.host}/multi/app:1.0", src.host
    a = AgentProc(d / "a", [agent_keys.release_pub])
    b = AgentProc(d / "b", [agent_keys.release_pub])   # serve-only: no site: section
    cfg = yaml.safe_load(a.config.read_text())
    cfg["site"] = {"cluster_name": "c", "domain": "d", "registry": a.registry, "file_server": a.files_url}
    a.config.write_text(yaml.safe_dump(cfg))
    try:
        for agent in (a, b):      # each agent gets its own copy, verifies it and ingests it on its own
            agent.start()
            agent.drop_file(bundle)
        for agent in (a, b):
            agent.wait_state("multi", "1.0.0", "complete")
        yield Pair(a, b, img, ref, upstream, bundle)
    finally:
        a.stop()
        b.stop()


def _manifest(agent: AgentProc, repo: str, tag: str, media: str) -> httpx.Response:
    return httpx.get(f"http://{agent.registry}/v2/{repo}/manifests/{tag}", headers={"Accept": media}, timeout=10)


def test_two_agents_ingest_the_same_bundle_and_serve_the_same_digests(pair: Pair) -> None:
    name = site_name(pair.ref)
    for agent in (pair.a, pair.b):
        assert httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"] == [
            name.repository, "hydra-bundle/files/tool"]
        r = _manifest(agent, name.repository, name.tag, pair.image.media_type)
        assert r.status_code == 200 and r.headers["docker-content-digest"] == pair.image.digest
        for layer in pair.image.layers:
            digest = "sha256:" + hashlib.sha256(layer).hexdigest()
            blob = httpx.get(f"http://{agent.registry}/v2/{name.repository}/blobs/{digest}")
            assert blob.status_code == 200 and blob.content == layer
        assert httpx.get(f"{agent.files_url}/files/tool/tool.bin").content == TOOL
        # each verified the bundle itself: both journals hold it, both stores the same blobs
        assert agent.bundle("multi", "1.0.0")["state"] == "complete"   # type: ignore[index]
    store = {agent: sorted(p.name for p in (agent.state / "store/blobs/sha256").iterdir())
             for agent in (pair.a, pair.b)}
    assert store[pair.a] == store[pair.b]
    # the load balancer's probe on both listeners of both agents: ready, the same published content
    bodies = []
    for agent in (pair.a, pair.b):
        for base in (f"http://{agent.registry}", agent.files_url):
            r = httpx.get(f"{base}/healthz")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json" and r.headers["cache-control"] == "no-store"
            bodies.append(r.json())
            assert httpx.head(f"{base}/healthz").status_code == 200
    assert bodies[0]["ready"] is True and bodies[0]["published"]["references"] >= 2
    assert all(b == bodies[0] for b in bodies), bodies
    assert pair.image.digest not in json.dumps(bodies[0])  # counts and a fingerprint, nothing that names content


def _mirror_json(agent: AgentProc, *args: str) -> dict:
    res = agent.cli("mirror-config", "--json", *args)
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_mirror_config_lists_several_endpoints_in_order(pair: Pair) -> None:
    up, path = pair.upstream, normalize_host(pair.upstream)
    single = _mirror_json(pair.a)
    # one endpoint (the default, or the same one named): exactly the files a one-agent site gets
    assert _mirror_json(pair.a, "--endpoint", pair.a.registry)["files"] == single["files"]
    assert single["endpoints"] == [f"http://{pair.a.registry}"]
    toml = tomllib.loads(single["files"][f"/etc/containerd/certs.d/{up}/hosts.toml"])
    assert list(toml["host"]) == [f"http://{pair.a.registry}/v2/{path}"]

    got = _mirror_json(pair.a, "--endpoint", pair.b.registry, "--endpoint", f"http://{pair.a.registry}")
    assert got["endpoints"] == [f"http://{pair.b.registry}", f"http://{pair.a.registry}"]
    toml = tomllib.loads(got["files"][f"/etc/containerd/certs.d/{up}/hosts.toml"])
    assert toml["server"] == f"https://{up}"           # upstream last
    assert list(toml["host"]) == [f"http://{pair.b.registry}/v2/{path}", f"http://{pair.a.registry}/v2/{path}"]
    for h in toml["host"].values():
        assert h == {"capabilities": ["pull", "resolve"], "override_path": True}
    crio = tomllib.loads(got["files"]["/etc/containers/registries.conf.d/50-hydra-bundle.conf"])
    assert [r["prefix"] for r in crio["registry"]] == [up]
    assert crio["registry"][0]["mirror"] == [{"location": f"{pair.b.registry}/{path}", "insecure": True},
                                             {"location": f"{pair.a.registry}/{path}", "insecure": True}]
    # the text form: every file valid TOML
    text = pair.a.cli("mirror-config", "--endpoint", pair.a.registry, "--endpoint", pair.b.registry).stdout
    for section in text.split("# ==> ")[1:]:
        tomllib.loads(section.split("\n", 1)[1])
    # bad input: a clear usage error (exit 2)
    for bad, said in (("ftp://x:5000", "http or https"), ("a b", "expected"), ("", "expected")):
        res = pair.a.cli("mirror-config", "--endpoint", bad, check=False)
        assert res.returncode == 2 and said in res.stderr, (bad, res.stderr)
    res = pair.a.cli("mirror-config", "--endpoint", pair.b.registry, "--endpoint", f"http://{pair.b.registry}/",
                     check=False)
    assert res.returncode == 2 and "given twice" in res.stderr
    # the same list from the config (site.registry_mirrors); --endpoint overrides it
    cfg = yaml.safe_load(pair.a.config.read_text())
    cfg["site"]["registry_mirrors"] = [pair.b.registry, pair.a.registry]
    listed = pair.a.root / "mirrors.yaml"
    listed.write_text(yaml.safe_dump(cfg))
    def from_config(*args: str) -> dict:
        res = subprocess.run([*pair.a.cmd, "agent", "mirror-config", "--json", *args, "--config", str(listed)],
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(res.stdout)  # type: ignore[no-any-return]
    assert from_config()["files"] == got["files"]
    assert from_config("--endpoint", pair.a.registry)["files"] == single["files"]


def _served(agent: AgentProc) -> float:
    """GET 200s the agent's registry has answered (its own metrics)."""
    m = httpx.get(f"{agent.metrics_url}/metrics").text
    hit = re.search(r'hydra_agent_http_requests_total\{code="200",method="GET",server="registry"\} (\S+)', m)
    return float(hit.group(1)) if hit else 0.0


def test_containerd_falls_back_to_the_second_agent(pair: Pair, tmp_path: Path) -> None:
    if shutil.which("containerd") is None or shutil.which("ctr") is None or os.geteuid() != 0:
        pytest.skip("needs containerd and root")
    out = tmp_path / "hosts"
    res = run_cli("agent", "mirror-config", "--config", str(pair.a.config), "--format", "containerd",
                  "--endpoint", pair.a.registry, "--endpoint", pair.b.registry, "-o", str(out))
    assert res.returncode == 0, res.stderr
    certs = str(out / "etc/containerd/certs.d")
    root = tmp_path / "ctrd"
    root.mkdir()
    ctrd = Containerd(root)
    try:
        before_a, before_b = _served(pair.a), _served(pair.b)
        ctrd.ctr("content", "fetch", "--hosts-dir", certs, pair.ref, timeout=120)
        assert ctrd.image_digest(pair.ref) == pair.image.digest
        assert _served(pair.a) > before_a and _served(pair.b) == before_b   # the first endpoint while it is up
    finally:
        ctrd.stop()
    pair.a.stop()              # the first agent is down: the same files pull from the second
    root = tmp_path / "ctrd2"
    root.mkdir()
    ctrd = Containerd(root)    # a node that has nothing yet
    try:
        ctrd.ctr("content", "fetch", "--hosts-dir", certs, pair.ref, timeout=120)
        assert ctrd.image_digest(pair.ref) == pair.image.digest
        assert _served(pair.b) > before_b
    finally:
        ctrd.stop()
        pair.a.start()


def test_healthz_says_503_while_the_store_cannot_serve(pair: Pair) -> None:
    agent = pair.b
    blobs = agent.state / "store/blobs"
    urls = [f"http://{agent.registry}/healthz", f"{agent.files_url}/healthz"]
    assert [httpx.get(u).status_code for u in urls] == [200, 200]
    os.rename(blobs, blobs.with_name("blobs.away"))   # the store volume is gone (unmounted, wiped)
    try:
        for u in urls:
            r = httpx.get(u)
            assert r.status_code == 503 and r.json() == {"ready": False, "reason": "store unavailable"}
            assert httpx.head(u).status_code == 503
        # the daemon itself is alive: its own /healthz (metrics listener) still answers
        assert httpx.get(f"{agent.metrics_url}/healthz").status_code == 200
    finally:
        os.rename(blobs.with_name("blobs.away"), blobs)
    assert [httpx.get(u).status_code for u in urls] == [200, 200]
    # one published blob missing (a wiped directory left in place) is not ready either
    newest = sorted((blobs / "sha256").iterdir(), key=lambda p: p.stat().st_mtime)
    victim = next(p for p in newest if p.stat().st_size == len(TOOL))
    data = victim.read_bytes()
    victim.unlink()
    try:
        assert httpx.get(urls[0]).status_code == 503
    finally:
        victim.write_bytes(data)
    assert httpx.get(urls[0]).status_code == 200
    log = agent.log.read_text()
    assert "not ready for pulls" in log and "ready for pulls again" in log


def test_an_agent_with_apply_false_publishes_and_skips_the_deploy_steps(tmp_path: Path, agent_keys: Keys) -> None:
    """The site's other agents verify, publish and serve; only one runs the deploy steps (apply: false here): the
    bundle completes instead of waiting for a site it must not touch."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "served", "version": "1.0.0", "sequence": 1},
            "manifests": [{"name": "ns", "path": "ns.yaml"}], "deploy": {"steps": [{"manifests": ["ns"]}]}}
    bundle = tmp_path / "served.tar"
    build_bundle(tmp_path / "src", spec, agent_keys.release_key, bundle, set())
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub], apply=False,
                      site={"cluster_name": "c", "domain": "d", "registry": "10.0.0.5:5000",
                            "file_server": "http://10.0.0.5:81", "kubeconfig": str(tmp_path / "no-such-cluster")})
    res = agent.cli("ingest", str(bundle), "--json", check=False)
    assert res.returncode == 0 and json.loads(res.stdout)["state"] == "complete", res.stdout + res.stderr
    steps = {s["name"]: s for s in agent.bundle("served", "1.0.0")["steps"]}  # type: ignore[index]
    assert steps["publish"]["state"] == "done"
    applies = [n for n in steps if n.startswith("apply:") or n == "preflight"]
    assert "apply:manifests-ns" in applies
    for n in applies:
        assert steps[n]["state"] == "skipped" and steps[n]["detail"].startswith("apply: false in the agent config")
    with agent.start():
        r = httpx.get(f"{agent.files_url}/healthz")
        assert r.status_code == 200 and r.json()["published"]["references"] >= 1


def test_two_https_agents_share_one_ca_and_one_password_file(pair: Pair, tmp_path: Path) -> None:
    """The set-up docs/agent.md gives for several agents over HTTPS with basic auth: the first agent's CA copied to
    the second before its first start, one htpasswd file; nodes verify both with the one CA mirror-config writes,
    send one authorization header, and containerd falls back over TLS. The probe needs no credentials."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("puller:" + bcrypt.hashpw(b"pull pw", bcrypt.gensalt(rounds=8)).decode() + "\n")
    (tmp_path / "pull.pw").write_text("pull pw\n")
    keys = yaml.safe_load(pair.a.config.read_text())["trusted_keys"]
    a, b = AgentProc(tmp_path / "a", [Path(k) for k in keys]), AgentProc(tmp_path / "b", [Path(k) for k in keys])
    for agent in (a, b):
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["registry"] = {"listen": f"127.0.0.1:{agent.registry_port}", "htpasswd": str(htpasswd)}  # HTTPS
        cfg["site"] = {"cluster_name": "c", "domain": "d", "registry": a.registry, "file_server": a.files_url,
                       "registry_auth": {"username": "puller", "password_file": str(tmp_path / "pull.pw")}}
        agent.config.write_text(yaml.safe_dump(cfg))
    ca = tmp_path / "ca.crt"
    a.cli("ca", "-o", str(ca))                                  # the first agent's CA …
    (b.state / "tls").mkdir(parents=True, mode=0o700)
    for f in ("ca.crt", "ca.key"):                              # … copied to the second before its first start
        shutil.copy2(a.state / "tls" / f, b.state / "tls" / f)
    verify = ssl.create_default_context(cafile=str(ca))
    try:
        for agent in (a, b):
            agent.start()
            agent.drop_file(pair.bundle)
        for agent in (a, b):
            agent.wait_state("multi", "1.0.0", "complete")
            base = f"https://{agent.registry}"
            assert httpx.get(f"{base}/v2/", verify=verify).status_code == 401
            assert httpx.get(f"{base}/v2/", verify=verify, auth=("puller", "pull pw")).status_code == 200
            r = httpx.get(f"{base}/healthz", verify=verify)    # no credentials: a load balancer's probe
            assert r.status_code == 200 and r.json()["ready"] is True
        out = tmp_path / "mirrors"
        res = run_cli("agent", "mirror-config", "--config", str(a.config), "--format", "containerd",
                      "--endpoint", a.registry, "--endpoint", b.registry, "-o", str(out))
        assert res.returncode == 0, res.stderr
        up = pair.upstream
        certs = out / "etc/containerd/certs.d"
        assert (certs / up / "hydra-bundle-ca.crt").read_bytes() == ca.read_bytes()
        text = (certs / up / "hosts.toml").read_text()
        toml = tomllib.loads(text)
        path = normalize_host(up)
        assert list(toml["host"]) == [f"https://{a.registry}/v2/{path}", f"https://{b.registry}/v2/{path}"]
        for h in toml["host"].values():
            assert h["ca"] == f"/etc/containerd/certs.d/{up}/hydra-bundle-ca.crt"
            assert h["header"]["authorization"].startswith("Basic ")
        if shutil.which("containerd") is None or os.geteuid() != 0:
            return
        (certs / up / "hosts.toml").write_text(text.replace(f"/etc/containerd/certs.d/{up}/hydra-bundle-ca.crt",
                                                            str(certs / up / "hydra-bundle-ca.crt")))
        a.stop()                                                # the first agent is down
        root = tmp_path / "ctrd"
        root.mkdir()
        ctrd = Containerd(root)
        try:
            ctrd.ctr("content", "fetch", "--hosts-dir", str(certs), pair.ref, timeout=120)
            assert ctrd.image_digest(pair.ref) == pair.image.digest
        finally:
            ctrd.stop()
        assert _served(b) > 0
    finally:
        a.stop()
        b.stop()
