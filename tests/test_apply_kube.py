"""Apply against a real kube-apiserver + etcd (no controller-manager: tests write status like a controller would).

Real fixture CRDs: Gateway API v1.2.1 (CEL rules: server-side apply answers 500 on servers < 1.25 → fallback),
BaizeAI Dataset v0.1.11, MetalLB v0.16.1; real objects of them; Node objects created through the API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.apply.applier import Applier
from hydra_bundle.apply.kube import Kube
from hydra_bundle.apply.plan import ApplyPlan, build_plan
from hydra_bundle.apply.runtime import Runtime
from hydra_bundle.apply.site import SiteConfig
from hydra_bundle.apply.step import ProgressEvent, StepResult
from hydra_bundle.errors import ApplyError, Cancelled, TransientError
from hydra_bundle.k8s.nodes import gpu_nodes
from hydra_bundle.k8s.objects import BundleInfo, mark_ours
from tests.support.applyindex import synthetic_index
from tests.support.kube import KubeAPIServer, RolloutStandIn

pytestmark = pytest.mark.slow

REG = "10.0.0.5:5000"


def make_site(kubeconfig: Path, **kw: Any) -> SiteConfig:
    base: dict[str, Any] = {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": REG,
                            "file_server": "http://10.0.0.5:81", "kubeconfig": str(kubeconfig),
                            "metallb": {"addresses": ["10.64.24.200-10.64.24.220"]}}
    base.update(kw)
    return SiteConfig.model_validate(base)


def plan_for(tmp: Path, site: SiteConfig, manifests: dict[str, str], steps: list[dict[str, Any]], *,
             name: str = "demo", version: str = "1.0.0", prune: bool = True, chart_files: dict[str, Path] | None = None,
             **spec: Any) -> ApplyPlan:
    d = tmp / f"{name}-{version}-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    doc = {"metadata": {"name": name, "version": version, "sequence": 1},
           "deploy": {"prune": prune, "steps": steps}, **spec}
    index, read_blob = synthetic_index(d, doc, manifests, chart_files=chart_files)
    return build_plan(index, site, read_blob, digest="sha256:" + version.replace(".", "").ljust(64, "0"))


def run_all(plan: ApplyPlan, site: SiteConfig, events: list[ProgressEvent] | None = None,
            log: list[str] | None = None) -> dict[str, StepResult]:
    rt = Runtime(site, plan.bundle, log=(log.append if log is not None else None), poll_interval=0.2)
    try:
        return {s.name: s.run(rt, events.append if events is not None else (lambda e: None)) for s in plan.steps}
    finally:
        rt.close()


@pytest.fixture
def kube(kube_apiserver: Any) -> Any:
    k = Kube.from_kubeconfig(kube_apiserver.kubeconfig)
    yield k
    k.close()


def crd_text(fixtures: Path) -> str:
    files = sorted((fixtures / "gateway-api-v1.2.1/standard").glob("*.yaml"))
    files.append(fixtures / "baizeai-dataset-v0.1.11/dataset.baizeai.io_datasets.yaml")
    files += [fixtures / f"metallb-v0.16.1/config/crd/bases/metallb.io_{n}.yaml"
              for n in ("ipaddresspools", "l2advertisements")]
    return "\n---\n".join(f.read_text() for f in files)


# The runbook's Gateway and HTTPRoute, as valid YAML (second listener indented, mode under tls), plus MetalLB.
GATEWAY_OBJECTS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gateway
  namespace: default
spec:
  gatewayClassName: istio
  listeners:
  - allowedRoutes:
      namespaces:
        from: All
    name: default
    port: 80
    protocol: HTTP
  - allowedRoutes:
      namespaces:
        from: All
    hostname: '${site.domain}'
    name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs:
      - group: ""
        kind: Secret
        name: ${site.domain}
      mode: Terminate
---
apiVersion: v1
kind: Namespace
metadata: {name: hydra-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: hydra-agent-knoway
  namespace: hydra-system
spec:
  parentRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: gateway
    namespace: default
  rules:
  - backendRefs:
    - group: ""
      kind: Service
      name: knoway-gateway
      port: 8080
      weight: 1
    filters:
    - responseHeaderModifier:
        add:
        - name: Access-Control-Allow-Headers
          value: '*'
        - name: Access-Control-Allow-Methods
          value: '*'
      type: ResponseHeaderModifier
    matches:
    - path:
        type: PathPrefix
        value: /v1
---
apiVersion: v1
kind: Namespace
metadata: {name: metallb-system}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: hydra, namespace: metallb-system}
spec:
  addresses: ${site.metallb.addresses}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: hydra, namespace: metallb-system}
spec:
  ipAddressPools: [hydra]
"""


