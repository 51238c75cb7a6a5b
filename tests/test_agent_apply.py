"""The agent applies bundles on a site: a real `agent run` subprocess with `site:` pointing at a real kube-apiserver
+ etcd (own instance: Node objects and CRD ownership must not leak into other modules) and a real MariaDB, bundles
built by the real builder (Gateway API v1.2.1 + Dataset CRDs from the fixtures, the runbook's Gateway and HTTPRoute,
a workload, node labels, a chart without helm, SQL vendor rows, a model warm-up, the gateway TLS secret).
The tests play the controllers: they write Dataset and LoadBalancer status, and the helm release record."""

from __future__ import annotations

import base64
import gzip
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from hydra_bundle.apply.kube import Kube
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, build_bundle, run_cli, wait_for
from tests.support.agent_fixtures import Keys, Site
from tests.support.kube import KubeAPIServer

agent_keys, agent_site = agent_fixtures.agent_keys, agent_fixtures.agent_site  # fixtures

pytestmark = pytest.mark.slow

DB = "hydra_e2e"
PASSWORD = "s3cr3t pw"
LB_IP = "10.64.24.211"
VENDOR_TABLE = ("CREATE TABLE IF NOT EXISTS vendor (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, "
                "display_name JSON NULL) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
VLLM_NOTE = ("CPU inference: deployment parameters --dtype=half --max-model-len=8192, image "
             "${site.registry}/release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu")

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway, namespace: default}
spec:
  gatewayClassName: istio
  listeners:
  - {name: default, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - name: https
    hostname: '${site.domain}'
    port: 443
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: All}}
    tls:
      mode: Terminate
      certificateRefs: [{group: "", kind: Secret, name: '${site.domain}'}]
---
apiVersion: v1
kind: Namespace
metadata: {name: hydra-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: hydra-agent-knoway, namespace: hydra-system}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gateway, namespace: default}]
  rules:
  - backendRefs: [{group: "", kind: Service, name: knoway-gateway, port: 8080, weight: 1}]
    matches: [{path: {type: PathPrefix, value: /v1}}]
---
apiVersion: v1
kind: Service
metadata: {name: gateway-istio, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: gateway}
  ports: [{name: http, port: 80}, {name: https, port: 443}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: hydra-system}
