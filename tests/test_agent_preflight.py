"""`agent preflight BUNDLE` and the preflight entry of `agent plan`: what a bundle needs of the site, checked against
a real kube-apiserver + etcd (own instance: its Nodes, CRDs and StorageClasses must not leak) and a real MariaDB,
before anything is applied. A broken site fails with a fix hint per check; the fixed site passes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.apply.kube import Kube
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, build_bundle
from tests.support.agent_fixtures import Keys, Site
from tests.support.kube import KubeAPIServer

agent_keys, agent_site = agent_fixtures.agent_keys, agent_fixtures.agent_site  # fixtures

pytestmark = pytest.mark.slow

PASSWORD = "pre flight pw"
MANIFESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: pf}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: models, namespace: pf}
spec:
  storageClassName: nfs-csi
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
"""
WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object"}}}]}}


@pytest.fixture(scope="module")
def own_kube(kube_binaries: tuple[Path, Path]) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(*kube_binaries) as srv:
        yield srv


def _node(kube: Kube, name: str, arch: str, memory: str, control_plane: bool = False) -> None:
    spec: dict[str, Any] = {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
                            } if control_plane else {}
    body = {"apiVersion": "v1", "kind": "Node", "spec": spec,
            "metadata": {"name": name, "labels": {"kubernetes.io/arch": arch}}}
    if kube.get("v1", "Node", name) is None:
        kube.dyn.create(kube.resource("v1", "Node"), body=body)
    else:
        kube.dyn.patch(kube.resource("v1", "Node"), name=name, body={"metadata": body["metadata"]},
                       content_type="application/merge-patch+json")
    kube.dyn.request("patch", f"/api/v1/nodes/{name}/status", content_type="application/merge-patch+json",
                     body={"status": {"allocatable": {"memory": memory, "cpu": "4"}}})


def _checks(out: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(out)["checks"]}


def test_preflight_fails_a_broken_site_with_hints_and_passes_the_fixed_one(
        tmp_path: Path, own_kube: KubeAPIServer, mariadb_server: Any, fixtures_dir: Path, agent_keys: Keys,
        agent_site: Site) -> None:
    kube = Kube.from_kubeconfig(own_kube.kubeconfig)
    _node(kube, "cp-1", "amd64", "64Gi", control_plane=True)    # big, but not schedulable
    _node(kube, "worker-1", "arm64", "4Gi")
    mariadb_server.create_user("pf_user", PASSWORD, "pf_db")
    mariadb_server.execute("CREATE TABLE IF NOT EXISTS vendor (name VARCHAR(64) PRIMARY KEY)", database="pf_db")
    pw = tmp_path / "mysql.password"
    pw.write_text("wrong password\n")

    host = agent_site.registry.host
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model/config.json").write_text("{}\n")
    (src / "objects.yaml").write_text(MANIFESTS)
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "pf", "version": "1.0.0", "sequence": 1}, "platforms": ["linux/amd64"],
            "images": [{"ref": f"{host}/agent/app:1.0"}],
            "manifests": [{"name": "objects", "path": "objects.yaml"}],
            "models": [{"name": "tiny", "path": "model", "files": [{"path": "config.json"}]}],
            "requirements": {"kubernetes": "1.20", "crds": ["widgets.example.com"],
                             "models": {"tiny": {"memory": "7Gi"}}},
            "deploy": {"timeout": "30s", "steps": [
                {"manifests": ["objects"], "wait": False},
                {"sql": {"tables": [{"table": "vendor", "key": ["name"], "rows": [{"name": "alibaba"}]}]}}]}}
    bundle = tmp_path / "pf.tar"
    build_bundle(src, spec, agent_keys.release_key, bundle, {host}, cache=tmp_path / "cache")

    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    cfg = yaml.safe_load(agent.config.read_text())
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    cfg["site"] = {"cluster_name": "c1", "domain": "pf.example", "registry": agent.registry,
                   "file_server": agent.files_url, "kubeconfig": str(own_kube.kubeconfig), "nfs_mount": str(nfs),
                   "mysql": {"dsn": f"mysql://pf_user@127.0.0.1:{mariadb_server.port}/pf_db",
                             "password_file": str(pw)}}
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        # ---- the broken site: every problem is a fail with the fix; nothing is changed anywhere
        res = agent.cli("preflight", str(bundle), "--json", check=False)
        assert res.returncode == 1, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["ok"] is False and doc["bundle"]["name"] == "pf"
        checks = _checks(res.stdout)
        status = {n: c["status"] for n, c in checks.items()}
        assert status == {"kubernetes": "pass", "apis": "fail", "crds": "fail", "storage-classes": "fail",
                          "metallb": "skip", "architectures": "fail", "memory tiny": "fail", "mysql": "fail",
                          "store-space": "pass", "nfs-space": "pass"}, checks
        assert "gateway.networking.k8s.io/v1 GatewayClass" in checks["apis"]["detail"]
        assert "CustomResourceDefinition" in checks["apis"]["hint"]
        assert checks["crds"]["detail"].endswith("widgets.example.com")
        assert "nfs-csi (for apply:manifests-objects)" in checks["storage-classes"]["detail"]
        assert "linux/amd64; no node can run it" in checks["architectures"]["detail"]
        assert "worker-1, has 4.0 GiB" in checks["memory tiny"]["detail"]   # cp-1 is tainted: not counted
        assert "MySQL error 1045" in checks["mysql"]["detail"] and str(pw) in checks["mysql"]["hint"]
        assert "wrong password" not in res.stdout + res.stderr and PASSWORD not in res.stdout
        text = agent.cli("preflight", str(bundle), check=False)
        assert text.returncode == 1 and "FAILED: " in text.stdout and "fix: create the StorageClass" in text.stdout
        assert not agent.state.exists() or not list((agent.state / "store").glob("**/*-*"))  # nothing ingested
        assert kube.get("v1", "Namespace", "pf") is None

        # `agent plan` shows the same checks as the step before the apply steps
        plan = json.loads(agent.cli("plan", str(bundle), "--json").stdout)
        assert plan["preflight"]["journalStep"] == "preflight" and plan["preflight"]["ok"] is False
        assert {c["name"] for c in plan["preflight"]["checks"]} == set(checks)
        offline = json.loads(agent.cli("plan", str(bundle), "--json", "--offline").stdout)
        assert {c["status"] for c in offline["preflight"]["checks"] if c["name"] in ("apis", "mysql")} == {"skip"}

        # ---- the operator fixes the site: now it passes
        pw.write_text(PASSWORD + "\n")
        kube.dyn.create(kube.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition"), body=WIDGETS_CRD)
        gwc = fixtures_dir / "gateway-api-v1.2.1/standard/gateway.networking.k8s.io_gatewayclasses.yaml"
        kube.dyn.create(kube.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
                        body=yaml.safe_load(gwc.read_text()))
        kube.dyn.create(kube.resource("storage.k8s.io/v1", "StorageClass"), body={
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "nfs-csi"},
            "provisioner": "nfs.csi.k8s.io"})
        _node(kube, "worker-2", "amd64", "16Gi")
        res = agent.cli("preflight", str(bundle), "--json", check=False)
        checks = _checks(res.stdout)
        assert res.returncode == 0, checks
        assert json.loads(res.stdout)["ok"] is True
        status = {n: c["status"] for n, c in checks.items()}
        # worker-1 stays arm64: a warning that the image's pods cannot run there, not a failure
        assert status["architectures"] == "warn" and "worker-1" in checks["architectures"]["detail"]
        assert {n for n, s in status.items() if s not in ("pass", "skip")} == {"architectures"}, checks
        assert "worker-2 has 16.0 GiB" in checks["memory tiny"]["detail"]
    finally:
        kube.close()