@pytest.fixture(scope="module")
def crds_applied(kube_apiserver: Any, fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fixture CRDs, applied once for this module by a `manifests` step (bundle `crds`)."""
    site = make_site(kube_apiserver.kubeconfig)
    plan = plan_for(tmp_path_factory.mktemp("crds"), site, {"crds": crd_text(fixtures_dir)},
                    [{"manifests": ["crds"]}], name="crds", prune=False)
    return run_all(plan, site)


def test_crds_with_cel_rules_install_and_custom_objects_apply_idempotently(
        kube_apiserver: Any, kube: Kube, crds_applied: dict[str, StepResult], tmp_path: Path) -> None:
    res = crds_applied["manifests-crds"]
    assert res.state == "done" and res.summary in ("8 objects: 8 created", "8 objects: 8 unchanged")
    if kube.server_version() < (1, 25):
        gw_note = next(n for n in res.notes if n.startswith("CustomResourceDefinition gateways.gateway.networking"))
        assert "cannot store CEL validation rules" in gw_note and "will NOT enforce 28 rule(s)" in gw_note
        assert any(n.startswith("CustomResourceDefinition datasets.dataset.baizeai.io") and "Value is immutable" in n
                   for n in res.notes)
        assert not any("metallb" in n for n in res.notes)  # no CEL rules there: plain server-side apply
    for name in ("gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
                 "datasets.dataset.baizeai.io", "ipaddresspools.metallb.io"):
        crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        assert crd is not None
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        assert crd["metadata"]["labels"]["hydra-bundle.io/bundle"] == "crds"

    site = make_site(kube_apiserver.kubeconfig)
    plan = plan_for(tmp_path, site, {"gateway": GATEWAY_OBJECTS}, [{"manifests": ["gateway"], "wait": False}],
                    name="gw")
    first = run_all(plan, site)
    assert first["manifests-gateway"].summary == "6 objects: 6 created"
    gw = kube.get("gateway.networking.k8s.io/v1", "Gateway", "gateway", "default")
    assert gw is not None
    https = gw["spec"]["listeners"][1]
    assert https["hostname"] == "cn-sh-a1" and https["tls"]["mode"] == "Terminate"
    assert https["tls"]["certificateRefs"][0]["name"] == "cn-sh-a1"
    md = gw["metadata"]
    assert md["labels"] == {"app.kubernetes.io/managed-by": "hydra-bundle", "hydra-bundle.io/bundle": "gw"}
    assert md["annotations"]["hydra-bundle.io/version"] == "1.0.0"
    assert md["annotations"]["hydra-bundle.io/digest"].startswith("sha256:100")
    assert [(m["manager"], m["operation"]) for m in md["managedFields"]] == [("hydra-bundle", "Apply")]
    pool = kube.get("metallb.io/v1beta1", "IPAddressPool", "hydra", "metallb-system")
    assert pool is not None and pool["spec"]["addresses"] == ["10.64.24.200-10.64.24.220"]
    route = kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", "hydra-agent-knoway", "hydra-system")
    assert route is not None and route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/v1"
    again = run_all(plan, site)
    assert again["manifests-gateway"].summary == "6 objects: 6 unchanged" and again["manifests-gateway"].changes == []
    assert again["prune"].summary == "0 deleted"


def _cronjob_api(kube: Kube) -> str:
    try:
        kube.resource("batch/v1", "CronJob", wait=0)
        return "batch/v1"
    except ApplyError:
        return "batch/v1beta1"  # servers < 1.21


WORKLOADS = """\
apiVersion: v1
kind: Namespace
metadata: {name: images}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm, namespace: images}
spec:
  selector: {matchLabels: {app: vllm}}
  template:
    metadata: {labels: {app: vllm}}
    spec:
      initContainers: [{name: init, image: "ubuntu:24.04"}]
      containers: [{name: vllm, image: "release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu",
                    args: ["--dtype=half", "--max-model-len=8192"]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: sts, namespace: images}
spec:
  serviceName: sts
  selector: {matchLabels: {app: sts}}
  template:
    metadata: {labels: {app: sts}}
    spec: {containers: [{name: c, image: "docker.io/istio/pilot:1.24.2"}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: speaker, namespace: images}
spec:
  selector: {matchLabels: {app: speaker}}
  template:
    metadata: {labels: {app: speaker}}
    spec: {containers: [{name: c, image: "quay.io/metallb/speaker:v0.16.1"}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: job, namespace: images}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: "ghcr.io/baizeai/dataset-data-loader:v0.1.11"}]
---
apiVersion: CRONJOB_API
kind: CronJob
metadata: {name: cron, namespace: images}
spec:
  schedule: "0 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: "ubuntu:22.04"}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod, namespace: images}
spec:
  initContainers: [{name: i, image: "busybox:1.36"}]
  containers: [{name: c, image: "ghcr.io/run-ai/fake-gpu-operator/status-exporter:0.0.63"}]
"""


def test_workload_images_are_rewritten_to_the_site_registry(kube_apiserver: Any, kube: Kube, tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    text = WORKLOADS.replace("CRONJOB_API", _cronjob_api(kube))
    plan = plan_for(tmp_path, site, {"workloads": text}, [{"manifests": ["workloads"], "wait": False}],
                    name="images")
    res = run_all(plan, site)["manifests-workloads"]
    assert res.summary == "7 objects: 7 created"

    def images(kind: str, name: str, api: str, path: list[str]) -> list[str]:
        obj = kube.get(api, kind, name, "images")
        assert obj is not None
        node: Any = obj
        for p in path:
            node = node[p]
        return [c["image"] for lst in ("initContainers", "containers") for c in node.get(lst) or []]

    tmpl = ["spec", "template", "spec"]
    assert images("Deployment", "vllm", "apps/v1", tmpl) == [
        f"{REG}/docker.io/library/ubuntu:24.04", f"{REG}/release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu"]
    assert images("StatefulSet", "sts", "apps/v1", tmpl) == [f"{REG}/docker.io/istio/pilot:1.24.2"]
    assert images("DaemonSet", "speaker", "apps/v1", tmpl) == [f"{REG}/quay.io/metallb/speaker:v0.16.1"]
    assert images("Job", "job", "batch/v1", tmpl) == [f"{REG}/ghcr.io/baizeai/dataset-data-loader:v0.1.11"]
    assert images("CronJob", "cron", _cronjob_api(kube), ["spec", "jobTemplate", "spec", "template", "spec"]) == [
        f"{REG}/docker.io/library/ubuntu:22.04"]
    assert images("Pod", "pod", "v1", ["spec"]) == [
        f"{REG}/docker.io/library/busybox:1.36", f"{REG}/ghcr.io/run-ai/fake-gpu-operator/status-exporter:0.0.63"]


def _patch_status(kube: Kube, path: str, status: dict[str, Any]) -> None:
    kube.dyn.request("patch", path, body={"status": status}, content_type="application/merge-patch+json")


def _when_exists(kube: Kube, api: str, kind: str, name: str, ns: str, then: Callable[[dict[str, Any]], None],
                 delay: float = 0.5) -> threading.Thread:
    """A stand-in controller: once the object exists, wait `delay` and call `then(obj)`."""
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for _ in range(200):
                obj = kube.get(api, kind, name, ns)
                if obj is not None:
                    time.sleep(delay)
                    then(obj)
                    return
                time.sleep(0.1)
        except BaseException as e:  # surfaced by the test through the step timing out
            errors.append(e)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_rollout_wait_follows_status_and_times_out_naming_the_laggard(kube_apiserver: Any, kube: Kube,
                                                                      tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    dep = """\
apiVersion: v1
kind: Namespace
metadata: {name: rollout}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: NAME, namespace: rollout}
spec:
  replicas: 2
  selector: {matchLabels: {app: NAME}}
  template:
    metadata: {labels: {app: NAME}}
    spec: {containers: [{name: c, image: "ubuntu:24.04"}]}
