"""Push mode: every image and chart copied into a second docker-registry (2.8), digests preserved."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import agent_fixtures
from tests.support.agent import AgentProc
from tests.support.agent_fixtures import Built, Keys, Site
from tests.support.images import get_manifest
from tests.support.registry import Registry

agent_keys, agent_site, agent_bundles = (agent_fixtures.agent_keys, agent_fixtures.agent_site,
                                       agent_fixtures.agent_bundles)  # fixtures

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")]


def inspect(ref: str, *extra: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *extra, ref], check=True, capture_output=True,
                         text=True, timeout=60)
    return json.loads(out.stdout)


def raw(ref: str, *extra: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *extra, ref], check=True,
                          capture_output=True, timeout=60).stdout


def test_push_mode_into_a_second_registry(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                          agent_bundles: dict[str, Built], fresh_registry: Registry) -> None:
    target = fresh_registry.host
    at = f"{target}/{agent_site.site_host}"   # site names keep the source registry's host
    with AgentProc(tmp_path / "a", [agent_keys.release_pub], push={"registry": target, "insecure": True}) as agent:
        agent.start()
        agent.drop_file(agent_bundles["demo1"].path)
        b = agent.wait_state("demo", "1.0.0", "complete")
        push = next(s for s in b["steps"] if s["name"] == "push")
        # 4 images, the chart, the model and the file: everything the embedded registry serves
        assert push["state"] == "done" and "7 references" in push["detail"], push

        # single-platform image and untouched multi-arch index: same digests, pulled by tag
        assert inspect(f"docker://{at}/agent/app:1.0")["Digest"] == agent_site.app1.digest
        multi = raw(f"docker://{at}/agent/multi:1.0")
        assert "sha256:" + hashlib.sha256(multi).hexdigest() == agent_site.multi_digest
        # filtered to one platform: the tag resolves to the kept child (its digest preserved)
        info = inspect(f"docker://{at}/agent/filtered:1.0")
        assert info["Digest"] == agent_site.filtered[0].digest and info["Architecture"] == "amd64"
        # filtered to two of three platforms: a rewritten index with the kept children, each pullable by tag
        idx = json.loads(raw(f"docker://{at}/agent/filtered3:1.0"))
        assert [m["digest"] for m in idx["manifests"]] == [i.digest for i in agent_site.filtered3[:2]]
        out = tmp_path / "pulled"
        for arch, img in (("amd64", agent_site.filtered3[0]), ("arm64", agent_site.filtered3[1])):
            subprocess.run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--override-arch", arch,
                            f"docker://{at}/agent/filtered3:1.0", f"oci:{out}:{arch}"], check=True,
                           capture_output=True, timeout=120)
            layout = json.loads((out / "index.json").read_text())["manifests"]
            got = next(m for m in layout if m["annotations"]["org.opencontainers.image.ref.name"] == arch)
            assert got["digest"] == img.digest
        subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                        f"docker://{at}/agent/filtered3:1.0", f"oci:{out}:x"], check=True, capture_output=True,
                       timeout=120)
        # the chart, digest preserved
        r = get_manifest(target, f"{agent_site.site_host}/agent/charts/demo", "0.1.0")
        assert r.status_code == 200 and r.headers["docker-content-digest"] == agent_site.chart_digest

        # the model and the file as the same OCI artifacts, by the embedded registry's site names
        tag = "1.0.0"
        for kind, name in (("models", "tiny"), ("files", "tool")):
            comp = next(c for c in getattr(agent_bundles["demo1"].index.components, kind) if c.name == name)
            served = httpx.get(f"http://{agent.registry}/v2/hydra-bundle/{kind}/{name}/manifests/{tag}",
                               headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
            r = get_manifest(target, f"hydra-bundle/{kind}/{name}", tag)
            assert r.status_code == 200 and r.headers["docker-content-digest"] == comp.digest, r.text
            assert r.content == served.content
            for layer in json.loads(r.content)["layers"]:
                blob = httpx.get(f"http://{target}/v2/hydra-bundle/{kind}/{name}/blobs/{layer['digest']}")
                assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == layer["digest"]

        # a second bundle: blobs already there are skipped, the new image is pushed (and the shared model)
        agent.drop_file(agent_bundles["demo2"].path)
        b2 = agent.wait_state("demo", "2.0.0", "complete")
        assert "2 references" in b2["steps"][-1]["detail"]
        assert inspect(f"docker://{at}/agent/app:2.0")["Digest"] == agent_site.app2.digest

    # a second push of the same bundle (a fresh agent, the same site registry) uploads nothing
    with AgentProc(tmp_path / "b", [agent_keys.release_pub], push={"registry": target, "insecure": True}) as again:
        again.start()
        again.drop_file(agent_bundles["demo1"].path)
        b = again.wait_state("demo", "1.0.0", "complete")
        push = next(s for s in b["steps"] if s["name"] == "push")
        counts = push["result"]["blobs"]
        assert counts["uploaded"] == 0 and counts["mounted"] == 0 and counts["exists"] > 0, push


def test_push_with_credentials_prefix_and_retry(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                                agent_bundles: dict[str, Built], auth_registry: Registry) -> None:
    auth = tmp_path / "auth.json"
    user, pw = auth_registry.auth  # type: ignore[misc]
    auth.write_text(json.dumps({"auths": {auth_registry.host: {
        "auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}))
    bad = tmp_path / "bad-auth.json"
    bad.write_text(json.dumps({"auths": {auth_registry.host: {"auth": base64.b64encode(b"hydra:wrong").decode()}}}))
    push = {"registry": f"{auth_registry.host}/mirror", "insecure": True, "credentials_file": str(bad)}
    with AgentProc(tmp_path / "a", [agent_keys.release_pub], push=push) as agent:
        agent.start()
        agent.drop_file(agent_bundles["demo2"].path)
        b = agent.wait_state("demo", "2.0.0", "failed")
        assert b["reason"] == "step-failed" and "push" in b["detail"]
        assert "s3cret" not in agent.log.read_text() and "wrong" not in agent.log.read_text()
        # published anyway: the embedded registry serves it while the push waits for a retry
        app = agent_site.served("agent/app")
        assert httpx.get(f"http://{agent.registry}/v2/{app}/tags/list").json()["tags"] == ["2.0"]
    # fix the credentials; on restart the failed step is retried (after retry_interval) and completes
    import yaml

    cfg = yaml.safe_load(agent.config.read_text())
    cfg["push"]["credentials_file"] = str(auth)
    agent.config.write_text(yaml.safe_dump(cfg))
    with agent:
        agent.start()
        b = agent.wait_state("demo", "2.0.0", "complete")
        assert [s["state"] for s in b["steps"]] == ["done", "done", "done"]
        got = inspect(f"docker://{auth_registry.host}/mirror/{agent_site.site_host}/agent/app:2.0", "--creds",
                      f"{user}:{pw}")
        assert got["Digest"] == agent_site.app2.digest


def test_push_carries_manifests(tmp_path: Path, agent_keys: Keys, agent_site: Site,
                                fresh_registry: Registry) -> None:
    """A bundle of manifests only: the manifests artifact lands in the site registry under the name and digest the
    embedded registry serves, and its layer is the manifest file byte for byte."""
    from tests.support.agent import build_bundle

    src = tmp_path / "src"
    src.mkdir()
    cm = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pushed}\ndata: {a: b}\n"
    (src / "cm.yaml").write_bytes(cm)
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "cfg", "version": "1.0.0", "sequence": 1},
            "manifests": [{"name": "cm", "path": "cm.yaml"}]}
    res = build_bundle(src, spec, agent_keys.release_key, tmp_path / "cfg.tar", {agent_site.registry.host})
    comp = res.index.components.manifests[0]
    target = fresh_registry.host
    with AgentProc(tmp_path / "a", [agent_keys.release_pub], push={"registry": target, "insecure": True}) as agent:
        agent.start()
        agent.drop_file(tmp_path / "cfg.tar")
        b = agent.wait_state("cfg", "1.0.0", "complete")
        push = next(s for s in b["steps"] if s["name"] == "push")
        assert push["state"] == "done" and "1 reference" in push["detail"], push
        repo, tag = comp.ref.rsplit(":", 1)
        assert repo == f"hydra-bundle/manifests/{comp.name}", comp.ref
        r = get_manifest(target, repo, tag)
        served = httpx.get(f"http://{agent.registry}/v2/{repo}/manifests/{tag}",
                           headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert served.status_code == 200, served.text
        assert r.status_code == 200 and r.headers["docker-content-digest"] == comp.digest, r.text
        assert r.content == served.content
        layers = json.loads(r.content)["layers"]
        blobs = [httpx.get(f"http://{target}/v2/{repo}/blobs/{la['digest']}").content for la in layers]
        assert cm in blobs