def test_preflight_blocks_the_agent_until_the_site_is_fixed(
        tmp_path: Path, own_kube: KubeAPIServer, agent_keys: Keys) -> None:
    """A failed check keeps the bundle waiting with nothing applied; `agent apply NAME` re-checks at once."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pf-block, namespace: default}\n"
                                 "data: {k: v}\n")
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "pf-block", "version": "1.0.0", "sequence": 1}, "platforms": ["linux/amd64"],
            "manifests": [{"name": "cm", "path": "cm.yaml"}],
            "requirements": {"crds": ["gadgets.example.com"]},
            "deploy": {"timeout": "30s", "steps": [{"manifests": ["cm"]}]}}
    bundle = tmp_path / "pf-block.tar"
    build_bundle(src, spec, agent_keys.release_key, bundle, set(), cache=tmp_path / "cache")
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub], retry_interval=3600.0)
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["site"] = {"cluster_name": "c1", "domain": "pf.example", "registry": agent.registry,
                   "file_server": agent.files_url, "kubeconfig": str(own_kube.kubeconfig)}
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    kube = Kube.from_kubeconfig(own_kube.kubeconfig)
    try:
        with agent.start():
            agent.drop_file(bundle)
            b = agent.wait_state("pf-block", "1.0.0", "waiting", timeout=90)
            steps = {s["name"]: s for s in b["steps"]}
            assert b["reason"] == "blocked" and "crds: missing CustomResourceDefinition(s): gadgets.example.com" \
                in b["detail"]
            assert steps["preflight"]["state"] == "pending" and steps["apply:manifests-cm"]["attempts"] == 0
            assert kube.get("v1", "ConfigMap", "pf-block", "default") is None
            assert "fail crds:" in agent.cli("status").stdout
            by_name = agent.cli("preflight", "pf-block", "--json", check=False)   # admitted: from the store
            assert by_name.returncode == 1, by_name.stdout + by_name.stderr
            doc = json.loads(by_name.stdout)
            assert doc["bundle"]["name"] == "pf-block" and doc["bundle"]["state"] == "waiting"
            assert _checks(by_name.stdout)["crds"]["status"] == "fail"
            crd = json.loads(json.dumps(WIDGETS_CRD).replace("widget", "gadget"))
            kube.dyn.create(kube.resource("apiextensions.k8s.io/v1", "CustomResourceDefinition"), body=crd)
            res = agent.cli("apply", "pf-block", check=False)   # no waiting for the hour-long retry
            assert res.returncode == 0 and res.stdout.startswith("complete: pf-block 1.0.0"), res.stdout + res.stderr
        assert kube.get("v1", "ConfigMap", "pf-block", "default") is not None
        steps = {s["name"]: s for s in agent.bundle("pf-block", "1.0.0")["steps"]}  # type: ignore[index]
        assert steps["preflight"]["state"] == "done" and steps["preflight"]["result"]["ok"] is True
    finally:
        kube.close()