"""
    plan = plan_for(tmp_path, site, {"web": dep.replace("NAME", "web")},
                    [{"manifests": ["web"], "timeout": "30s"}], name="rollout")
    events: list[ProgressEvent] = []
    controller = _when_exists(kube, "apps/v1", "Deployment", "web", "rollout", lambda o: _patch_status(
        kube, "/apis/apps/v1/namespaces/rollout/deployments/web/status",
        {"observedGeneration": o["metadata"]["generation"], "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
         "availableReplicas": 2}), delay=1.0)
    t0 = time.monotonic()
    res = run_all(plan, site, events)["manifests-web"]
    controller.join(5)
    assert res.state == "done" and time.monotonic() - t0 >= 1.0
    msgs = [e.message for e in events]
    assert any("rollout: Deployment rollout/web: 0/2 available" in m for m in msgs), msgs
    assert events[-1].message == "rollout: all ready" and (events[-1].done, events[-1].total) == (1, 1)

    slow = plan_for(tmp_path, site, {"slow": dep.replace("NAME", "slow")}, [{"manifests": ["slow"], "timeout": 2}],
                    name="rollout-slow")
    with pytest.raises(ApplyError, match=r"timed out after 2s waiting for Deployment rollout/slow \(0/2 available"):
        run_all(slow, site)


def test_prune_deletes_only_objects_the_new_version_dropped(kube_apiserver: Any, kube: Kube,
                                                            crds_applied: Any, tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    ns = "prune-" + uuid.uuid4().hex[:6]
    v1 = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}-extra}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: a, namespace: {ns}}}
data: {{k: v1}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: b, namespace: {ns}}}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {{name: pool-b, namespace: {ns}}}
spec: {{addresses: ["10.0.0.0/30"]}}
"""
    bundle = "prune-demo"
    p1 = plan_for(tmp_path, site, {"m": v1}, [{"manifests": ["m"]}], name=bundle, version="1.0.0")
    assert run_all(p1, site)["manifests-m"].summary == "5 objects: 5 created"
    # not ours: unlabelled, and labelled for another bundle
    Applier(kube).apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b-foreign", "namespace": ns}})
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": f"{ns}-extra"}}
    Applier(kube).apply(mark_ours(theirs, BundleInfo("another-bundle", "9")))

    v2 = v1.split("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b")[0]
    v2 = v2.replace("data: {k: v1}", "data: {k: v2}")
    v2 = v2.replace(f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}-extra}}\n", "")
    p2 = plan_for(tmp_path, site, {"m": v2}, [{"manifests": ["m"]}], name=bundle, version="1.0.1")
    res = run_all(p2, site)
    assert res["manifests-m"].summary == "2 objects: 2 configured"  # data, and the version annotation
    pr = res["prune"]
    assert sorted(pr.changes) == [f"deleted ConfigMap {ns}/b", f"deleted IPAddressPool {ns}/pool-b"]
    assert pr.notes == [f"Namespace {ns}-extra is no longer in the bundle but is not deleted automatically (deleting "
                        f"it would delete everything in it, ours or not); delete it by hand if unused"]
    assert kube.get("v1", "ConfigMap", "b", ns) is None
    assert kube.get("metallb.io/v1beta1", "IPAddressPool", "pool-b", ns) is None
    a = kube.get("v1", "ConfigMap", "a", ns)
    assert a is not None and a["data"] == {"k": "v2"} and a["metadata"]["annotations"]["hydra-bundle.io/version"] == \
        "1.0.1"
    assert kube.get("v1", "ConfigMap", "b-foreign", ns) is not None
    assert kube.get("v1", "ConfigMap", "b", f"{ns}-extra") is not None
    assert kube.get("v1", "Namespace", f"{ns}-extra") is not None
    assert run_all(p2, site)["prune"].summary == "0 deleted, 1 left for an operator"


