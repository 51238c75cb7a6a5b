"""Optional parts and site values through a real `agent run` against a real kube-apiserver: a site values file
changes what the chart installs, an optional step the site does not enable is journaled skipped with the choice,
enabling it (`agent apply`) installs it, and turning it off again uninstalls it (prune)."""

from __future__ import annotations

import hashlib
import json
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

NAME, NS = "optional-parts", "optional-parts"


def _steps(agent: AgentProc) -> dict[str, dict[str, Any]]:
    b = agent.bundle(NAME, "1.0.0")
    return {s["name"]: s for s in (b or {}).get("steps", [])}


def _set_site(agent: AgentProc, site: dict[str, Any]) -> None:
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["site"] = site
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_site_values_and_an_optional_step_end_to_end(tmp_path: Path, kube_apiserver: KubeAPIServer,
                                                      agent_keys: Keys, agent_site: Site) -> None:
    host = agent_site.registry.host
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": NAME, "version": "1.0.0", "sequence": 1}, "platforms": ["linux/amd64"],
            "charts": [{"name": "demo", "version": "0.1.0", "namespace": NS, "ref": f"oci://{host}/agent/charts/demo"}],
            "deploy": {"timeout": "60s", "steps": [
                {"chart": {"name": "demo", "values": {"replicaCount": 2}}},
                {"name": "extra", "optional": True, "feature": "extras",
                 "chart": {"name": "demo", "release": "extra", "values": {"replicaCount": 1}}}]}}
    src = tmp_path / "src"
    src.mkdir()
    bundle = tmp_path / f"{NAME}.tar"
    build_bundle(src, spec, agent_keys.release_key, bundle, {host}, cache=tmp_path / "cache")
    values = tmp_path / "site-values" / "demo.yaml"
    values.parent.mkdir()
    values.write_text("replicaCount: 3\n")
    sha = "sha256:" + hashlib.sha256(values.read_bytes()).hexdigest()
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    site = {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": agent.registry,
            "file_server": agent.files_url, "kubeconfig": str(kube_apiserver.kubeconfig),
            "values": {"demo": str(values)}}
    _set_site(agent, site)

    plan = json.loads(agent.cli("plan", str(bundle), "--json").stdout)
    by = {s["name"]: s for s in plan["steps"]}
    assert "install demo 0.1.0" in by["chart-demo"]["now"]["detail"] and "now" not in by["extra"]
    assert by["chart-demo"]["values"] == {"replicaCount": 3}
    assert by["chart-demo"]["choices"]["valuesFiles"] == [{"key": "demo", "path": str(values), "sha256": sha}]
    assert by["extra"]["skipped"].startswith("optional, not enabled on this site")
    text = agent.cli("plan", str(bundle), "--offline").stdout
    assert "values      replicaCount: 3" in text and f"site values {values} ({sha})" in text

    kube = Kube.from_kubeconfig(kube_apiserver.kubeconfig)
    try:
        with agent.start():
            agent.drop_file(bundle)
            agent.wait_state(NAME, "1.0.0", "complete", timeout=120)
            steps = _steps(agent)
            assert steps["apply:chart-demo"]["result"]["choices"]["valuesFiles"][0]["sha256"] == sha
            extra = steps["apply:extra"]
            assert extra["state"] == "skipped"
            assert extra["detail"] == ("skipped: optional, not enabled on this site (site.enable does not name "
                                       "'extras' or 'extra')")
            assert extra["result"]["choices"] == {"optional": {"enabled": False, "feature": "extras"}}
            cm = kube.get("v1", "ConfigMap", "demo-cm", NS)
            assert cm is not None and cm["data"] == {"replicas": "3"}        # the site's values won
            assert kube.get("v1", "ConfigMap", "extra-cm", NS) is None

            _set_site(agent, {**site, "enable": ["extras"]})
            res = agent.cli("apply", NAME, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            extra = _steps(agent)["apply:extra"]
            assert extra["state"] == "done" and extra["result"]["choices"]["optional"] == {
                "enabled": True, "by": "extras", "feature": "extras"}
            cm = kube.get("v1", "ConfigMap", "extra-cm", NS)
            assert cm is not None and cm["data"] == {"replicas": "1"}

            _set_site(agent, site)          # turned off again: prune uninstalls what it installed
            res = agent.cli("apply", NAME, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            prune = _steps(agent)["apply:prune"]
            assert f"uninstalled release {NS}/extra (demo-0.1.0)" in prune["result"]["changes"]
            assert kube.get("v1", "ConfigMap", "extra-cm", NS) is None
            assert kube.get("v1", "ConfigMap", "demo-cm", NS) is not None
    finally:
        kube.close()


def test_a_when_expression_naming_gpu_is_decided_with_the_clusters_nodes(tmp_path: Path,
                                                                         kube_apiserver: KubeAPIServer) -> None:
    """What the site decides is decided by the plan; ``gpu`` when the step runs, from the real Node objects."""
    from hydra_bundle.apply.plan import build_plan
    from hydra_bundle.apply.runtime import Runtime
    from hydra_bundle.apply.site import SiteConfig
    from tests.support.applyindex import synthetic_index

    site = SiteConfig.model_validate({"cluster_name": "c", "domain": "cn-sh-a1", "registry": "10.0.0.5:5000",
                                      "file_server": "http://10.0.0.5:81", "vars": {"pool": "sim"},
                                      "kubeconfig": str(kube_apiserver.kubeconfig)})
    when = "site.vars.pool == 'sim' and not gpu"
    index, read_blob = synthetic_index(tmp_path, {"metadata": {"name": "opt-gpu", "version": "1.0.0", "sequence": 1},
                                                  "deploy": {"prune": False, "steps": [
        {"name": "simulate", "when": when, "label_nodes": {"labels": {"opt/pool": "sim"}, "nodes": ["opt-w1"]}}]}})
    kube = Kube.from_kubeconfig(kube_apiserver.kubeconfig)
    nodes = kube.resource("v1", "Node")
    created: list[str] = []

    def node(name: str, gpu: int | None) -> None:
        status: dict[str, Any] = {"capacity": {"cpu": "8", "memory": "32Gi"}}
        if gpu is not None:
            status["capacity"]["nvidia.com/gpu"] = str(gpu)
            status["allocatable"] = {"nvidia.com/gpu": str(gpu)}
        kube.dyn.create(nodes, body={"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {},
                                     "status": status})
        created.append(name)

    def run() -> Any:
        plan = build_plan(index, site, read_blob)
        step = plan.steps[0]
        assert step.off is None and f"[only if {when}]" in plan.text()     # the plan cannot tell
        rt = Runtime(site, plan.bundle)
        try:
            return step.run(rt), step.choices["when"]
        finally:
            rt.close()

    try:
        node("opt-w1", None)
        res, choice = run()
        assert res.state == "done" and res.changes == ["labelled node opt-w1 opt/pool=sim"]
        assert choice == {"expression": when, "site": {"site.vars.pool": "sim"}, "value": True, "gpu": False}
        node("opt-gpu-1", 4)
        res, choice = run()
        assert (res.state, res.summary) == ("skipped", f'skipped: when: {when} is false here '
                                                       f'(site.vars.pool="sim", gpu=true)')
        assert choice == {"expression": when, "site": {"site.vars.pool": "sim"}, "value": False, "gpu": True}
    finally:
        for n in created:
            kube.dyn.delete(nodes, name=n)
        kube.close()