spec:
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec: {containers: [{name: app, image: "IMAGE"}]}
"""


@pytest.fixture(scope="module")
def own_kube(kube_binaries: tuple[Path, Path]) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(*kube_binaries) as srv:
        yield srv


def _crds(fixtures: Path) -> str:
    files = sorted((fixtures / "gateway-api-v1.2.1/standard").glob("*.yaml"))
    files.append(fixtures / "baizeai-dataset-v0.1.11/dataset.baizeai.io_datasets.yaml")
    return "\n---\n".join(f.read_text() for f in files)


def _spec(host: str, deploy: dict[str, Any], name: str = "hydra-ws", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": name, "version": "1.0.0", "sequence": 1}, "platforms": ["linux/amd64"],
            "deploy": deploy, **extra}


def _build(tmp: Path, spec: dict[str, Any], keys: Keys, files: dict[str, str], insecure: set[str]) -> Path:
    src = tmp / "src"
    (src / "model").mkdir(parents=True, exist_ok=True)
    (src / "model/config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}\n')
    for n, text in files.items():
        (src / n).write_text(text)
    out = tmp / f"{spec['metadata']['name']}.tar"
    build_bundle(src, spec, keys.release_key, out, insecure, cache=tmp / "cache")
    return out


def _site(kubeconfig: Path, agent: AgentProc, **kw: Any) -> dict[str, Any]:
    return {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": agent.registry,
            "file_server": agent.files_url, "kubeconfig": str(kubeconfig), **kw}


def _no_helm_library(tmp: Path) -> dict[str, str]:
    """The environment of a host where the Helm library cannot load (a foreign or broken libhelm_c)."""
    broken = tmp / "libhelm_c.so.0.2.2"
    broken.write_bytes(b"not an ELF library")
    return {"HELM_C_LIB": str(broken)}


def _steps(agent: AgentProc, name: str = "hydra-ws") -> dict[str, dict[str, Any]]:
    b = agent.bundle(name, "1.0.0")
    return {s["name"]: s for s in (b or {}).get("steps", [])}


def _patch_status(kube: Kube, path: str, status: dict[str, Any]) -> None:
    kube.dyn.request("patch", path, body={"status": status}, content_type="application/merge-patch+json")


def _helm_release_secret(kube: Kube, namespace: str, release: str, chart: str, version: str,
                         values: dict[str, Any]) -> None:
    """What `helm upgrade --install` leaves behind (helm 3 storage driver `secret`)."""
    record = {"name": release, "namespace": namespace, "version": 1, "info": {"status": "deployed"},
              "chart": {"metadata": {"name": chart, "version": version}}, "config": values}
    payload = base64.b64encode(gzip.compress(json.dumps(record).encode()))
    kube.dyn.create(kube.resource("v1", "Secret"), namespace=namespace, body={
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {"name": f"sh.helm.release.v1.{release}.v1", "namespace": namespace,
                     "labels": {"owner": "helm", "name": release, "status": "deployed", "version": "1"}},
        "data": {"release": base64.b64encode(payload).decode()}})


def test_agent_applies_the_bundle_survives_kill9_and_reapplies(
        tmp_path: Path, own_kube: KubeAPIServer, mariadb_server: Any, fixtures_dir: Path, agent_keys: Keys,
        agent_site: Site) -> None:
    kube = Kube.from_kubeconfig(own_kube.kubeconfig)
    nodes = kube.resource("v1", "Node")
    for name, taint in (("cp-1", True), ("worker-1", False), ("worker-2", False)):
        spec: dict[str, Any] = {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
                                } if taint else {}
        kube.dyn.create(nodes, body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec})
    mariadb_server.create_user("hydra_e2e", PASSWORD, DB)
    mariadb_server.execute(VENDOR_TABLE, database=DB)
    pw = tmp_path / "mysql.password"
    pw.write_text(PASSWORD + "\n")

    host = agent_site.registry.host
    image = f"{host}/agent/app:1.0"
    deploy = {"timeout": "60s", "steps": [
        {"manifests": ["crds"]},
        {"tls": {"secret": "${site.domain}", "hosts": ["${site.domain}"]}},
        {"manifests": ["gateway"], "wait": False},
        {"name": "simulate-gpu", "when": "no-gpu",
         "label_nodes": {"labels": {"run.ai/simulated-gpu-node-pool": "default"}}},
        {"chart": {"name": "demo", "pull_secrets": ["gcr-secret"]}},
        {"sql": {"tables": [{"table": "vendor", "key": ["name"],
                             "rows": [{"name": "alibaba", "display_name": {"enUS": "Alibaba", "zhCN": "通义千问"}}]}]}},
        {"warmup": "tiny", "timeout": "5m", "notes": [VLLM_NOTE]},
        {"wait_for": [{"kind": "Service", "namespace": "default", "name": "gateway-istio"}]},
    ]}
    spec = _spec(host, deploy, images=[{"ref": image}],
                 charts=[{"name": "demo", "version": "0.1.0", "ref": f"oci://{host}/agent/charts/demo",
                          "namespace": "demo-system"}],
                 manifests=[{"name": "crds", "path": "crds.yaml"}, {"name": "gateway", "path": "gateway.yaml"}],
                 models=[{"name": "tiny", "path": "model", "files": [{"path": "config.json"}]}])
    bundle = _build(tmp_path, spec, agent_keys, {"crds.yaml": _crds(fixtures_dir),
                                                 "gateway.yaml": GATEWAY.replace("IMAGE", image)}, {host})

    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    agent.env = _no_helm_library(tmp_path)  # charts: the pending path (the library's own path: below)
    cfg = yaml.safe_load(agent.config.read_text())
    dsn = f"mysql://hydra_e2e@127.0.0.1:{mariadb_server.port}/{DB}"
    cfg["site"] = _site(own_kube.kubeconfig, agent, mysql={"dsn": dsn, "password_file": str(pw)})
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # ---- plan first: every action in order, verified from the file, nothing done anywhere
    res = agent.cli("plan", str(bundle), "--json")
    plan = json.loads(res.stdout)
    assert plan["bundle"]["signer"] and plan["bundle"]["name"] == "hydra-ws"
    assert [s["journalStep"] for s in plan["steps"]] == [
        "apply:manifests-crds", "apply:tls", "apply:manifests-gateway", "apply:simulate-gpu", "apply:chart-demo",
        "apply:sql", "apply:warmup-tiny", "apply:wait-for", "apply:prune"]
    crd_actions = plan["steps"][0]["actions"]
    assert [a["op"] for a in crd_actions[:6]] == ["apply"] * 6 and crd_actions[6]["op"] == "wait"
    gw = [a["target"] for a in plan["steps"][2]["actions"]]
    assert gw.index("Namespace hydra-system") < gw.index("Service default/gateway-istio") < gw.index(
        "Deployment hydra-system/app") < gw.index("Gateway default/gateway")
    assert plan["steps"][6]["notes"] == [VLLM_NOTE.replace("${site.registry}", agent.registry)]
    text = agent.cli("plan", str(bundle)).stdout
    assert "nothing was done" in text and "sql-upsert" in text and "helm upgrade --install demo" in text
    assert "cannot load" in text  # the chart step says now why it would be pending
    assert not agent.state.exists()
    assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "gateways.gateway.networking.k8s.io") is None

    # ---- run: preflight finds no nfs-csi class (the warm-up's Dataset needs it) and holds every apply step
    agent.start()
    try:
        agent.drop_file(bundle)
        def held() -> dict[str, Any] | None:  # one status read: the agent retries the check every second
            b = agent.bundle("hydra-ws", "1.0.0") or {}
            pre = {s["name"]: s for s in b.get("steps", [])}.get("preflight") or {}
            return b if b.get("state") == "waiting" and pre.get("state") == "pending" and pre.get("result") else None
        b = wait_for(held, 120, f"preflight holds the apply steps\n{agent.log_tail()}", interval=0.25)
        pre = {s["name"]: s for s in b["steps"]}["preflight"]
        assert "storage-classes" in b["detail"] and "nfs-csi" in b["detail"]
        checks = {c["name"]: c for c in pre["result"]["checks"]}
        assert checks["storage-classes"]["status"] == "fail" and "StorageClass" in checks["storage-classes"]["hint"]
        assert checks["apis"]["status"] == "pass" and "shipped as CRDs" in checks["apis"]["detail"]
        assert checks["mysql"]["status"] == "pass" and checks["kubernetes"]["status"] == "pass"
        assert all(s["state"] == "pending" for s in b["steps"] if s["name"].startswith("apply:"))
        assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                        "gateways.gateway.networking.k8s.io") is None  # nothing applied
        # the operator installs the NFS driver's class; the agent's retry passes preflight and applies
        kube.dyn.create(kube.resource("storage.k8s.io/v1", "StorageClass"), body={
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "nfs-csi"},
            "provisioner": "nfs.csi.k8s.io"})
        # kill -9 while the warm-up waits for the dataset controller
        wait_for(lambda: _steps(agent).get("apply:warmup-tiny", {}).get("state") == "running", 120,
                 f"warm-up running\n{agent.log_tail()}", interval=0.25)
        wait_for(lambda: "phase PENDING" in (_steps(agent)["apply:warmup-tiny"]["detail"] or ""), 30, "progress")
        agent.kill9()
    finally:
        if agent.proc is not None:
            agent.stop()
    steps = _steps(agent)
    assert steps["apply:warmup-tiny"]["state"] == "interrupted"  # running when the crash came; nothing runs it now
    assert steps["apply:sql"]["state"] == "done" and steps["apply:chart-demo"]["state"] == "pending"
    assert mariadb_server.execute("SELECT COUNT(*) FROM vendor", database=DB) == [(1,)]

    agent.start()
    try:
        wait_for(lambda: _steps(agent)["apply:warmup-tiny"]["attempts"] >= 2, 60, "warm-up resumed")
        _patch_status(kube, "/apis/dataset.baizeai.io/v1alpha1/namespaces/public/datasets/tiny/status",
                      {"phase": "READY", "lastSucceedRound": 1, "pvcName": "dataset-tiny"})
        _patch_status(kube, "/api/v1/namespaces/default/services/gateway-istio/status",
                      {"loadBalancer": {"ingress": [{"ip": LB_IP}]}})
        wait_for(lambda: _steps(agent).get("apply:prune", {}).get("state") == "done", 60,
                 f"apply steps done\n{agent.log_tail()}")
        b = agent.wait_state("hydra-ws", "1.0.0", "waiting")
        steps = {s["name"]: s for s in b["steps"]}
        assert {n: s["state"] for n, s in steps.items()} == {
            "ingest": "done", "publish": "done", "preflight": "done", "apply:manifests-crds": "done",
            "apply:tls": "done", "apply:manifests-gateway": "done", "apply:simulate-gpu": "done",
            "apply:chart-demo": "pending",
            "apply:sql": "done", "apply:warmup-tiny": "done", "apply:wait-for": "done", "apply:prune": "done"}
        chart = steps["apply:chart-demo"]
        command = chart["result"]["command"]
        assert command[:4] == ["helm", "upgrade", "--install", "demo"] and "--plain-http" in command
        assert command[4] == f"oci://{agent.registry}/{agent_site.served('agent/charts/demo')}"
        assert b["reason"] == "step-pending" and "apply:chart-demo: the Helm library (helm-python-sdk) cannot load: " \
            "HelmLibraryError: found the helm-c library at" in b["detail"]
        assert " ".join(command) in b["detail"]
        # results kept with the steps
        assert steps["apply:wait-for"]["result"]["outputs"]["etcHosts"] == [f"{LB_IP} cn-sh-a1"]
        assert VLLM_NOTE.replace("${site.registry}", agent.registry) in steps["apply:warmup-tiny"]["result"]["notes"]
        assert steps["apply:warmup-tiny"]["result"]["outputs"]["pvc"] == "dataset-tiny"
        tls_out = steps["apply:tls"]["result"]["outputs"]
        assert tls_out["secret"] == "default/cn-sh-a1" and tls_out["source"] == "site CA"

        # on the cluster
        gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "gateway", "default")
        assert gw is not None and gw["spec"]["listeners"][1]["hostname"] == "cn-sh-a1"
        app = kube.get("apps/v1", "Deployment", "app", "hydra-system")
        assert app is not None and app["spec"]["template"]["spec"]["containers"][0]["image"] == \
            f"{agent.registry}/{agent_site.served('agent/app')}:1.0"
        labels = {n: (kube.get("v1", "Node", n) or {})["metadata"].get("labels", {}) for n in ("cp-1", "worker-1")}
        assert labels["worker-1"]["run.ai/simulated-gpu-node-pool"] == "default"
        assert "run.ai/simulated-gpu-node-pool" not in labels["cp-1"]
        ds = kube.get("dataset.baizeai.io/v1alpha1", "Dataset", "tiny", "public")
        assert ds is not None and ds["spec"]["source"]["uri"] == f"{agent.files_url}/model/tiny/"
        assert kube.get("v1", "Secret", "gcr-secret", "demo-system") is not None
        secret = kube.get("v1", "Secret", "cn-sh-a1", "default")
        assert secret is not None and secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["labels"]["hydra-bundle.io/bundle"] == "hydra-ws"
        # the CA operators export verifies the served certificate
        ca = x509.load_pem_x509_certificate(agent.cli("ca").stdout.encode())
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        leaf.verify_directly_issued_by(ca)
        assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["cn-sh-a1"]
        # the database: one row, Chinese intact, despite the crash
        rows = mariadb_server.execute("SELECT name, display_name FROM vendor", database=DB)
        assert len(rows) == 1 and json.loads(rows[0][1]) == {"enUS": "Alibaba", "zhCN": "通义千问"}

        # ---- what the operator reads
        status = agent.cli("status").stdout
        assert f"/etc/hosts: {LB_IP} cn-sh-a1" in status
        assert "run: helm upgrade --install demo" in status and "--dtype=half" in status
        assert "note: clients must trust the site CA" in status

        mirror = agent.cli("mirror-config").stdout
        sections = mirror.split("# ==> ")[1:]
        paths = [s.split(" <==", 1)[0] for s in sections]
        assert f"/etc/containerd/certs.d/{host}/hosts.toml" in paths
        assert "/etc/containers/registries.conf.d/50-hydra-bundle.conf" in paths
        for s in sections:
            tomllib.loads(s.split("\n", 1)[1])
        files = json.loads(agent.cli("mirror-config", "--json", "--format", "containerd").stdout)["files"]
        toml = tomllib.loads(files[f"/etc/containerd/certs.d/{host}/hosts.toml"])
        assert toml["server"] == f"https://{host}"
        assert toml["host"] == {f"http://{agent.registry}/v2/{agent_site.site_host}": {
            "capabilities": ["pull", "resolve"], "override_path": True}}
        crio = tomllib.loads(agent.cli("mirror-config", "--format", "crio").stdout.split("\n", 1)[1])
        assert crio["registry"][0]["mirror"][0]["location"] == f"{agent.registry}/{agent_site.site_host}"

        # ---- the operator ran the pending helm command: `agent apply` re-runs everything and completes
        values = yaml.safe_load(Path(command[command.index("--values") + 1]).read_text())
        _helm_release_secret(kube, "demo-system", "demo", "demo", "0.1.0", values)
        before = {n: s["attempts"] for n, s in _steps(agent).items()}
        res = agent.cli("apply", "hydra-ws", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.startswith("complete: hydra-ws 1.0.0")
        after = _steps(agent)
        assert after["apply:chart-demo"]["state"] == "done"
        assert "installed outside the agent" in after["apply:chart-demo"]["detail"]
        # every apply step ran once more (the chart step maybe more often: the agent retries it while waiting)
        assert all(after[n]["attempts"] == before[n] + 1 for n in after
                   if n.startswith("apply:") and n != "apply:chart-demo"), (before, after)
        assert after["ingest"]["attempts"] == before["ingest"]
        assert agent.bundle("hydra-ws", "1.0.0")["state"] == "complete"
        assert kube.get("v1", "Secret", "cn-sh-a1", "default")["data"] == secret["data"]  # same certificate
        assert mariadb_server.execute("SELECT COUNT(*) FROM vendor", database=DB) == [(1,)]
        assert after["apply:manifests-gateway"]["result"]["summary"] == "5 objects: 5 unchanged"
        assert agent.cli("plan", "hydra-ws").returncode == 0  # by name, from the store
    finally:
        agent.stop()
        kube.close()


def test_charts_install_in_process_and_status_shows_the_release(
        tmp_path: Path, own_kube: KubeAPIServer, agent_keys: Keys, agent_site: Site) -> None:
    """No helm binary anywhere: the agent installs the chart from its content store with the Helm library; plan
    says install, status names the release and revision, a re-apply makes no new revision."""
    host = agent_site.registry.host
    deploy = {"timeout": "60s", "steps": [{"chart": {"name": "demo", "values": {"replicaCount": 2}}}]}
    spec = _spec(host, deploy, name="charted", charts=[{"name": "demo", "version": "0.1.0", "namespace": "charted",
                                                        "ref": f"oci://{host}/agent/charts/demo"}])
    bundle = _build(tmp_path, spec, agent_keys, {}, {host})
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["site"] = _site(own_kube.kubeconfig, agent)
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert "now         install demo 0.1.0 (revision 1)" in agent.cli("plan", str(bundle)).stdout
    kube = Kube.from_kubeconfig(own_kube.kubeconfig)
    try:
        with agent.start():
            agent.drop_file(bundle)
            b = agent.wait_state("charted", "1.0.0", "complete", timeout=90)
            chart = {s["name"]: s for s in b["steps"]}["apply:chart-demo"]
            assert chart["detail"] == "release charted/demo: installed (demo-0.1.0, revision 1, deployed)"
            assert chart["result"]["outputs"] == {"release": "charted/demo", "revision": 1, "status": "deployed",
                                                  "chart": "demo-0.1.0"}
            assert "output release: charted/demo" in agent.cli("status").stdout
            cm = kube.get("v1", "ConfigMap", "demo-cm", "charted")
            assert cm is not None and cm["data"] == {"replicas": "2"}
            assert "now         unchanged (demo-0.1.0, revision 1)" in agent.cli("plan", "charted").stdout
            res = agent.cli("apply", "charted", check=False)
            assert res.returncode == 0 and res.stdout.startswith("complete: charted 1.0.0"), res.stdout
            assert "release charted/demo: unchanged" in res.stdout
        secrets = kube.list_raw("/api/v1/namespaces/charted/secrets", "owner=helm,name=demo")
        assert [o["metadata"]["name"] for o in secrets] == ["sh.helm.release.v1.demo.v1"]  # no second revision
    finally:
        kube.close()


def test_api_server_and_mysql_down_at_start_are_retried_until_they_come_up(
        tmp_path: Path, kube_binaries: tuple[Path, Path], mariadb_factory: Any, agent_keys: Keys) -> None:
    db = mariadb_factory(start=False)
    srv = KubeAPIServer(*kube_binaries, start=False)
    try:
        deploy = {"timeout": "3s", "steps": [
            {"sql": {"tables": [{"table": "vendor", "key": ["name"], "rows": [{"name": "alibaba"}]}]}},
            {"manifests": ["ns"]}]}
        ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n---\n" \
             "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: late}\ndata: {k: v}\n"
        bundle = _build(tmp_path, _spec("", deploy, name="late", manifests=[{"name": "ns", "path": "ns.yaml"}]),
                        agent_keys, {"ns.yaml": ns}, set())
        agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["site"] = _site(srv.kubeconfig, agent, mysql={"dsn": f"mysql://root@127.0.0.1:{db.port}/late",
                                                          "connect_timeout": 1})
        agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with agent.start():
            agent.drop_file(bundle)
            # preflight asks both first: nothing is attempted while they are down, the bundle waits with why
            seen: dict[str, Any] = {}

            def failing() -> list[str]:
                b = agent.bundle("late", "1.0.0") or {}
                pre = {s["name"]: s for s in b.get("steps", [])}.get("preflight") or {}
                if b.get("state") != "waiting" or pre.get("state") != "pending" or not pre.get("result"):
                    return []
                seen.update(b)
                return sorted(c["name"] for c in pre["result"]["checks"] if c["status"] == "fail")
            assert wait_for(failing, 90, "preflight fails on both") == ["kubernetes", "mysql"]
            b = seen
            assert b["reason"] == "blocked" and "cannot ask the cluster" in b["detail"]
            assert "MySQL error 2003" in b["detail"]
            assert all(s["attempts"] == 0 for s in b["steps"] if s["name"].startswith("apply:"))
            db.start()
            db.execute("CREATE DATABASE late CHARACTER SET utf8mb4")
            db.execute(VENDOR_TABLE, database="late")
            wait_for(lambda: failing() == ["kubernetes"], 90, "only the API server is missing")
            srv.start()
            agent.wait_state("late", "1.0.0", "complete", timeout=120)
        kube = Kube.from_kubeconfig(srv.kubeconfig)
        assert kube.get("v1", "ConfigMap", "c", "late") is not None
        kube.close()
        assert db.execute("SELECT name FROM vendor", database="late") == [("alibaba",)]
        events = [e["event"] for e in json.loads(agent.cli("history", "--json").stdout)["events"]]
        assert "step apply:sql failed" not in events and "step apply:sql done" in events
    finally:
        srv.stop()


def test_without_site_the_deploy_steps_wait_and_say_why(tmp_path: Path, agent_keys: Keys) -> None:
    deploy = {"steps": [{"manifests": ["ns"]}]}
    bundle = _build(tmp_path, _spec("", deploy, name="nosite", manifests=[{"name": "ns", "path": "ns.yaml"}]),
                    agent_keys, {"ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n"}, set())
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    res = agent.cli("ingest", str(bundle), "--json", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["state"] == "waiting"
    b = agent.bundle("nosite", "1.0.0")
    assert b is not None and b["state"] == "waiting"
    steps = {s["name"]: s for s in b["steps"]}
    assert steps["ingest"]["state"] == steps["publish"]["state"] == "done"
    for n in ("apply:manifests-ns", "apply:prune"):
        assert steps[n]["state"] == "pending" and steps[n]["detail"].startswith("no site: section in the agent config")
    res = agent.cli("plan", str(bundle), check=False)
    assert res.returncode == 2 and "no site: section in the agent config" in res.stderr
    res = agent.cli("apply", "nosite", check=False)
    assert res.returncode == 1 and res.stdout.startswith("waiting: nosite 1.0.0")
    res = run_cli("agent", "apply", "nope", "--config", str(agent.config))
    assert res.returncode == 2 and "no bundle 'nope' on this site (known: nosite 1.0.0)" in res.stderr