def _node(name: str, *, gpu: int | None = None, control_plane: bool = False,
          labels: dict[str, str] | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                            "spec": {}, "status": {"capacity": {"cpu": "8", "memory": "32Gi"}}}
    if gpu is not None:
        node["status"]["capacity"]["nvidia.com/gpu"] = str(gpu)
        node["status"]["allocatable"] = {"nvidia.com/gpu": str(gpu)}
    if control_plane:
        node["spec"]["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    return node


def test_node_labels_only_without_gpus_and_simulated_gpus_do_not_count(kube_apiserver: Any, kube: Kube,
                                                                        tmp_path: Path) -> None:
    nodes = kube.resource("v1", "Node")
    created: list[str] = []

    def create(n: dict[str, Any]) -> None:
        kube.dyn.create(nodes, body=n)
        created.append(n["metadata"]["name"])

    site = make_site(kube_apiserver.kubeconfig)
    steps = [{"name": "simulate-gpu", "when": "no-gpu",
              "label_nodes": {"labels": {"run.ai/simulated-gpu-node-pool": "default"}}}]
    plan = plan_for(tmp_path, site, {}, steps, name="nodes")
    try:
        create(_node("cp-1", control_plane=True))
        create(_node("worker-1"))
        create(_node("worker-2", gpu=0))
        res = run_all(plan, site)
        assert res["simulate-gpu"].state == "done"
        assert res["simulate-gpu"].changes == ["labelled node worker-1 run.ai/simulated-gpu-node-pool=default",
                                               "labelled node worker-2 run.ai/simulated-gpu-node-pool=default"]
        cp = kube.get("v1", "Node", "cp-1")
        assert cp is not None and "run.ai/simulated-gpu-node-pool" not in cp["metadata"]["labels"]
        w1 = kube.get("v1", "Node", "worker-1")
        assert w1 is not None and "hydra-bundle.io/bundle" not in w1["metadata"]["labels"]  # nodes are not ours
        assert run_all(plan, site)["simulate-gpu"].summary == "2 node(s): 0 labelled, 2 already labelled"
        assert "prune" in run_all(plan, site)  # and prune never touches nodes
        assert kube.get("v1", "Node", "worker-1") is not None

        # chosen nodes from the site values
        chosen = make_site(kube_apiserver.kubeconfig, simulated_gpu_nodes=["cp-1"])
        p_chosen = plan_for(tmp_path, chosen, {}, steps, name="nodes")
        assert run_all(p_chosen, chosen)["simulate-gpu"].changes == [
            "labelled node cp-1 run.ai/simulated-gpu-node-pool=default"]

        # a node with a real GPU: the no-GPU steps are skipped, saying why
        create(_node("gpu-1", gpu=8))
        assert gpu_nodes(kube.nodes()) == ["gpu-1"]
        skipped = run_all(plan, site)["simulate-gpu"]
        assert skipped.state == "skipped"
        assert skipped.summary == "skipped: the cluster has GPUs (gpu-1 advertises nvidia.com/gpu)"
        # fake-gpu-operator's nodes advertise nvidia.com/gpu too, but carry the simulated pool label
        kube.merge_patch_labels("v1", "Node", "gpu-1", {"run.ai/simulated-gpu-node-pool": "default"})
        assert gpu_nodes(kube.nodes()) == []
        assert run_all(plan, site)["simulate-gpu"].state == "done"
    finally:
        for n in created:
            kube.dyn.delete(nodes, name=n)


def test_warmup_creates_the_runbook_dataset_and_waits_for_the_controller(kube_apiserver: Any, kube: Kube,
                                                                        crds_applied: Any, tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    models = [{"name": "qwen3-0.6b", "base_url": "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/c1899de/",
               "files": [{"path": "config.json"}]},
              {"name": "broken-model", "path": "m", "files": [{"path": "x.bin"}]}]
    plan = plan_for(tmp_path, site, {}, [{"warmup": "qwen3-0.6b", "timeout": "30s"}], name="warm", models=models)
    path = "/apis/dataset.baizeai.io/v1alpha1/namespaces/public/datasets/qwen3-0.6b/status"

    def controller(obj: dict[str, Any]) -> None:
        _patch_status(kube, path, {"phase": "PROCESSING", "inProcessingRound": 1})
        time.sleep(0.8)
        _patch_status(kube, path, {"phase": "READY", "lastSucceedRound": 1, "pvcName": "dataset-qwen3-0.6b"})

    t = _when_exists(kube, "dataset.baizeai.io/v1alpha1", "Dataset", "qwen3-0.6b", "public", controller)
    events: list[ProgressEvent] = []
    res = run_all(plan, site, events)
    t.join(5)
    warm = res["warmup-qwen3-0.6b"]
    assert warm.state == "done" and warm.summary.startswith("Dataset public/qwen3-0.6b READY")
    assert warm.outputs["pvc"] == "dataset-qwen3-0.6b"
    msgs = [e.message for e in events]
    assert "Dataset public/qwen3-0.6b: phase PENDING" in msgs
    assert "Dataset public/qwen3-0.6b: phase PROCESSING, syncing round 1/1" in msgs
    ds = kube.get("dataset.baizeai.io/v1alpha1", "Dataset", "qwen3-0.6b", "public")
    assert ds is not None
    assert ds["metadata"]["labels"]["hydra.io/model-id"] == "qwen3-0.6b"
    spec = ds["spec"]
    assert spec["source"] == {"type": "HTTP", "uri": "http://10.0.0.5:81/model/qwen3-0.6b/",
                              "options": {"repoType": "MODEL"}}
    assert spec["mountOptions"] == {"uid": 1000, "gid": 1000, "mode": "0774", "path": "/"}
    assert spec["volumeClaimTemplate"]["spec"]["storageClassName"] == "nfs-csi"
    assert spec["dataSyncRound"] == 1 and spec["share"] is True
    public = kube.get("v1", "Namespace", "public")
    assert public is not None and public["metadata"]["labels"]["hydra-bundle.io/bundle"] == "warm"
    # re-run: nothing to change, READY at once
    again = run_all(plan, site)["warmup-qwen3-0.6b"]
    assert again.state == "done" and again.changes == []

    failing = plan_for(tmp_path, site, {}, [{"warmup": {"model": "broken-model", "storage_class": "local"},
                                             "timeout": "30s"}], name="warm-fail", models=models)
    fpath = "/apis/dataset.baizeai.io/v1alpha1/namespaces/public/datasets/broken-model/status"
    _when_exists(kube, "dataset.baizeai.io/v1alpha1", "Dataset", "broken-model", "public", lambda o: _patch_status(
        kube, fpath, {"phase": "FAILED", "conditions": [{
            "type": "Ready", "status": "False", "reason": "SyncFailed", "lastTransitionTime": "2026-01-01T00:00:00Z",
            "message": "GET http://10.0.0.5:81/model/broken-model/: connection refused"}]}))
    with pytest.raises(ApplyError, match=r"Dataset public/broken-model FAILED \(Ready: GET http://10.0.0.5:81/model/"
                                         r"broken-model/: connection refused\)"):
        run_all(failing, site)


def _release_secrets(kube: Kube, ns: str, name: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.list_raw(f"/api/v1/namespaces/{ns}/secrets",
                                                                f"owner=helm,name={name}"))


def test_charts_install_upgrade_roll_back_and_prune_with_the_helm_library(
        kube_apiserver: Any, kube: Kube, tmp_path: Path, fixtures_dir: Path) -> None:
    """fake-gpu-operator from the content store, in-process: install (with the site registry's pull secret), a
    re-run that changes nothing, an upgrade with the values diff previewed, an upgrade whose workloads never roll
    out (rolled back to the previous revision, the step fails with the reason), and prune uninstalling a chart a
    newer version dropped."""
    site = make_site(kube_apiserver.kubeconfig)
    tgz = fixtures_dir / "charts/fake-gpu-operator-0.0.63.tgz"
    digest = "sha256:" + hashlib.sha256(tgz.read_bytes()).hexdigest()
    ns, rel = "helm-it", "fake-gpu-operator"
    charts = [{"name": "fake-gpu-operator", "ref": "oci://ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator",
               "version": "0.0.63", "namespace": ns}]

    def plan(values: dict[str, Any], timeout: str = "60s", with_chart: bool = True) -> ApplyPlan:
        step: dict[str, Any] = {"chart": {"name": "fake-gpu-operator", "pull_secrets": ["gcr-secret"],
                                          "values": values}, "timeout": timeout}
        other = {"manifests": ["cm"]}
        cm = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: keep, namespace: {ns}}}\ndata: {{k: v}}\n"
        return plan_for(tmp_path, site, {"cm": cm}, [step, other] if with_chart else [other], name="charts",
                        charts=charts if with_chart else [], chart_files={"fake-gpu-operator": tgz})

    def run(p: ApplyPlan) -> dict[str, StepResult]:
        rt = Runtime(site, p.bundle, poll_interval=0.2, blob_file=lambda d: tgz if d == digest else None)
        try:
            return {s.name: s.run(rt) for s in p.steps}
        finally:
            rt.close()

    with RolloutStandIn(kube_apiserver.kubeconfig):
        first = run(plan({"topology": {"nodePoolLabelKey": "a"}}))["chart-fake-gpu-operator"]
        assert first.state == "done" and first.summary.startswith(f"release {ns}/{rel}: installed "
                                                                  "(fake-gpu-operator-0.0.63, revision 1, deployed)")
        assert first.changes[:2] == [f"created Namespace {ns}", f"created Secret {ns}/gcr-secret"]
        assert first.outputs["release"] == f"{ns}/{rel}" and first.outputs["revision"] == 1
        assert _release_secrets(kube, ns, rel) == [f"sh.helm.release.v1.{rel}.v1"]
        record = kube.get("v1", "Secret", f"sh.helm.release.v1.{rel}.v1", ns)
        assert record is not None and record["metadata"]["labels"]["hydra-bundle.io/release-of"] == "charts"
        secret = kube.get("v1", "Secret", "gcr-secret", ns)
        assert secret is not None and json.loads(base64.b64decode(secret["data"][".dockerconfigjson"])) == {
            "auths": {REG: {}}}

        again = run(plan({"topology": {"nodePoolLabelKey": "a"}}))["chart-fake-gpu-operator"]
        assert "unchanged" in again.summary and again.changes == []
        assert _release_secrets(kube, ns, rel) == [f"sh.helm.release.v1.{rel}.v1"]  # no new revision

        changed = plan({"topology": {"nodePoolLabelKey": "b"}})
        rt = Runtime(site, changed.bundle)
        changed.preview(rt)
        rt.close()
        now = changed.now["chart-fake-gpu-operator"].detail
        assert now == "upgrade revision 1 (deployed) → 2; values: ~ topology.nodePoolLabelKey: a → b", now
        assert "now         upgrade revision 1" in changed.text()
        up = run(changed)["chart-fake-gpu-operator"]
        assert "upgraded (fake-gpu-operator-0.0.63, revision 2, deployed)" in up.summary

    # no controller any more: the next upgrade's workloads never roll out → rolled back, the step fails
    with pytest.raises(ApplyError) as e:
        run(plan({"topology": {"nodePoolLabelKey": "c"}}, timeout="4s"))
    assert "timed out after 4s waiting for" in str(e.value)
    assert f"release {ns}/{rel} rolled back to revision 2" in str(e.value)
    helm = Runtime(site, BundleInfo("charts", "1")).helm()
    assert helm.user_values(rel, ns) == {"topology": {"nodePoolLabelKey": "b"}}
    assert helm.status(rel, ns).status == "deployed"  # type: ignore[union-attr]

    # a newer version without the chart: prune uninstalls the release (and keeps the namespace, reported)
    pruned = run(plan({}, with_chart=False))["prune"]
    assert f"uninstalled release {ns}/{rel} (fake-gpu-operator-0.0.63)" in pruned.changes
    assert _release_secrets(kube, ns, rel) == []
    assert kube.get("v1", "Secret", "gcr-secret", ns) is None


def test_api_server_down_at_start_is_retried_until_it_comes_up(kube_binaries: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    srv = KubeAPIServer(*kube_binaries, start=False)
    try:
        site = make_site(srv.kubeconfig)
        text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n"
        plan = plan_for(tmp_path, site, {"late": text}, [{"manifests": ["late"], "timeout": "90s"}], name="late",
                        prune=False)
        log: list[str] = []
        out: dict[str, Any] = {}
        t = threading.Thread(target=lambda: out.update(run_all(plan, site, log=log)), daemon=True)
        t.start()
        time.sleep(2.0)
        assert t.is_alive() and any("retrying" in m for m in log), log
        srv.start()
        t.join(60)
        assert out["manifests-late"].summary == "1 objects: 1 created"
    finally:
        srv.stop()

    never = KubeAPIServer(*kube_binaries, start=False)
    try:
        site = make_site(never.kubeconfig)
        plan = plan_for(tmp_path, site, {"late": text}, [{"manifests": ["late"], "timeout": "2s"}], name="late2",
                        prune=False)
        t0 = time.monotonic()
        with pytest.raises(TransientError, match=r"kubernetes API: .*not reachable after"):
            run_all(plan, site)
        assert time.monotonic() - t0 < 15
    finally:
        never.stop()


def test_interrupted_apply_converges_on_rerun(kube_apiserver: Any, kube: Kube, tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    docs = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: crash}\n"] + [
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}, namespace: crash}}\ndata: {{i: '{i}'}}\n"
        for i in range(6)]
    plan = plan_for(tmp_path, site, {"m": "---\n".join(docs)}, [{"manifests": ["m"]}], name="crash")

    class Crash(Exception):
        pass

    def crash_after_three(e: ProgressEvent) -> None:
        if e.message.startswith("created") and e.done == 3:
            raise Crash()

    rt = Runtime(site, plan.bundle)
    with pytest.raises(Crash):
        plan.steps[0].run(rt, crash_after_three)
    rt.close()
    assert kube.get("v1", "ConfigMap", "cm-1", "crash") is not None
    assert kube.get("v1", "ConfigMap", "cm-2", "crash") is None
    res = run_all(plan, site)
    assert res["manifests-m"].summary == "7 objects: 4 created, 3 unchanged"
    assert all(kube.get("v1", "ConfigMap", f"cm-{i}", "crash") is not None for i in range(6))
    assert yaml.safe_dump(res["manifests-m"].json())  # serialisable for the journal


def test_cancel_stops_a_waiting_step_promptly(kube_apiserver: Any, tmp_path: Path) -> None:
    site = make_site(kube_apiserver.kubeconfig)
    dep = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: never, namespace: default}\nspec:\n"
           "  selector: {matchLabels: {app: never}}\n  template:\n    metadata: {labels: {app: never}}\n"
           "    spec: {containers: [{name: c, image: ubuntu}]}\n")
    plan = plan_for(tmp_path, site, {"never": dep}, [{"manifests": ["never"], "timeout": "5m"}], name="cancel")
    rt = Runtime(site, plan.bundle, poll_interval=0.2)
    threading.Timer(1.0, rt.cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        plan.steps[0].run(rt)
    assert time.monotonic() - t0 < 10
    rt.close()


def test_crd_create_replace_fallback_keeps_our_labels(kube_apiserver: Any, kube: Kube, fixtures_dir: Path) -> None:
    """The last-resort path for CRDs the server refuses under server-side apply even after stripping."""
    crd = yaml.safe_load((fixtures_dir / "gateway-api-v1.2.1/standard/gateway.networking.k8s.io_gatewayclasses.yaml")
                         .read_text())
    crd["metadata"]["name"] = "fallbacks.example.hydra.io"
    crd["spec"]["group"] = "example.hydra.io"
    crd["spec"]["names"].update(plural="fallbacks", singular="fallback", kind="Fallback", listKind="FallbackList")
    crd["spec"]["names"].pop("shortNames", None)
    crd.pop("status", None)
    created = kube.create_or_replace(mark_ours(crd, BundleInfo("fallback", "1")))
    replaced = kube.create_or_replace(mark_ours(crd, BundleInfo("fallback", "2")))
    assert created["metadata"]["labels"]["hydra-bundle.io/bundle"] == "fallback"
    assert replaced["metadata"]["annotations"]["hydra-bundle.io/version"] == "2"
    assert any(m["manager"] == "hydra-bundle" for m in replaced["metadata"]["managedFields"])


def test_wait_for_reports_the_load_balancer_address(kube_apiserver: Any, kube: Kube, tmp_path: Path) -> None:
    """What the operator needs for the runbook's `/etc/hosts` line once MetalLB assigns the gateway an address."""
    site = make_site(kube_apiserver.kubeconfig)
    svc = ("apiVersion: v1\nkind: Service\nmetadata: {name: gateway-istio, namespace: default}\n"
           "spec: {type: LoadBalancer, selector: {app: gw}, ports: [{name: http, port: 80}]}\n")
    plan = plan_for(tmp_path, site, {"svc": svc}, [
        {"manifests": ["svc"]},
        {"wait_for": [{"kind": "Service", "namespace": "default", "name": "gateway-istio"}], "timeout": "20s"}],
        name="lb")
    _when_exists(kube, "v1", "Service", "gateway-istio", "default", lambda o: _patch_status(
        kube, "/api/v1/namespaces/default/services/gateway-istio/status",
        {"loadBalancer": {"ingress": [{"ip": "10.64.24.211"}]}}), delay=1.0)
    res = run_all(plan, site)["wait-for"]
    assert res.summary == "1 ready; Service default/gateway-istio: 10.64.24.211"
    assert res.outputs == {"Service default/gateway-istio": {"addresses": ["10.64.24.211"]}}


def test_ports_without_protocol_apply(kube_apiserver: Any, kube: Kube, tmp_path: Path) -> None:
    """Old servers refuse SSA of Service/container ports that omit `protocol` (part of the list's merge key)."""
    site = make_site(kube_apiserver.kubeconfig)
    text = ("apiVersion: v1\nkind: Service\nmetadata: {name: ports, namespace: default}\n"
            "spec: {selector: {app: p}, ports: [{name: http, port: 80}]}\n---\n"
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ports, namespace: default}\nspec:\n"
            "  selector: {matchLabels: {app: p}}\n  template:\n    metadata: {labels: {app: p}}\n"
            "    spec: {containers: [{name: c, image: ubuntu, ports: [{containerPort: 8080}]}]}\n")
    plan = plan_for(tmp_path, site, {"ports": text}, [{"manifests": ["ports"], "wait": False}], name="ports")
    assert run_all(plan, site)["manifests-ports"].summary == "2 objects: 2 created"
    assert run_all(plan, site)["manifests-ports"].summary == "2 objects: 2 unchanged"
