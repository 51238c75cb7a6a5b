"""A bundle name over its life on a site: install v1 → upgrade v2 → rollback to v1 under a one-time permit →
forward to v2 → a downgrade without a permit is refused → plan --remove → remove → remove --purge. Real
`hydra-bundle agent` commands against a real kube-apiserver + etcd (own instance) and a real MariaDB; charts
through the in-process Helm library. One-shot commands only (no daemon) to keep the number of runs small."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.agent.lock import PipelineLock
from hydra_bundle.agent.published import Published
from hydra_bundle.agent.schema import open_database
from hydra_bundle.apply.kube import Kube
from hydra_bundle.k8s.objects import bundle_selector
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, build_bundle
from tests.support.agent_fixtures import Keys, Site
from tests.support.kube import KubeAPIServer

agent_keys, agent_site, agent_bundles = (agent_fixtures.agent_keys, agent_fixtures.agent_site,
                                       agent_fixtures.agent_bundles)  # fixtures

pytestmark = pytest.mark.slow

DB = "lc_db"
PASSWORD = "lc pw"
VENDOR_TABLE = ("CREATE TABLE IF NOT EXISTS vendor (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL) "
                "CHARACTER SET utf8mb4")
NAME = "lc"
DATASET_API = "dataset.baizeai.io/v1alpha1"
DATASET_CRD = "datasets.dataset.baizeai.io"

APP = """\
apiVersion: v1
kind: Namespace
metadata: {name: lc-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: common, namespace: lc-system}
data: {version: "VERSION"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: only-vVERSION, namespace: lc-system}
data: {image: "IMAGE"}
"""


@pytest.fixture(scope="module")
def own_kube(kube_binaries: tuple[Path, Path]) -> Iterator[KubeAPIServer]:
    with KubeAPIServer(*kube_binaries) as srv:
        yield srv


def _bundle(tmp: Path, keys: Keys, fixtures: Path, host: str, version: int) -> Path:
    src = tmp / f"src{version}"
    (src / "model").mkdir(parents=True, exist_ok=True)
    (src / "model/config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}\n')
    (src / "crds.yaml").write_text((fixtures / "baizeai-dataset-v0.1.11/dataset.baizeai.io_datasets.yaml").read_text())
    image = f"{host}/agent/app:{version}.0"
    (src / "app.yaml").write_text(APP.replace("VERSION", str(version)).replace("IMAGE", image))
    deploy = {"timeout": "60s", "steps": [
        {"manifests": ["crds"]},
        {"manifests": ["app"], "wait": False},
        {"label_nodes": {"labels": {"lc.example/role": "worker"}, "nodes": ["lc-node"]}},
        {"chart": {"name": "demo", "values": {"replicaCount": version}}},
        {"sql": {"tables": [{"table": "vendor", "key": ["name"], "rows": [{"name": "lc"}]}]}},
        {"warmup": "tiny", "wait": False},
    ]}
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": NAME, "version": f"{version}.0.0", "sequence": version},
            "platforms": ["linux/amd64"], "images": [{"ref": image}],
            "charts": [{"name": "demo", "version": "0.1.0", "ref": f"oci://{host}/agent/charts/demo",
                        "namespace": "lc-charts"}],
            "manifests": [{"name": "crds", "path": "crds.yaml"}, {"name": "app", "path": "app.yaml"}],
            "models": [{"name": "tiny", "path": "model", "files": [{"path": "config.json"}]}],
            "deploy": deploy}
    out = tmp / f"lc-{version}.tar"
    build_bundle(src, spec, keys.release_key, out, {host}, cache=tmp / "cache")
    return out


def _json(agent: AgentProc, *args: str, rc: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    saved = agent.env
    agent.env = {**saved, **(env or {})}
    try:
        res = agent.cli(*args, "--json", check=False)
    finally:
        agent.env = saved
    assert res.returncode == rc, f"{args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _states(agent: AgentProc) -> dict[str, str]:
    return {b["version"]: b["state"] for b in agent.status() if b["name"] == NAME}


def _labelled(kube: Kube) -> set[str]:
    return {f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}".replace(" /", " ")
            for o in kube.list_labelled(bundle_selector(NAME), with_namespaces_and_crds=True)}


def _cm(kube: Kube, name: str, ns: str = "lc-system") -> dict[str, Any] | None:
    return kube.get("v1", "ConfigMap", name, ns)


def _served(agent: AgentProc) -> list[str]:
    db = open_database(agent.state / "journal.db", readonly=True)
    try:
        ids = [b["digest"] for b in agent.status() if b["name"] == NAME]
        refs, paths = Published(db).served_by(ids)
        return refs + paths
    finally:
        db.close()


def test_install_upgrade_rollback_remove_purge(
        tmp_path: Path, own_kube: KubeAPIServer, mariadb_server: Any, fixtures_dir: Path, agent_keys: Keys,
        agent_site: Site) -> None:
    kube = Kube.from_kubeconfig(own_kube.kubeconfig)
    kube.dyn.create(kube.resource("v1", "Node"), body={"apiVersion": "v1", "kind": "Node",
                                                       "metadata": {"name": "lc-node"}})
    kube.dyn.create(kube.resource("storage.k8s.io/v1", "StorageClass"), body={
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "nfs-csi"},
        "provisioner": "nfs.csi.k8s.io"})
    mariadb_server.create_user("lc", PASSWORD, DB)
    mariadb_server.execute(VENDOR_TABLE, database=DB)
    pw = tmp_path / "mysql.password"
    pw.write_text(PASSWORD + "\n")
    host = agent_site.registry.host
    v1, v2 = (_bundle(tmp_path, agent_keys, fixtures_dir, host, v) for v in (1, 2))
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    agent.env = {"SUDO_USER": "", "USER": "tester"}  # the operator history names (changes.operator)
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["site"] = {"cluster_name": "lc", "domain": "lc.example", "registry": agent.registry,
                   "file_server": agent.files_url, "kubeconfig": str(own_kube.kubeconfig),
                   "mysql": {"dsn": f"mysql://lc@127.0.0.1:{mariadb_server.port}/{DB}", "password_file": str(pw)}}
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    app_repo = agent_site.served("agent/app")
    try:
        # ---- install v1, upgrade to v2 (the daemon's pipeline, one-shot)
        assert _json(agent, "ingest", str(v1), env={"USER": "installer"})["state"] == "complete"
        assert _cm(kube, "only-v1") is not None and _cm(kube, "demo-cm", "lc-charts")["data"] == {"replicas": "1"}
        assert _json(agent, "ingest", str(v2), env={"USER": "upgrader"})["state"] == "complete"
        assert _cm(kube, "only-v1") is None and _cm(kube, "only-v2") is not None  # pruned by v2
        assert _cm(kube, "demo-cm", "lc-charts")["data"] == {"replicas": "2"}
        assert {f"{app_repo}:1.0", f"{app_repo}:2.0"} <= set(_served(agent))  # an upgrade keeps v1 served

        # ---- typed errors
        for args, rc, msg in [
                (("rollback", NAME, "--to", "9.9.9"), 2, "lc 9.9.9 is not retained on this site (retained: 1.0.0, "
                                                         "2.0.0)"),
                (("rollback", NAME, "--to", "2.0.0"), 2, "lc 2.0.0 is what the site runs now"),
                (("remove", "nope"), 2, "no bundle 'nope' on this site (known: lc)"),
                (("plan", "--remove", "nope"), 2, "no bundle 'nope' on this site")]:
            res = agent.cli(*args, check=False)
            assert res.returncode == rc and msg in res.stderr, (args, res.returncode, res.stderr)
        with PipelineLock(agent.state).held():  # another run holds the pipeline
            res = agent.cli("remove", NAME, check=False)
            assert res.returncode == 1 and "another run holds" in res.stderr, res.stderr
            res = agent.cli("rollback", NAME, "--to", "1.0.0", check=False)
            assert res.returncode == 1 and "another run holds" in res.stderr, res.stderr
        assert _states(agent) == {"1.0.0": "complete", "2.0.0": "complete"}

        # ---- plan the rollback first: nothing changes
        plan = _json(agent, "plan", NAME, "--to", "1.0.0")
        assert plan["bundle"]["version"] == "1.0.0" and plan["rollback"]["from"]["version"] == "2.0.0"
        assert plan["rollback"]["downgradePermit"] == "granted for this run"
        assert "apply:chart-demo" in plan["rollback"]["rerun"] and "publish" in plan["rollback"]["rerun"]
        assert "downgrade permit" in agent.cli("plan", NAME, "--to", "1.0.0").stdout
        assert _cm(kube, "only-v2") is not None and _cm(kube, "only-v1") is None

        # ---- rollback to v1 without allow_downgrade: a one-time permit, used up by the run
        assert "allow_downgrade" not in cfg
        res = _json(agent, "rollback", NAME, "--to", "1.0.0", env={"SUDO_USER": "alice"})
        assert res["state"] == "complete", res
        assert _cm(kube, "only-v1") is not None and _cm(kube, "only-v2") is None  # v1's prune deleted v2's
        assert _cm(kube, "common")["data"] == {"version": "1"}
        assert _cm(kube, "demo-cm", "lc-charts")["data"] == {"replicas": "1"}
        assert f"{app_repo}:1.0" in _served(agent) and f"{app_repo}:2.0" not in _served(agent)
        assert _states(agent) == {"1.0.0": "complete", "2.0.0": "rolled-back"}
        assert _json(agent, "plan", NAME, "--offline")["bundle"]["version"] == "1.0.0"  # by name: what runs now
        hist = _json(agent, "history")
        moves = [(c["action"], c["from"], c["to"], c["operator"]) for c in hist["changes"]]
        assert moves == [("install", None, "1.0.0", "installer"), ("upgrade", "1.0.0", "2.0.0", "upgrader"),
                         ("rollback", "2.0.0", "1.0.0", "alice")]
        events = [e["event"] for e in hist["events"]]
        assert events.index("downgrade-permit") < events.index("downgrade-permit-used")
        assert "rollback 2.0.0 → 1.0.0 by alice" in agent.cli("history").stdout.replace("  ", " ")

        # ---- forward again (no permit needed); then a downgrade without a new permit is refused
        res = _json(agent, "rollback", NAME, "--to", "2.0.0")
        assert res["state"] == "complete" and res["rollback"]["downgradePermit"] == "not needed"
        assert _cm(kube, "only-v2") is not None and _cm(kube, "only-v1") is None
        res = _json(agent, "ingest", str(v1), rc=1)
        assert res["state"] == "quarantined" and res["reason"] == "downgrade", res
        assert _cm(kube, "only-v2") is not None and _states(agent)["2.0.0"] == "complete"

        # ---- plan --remove lists every action and changes nothing
        before = _labelled(kube)
        assert {"ConfigMap lc-system/only-v2", "Dataset public/tiny", "Namespace lc-system",
                f"CustomResourceDefinition {DATASET_CRD}"} <= before
        plan = _json(agent, "plan", "--remove", NAME)
        steps = {s["journalStep"]: [f"{a['op']} {a['target']}" for a in s["actions"]] for s in plan["steps"]}
        assert list(steps) == ["remove:releases", "remove:objects", "remove:node-labels", "remove:unpublish"]
        assert steps["remove:releases"] == ["helm release lc-charts/demo"]
        assert {"delete ConfigMap lc-system/only-v2", "delete ConfigMap lc-system/common",
                "delete Dataset public/tiny"} <= set(steps["remove:objects"])
        assert not any("Namespace" in a or "CustomResourceDefinition" in a for a in steps["remove:objects"])
        assert steps["remove:node-labels"] == ["unlabel Node lc-node"]
        assert f"unpublish {app_repo}:2.0" in steps["remove:unpublish"] and "unpublish /model/tiny/" in \
            steps["remove:unpublish"]
        kept = " | ".join(plan["kept"])
        assert f"CustomResourceDefinition {DATASET_CRD} stays" in kept and "Namespace lc-system stays" in kept
        assert f"row {DB}.vendor name='lc' stays" in kept
        purge = _json(agent, "plan", "--remove", NAME, "--purge")
        assert [s["journalStep"] for s in purge["steps"]] == [
            "remove:releases", "remove:objects", "remove:node-labels", "remove:sql", "remove:crds",
            "remove:namespaces", "remove:unpublish"]
        assert "remove NAME" in agent.cli("plan", "--remove", NAME).stdout
        assert _labelled(kube) == before and _cm(kube, "demo-cm", "lc-charts") is not None
        assert _states(agent)["2.0.0"] == "complete"

        # ---- remove: releases, labelled objects, Datasets, node labels, references gone; CRDs, namespaces, rows stay
        res = _json(agent, "remove", NAME, env={"USER": "bob"})
        assert res["removed"] is True and res["state"] == "complete", res
        assert {s["name"]: s["state"] for s in res["steps"]} == {
            "remove:releases": "done", "remove:objects": "done", "remove:node-labels": "done",
            "remove:unpublish": "done"}
        left = _labelled(kube)
        assert left == {"Namespace lc-system", "Namespace public", f"CustomResourceDefinition {DATASET_CRD}"}, left
        assert kube.list_raw("/api/v1/secrets", "owner=helm") == []  # no Helm release record at all
        assert _cm(kube, "demo-cm", "lc-charts") is None
        assert "lc.example/role" not in (kube.get("v1", "Node", "lc-node") or {})["metadata"].get("labels", {})
        assert mariadb_server.execute("SELECT name FROM vendor", database=DB) == [("lc",)]
        assert _served(agent) == []
        index = json.loads((agent.state / "store/index.json").read_text())
        assert not [m for m in index["manifests"] if app_repo in str(m)]
        assert _states(agent) == {"1.0.0": "quarantined", "2.0.0": "removed"}
        shown = {s["name"]: s["state"] for s in agent.bundle(NAME, "2.0.0")["steps"]}
        assert shown["remove:objects"] == "done" and shown["apply:chart-demo"] == "done"  # status shows both
        hist = _json(agent, "history")
        assert hist["changes"][-1] | {"at": None} == {
            "at": None, "name": NAME, "action": "remove", "from": "2.0.0", "to": None,
            "fromBundle": agent.bundle(NAME, "2.0.0")["digest"], "toBundle": None, "operator": "bob",
            "detail": None}
        res = _json(agent, "remove", NAME)
        assert res["state"] == "duplicate" and res["removed"] is True  # nothing left to do

        # ---- --purge: also the CRDs, the namespaces and the rows
        res = _json(agent, "remove", NAME, "--purge")
        assert res["state"] == "complete" and {s["name"] for s in res["steps"]} >= {
            "remove:sql", "remove:crds", "remove:namespaces"}, res
        assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", DATASET_CRD) is None
        for ns in ("lc-system", "public"):  # no namespace controller here: deleted means terminating
            live = kube.get("v1", "Namespace", ns)
            assert live is None or live["metadata"].get("deletionTimestamp"), live
        assert mariadb_server.execute("SELECT name FROM vendor", database=DB) == []
        assert kube.get("v1", "Namespace", "default") is not None
    finally:
        kube.close()


OCI_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def test_the_running_agent_stops_serving_what_rollback_and_remove_take_away(
        tmp_path: Path, agent_keys: Keys, agent_site: Site, agent_bundles: dict[str, Any]) -> None:
    """No site (no deploy steps): rollback and remove are about what the registry and file server serve. The
    daemon runs meanwhile (the commands share the site with it); a removed bundle dropped again installs again."""
    import httpx

    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    agent.env = {"SUDO_USER": "", "USER": "tester"}
    app = agent_site.served("agent/app")

    def served(tag: str) -> int:
        return httpx.get(f"http://{agent.registry}/v2/{app}/manifests/{tag}", headers={"Accept": OCI_ACCEPT},
                         timeout=10).status_code

    def file(path: str) -> int:
        return httpx.get(f"{agent.files_url}/{path}", timeout=10).status_code

    with agent.start():
        agent.drop_file(agent_bundles["demo1"].path)
        agent.wait_state("demo", "1.0.0", "complete")
        agent.drop_file(agent_bundles["demo2"].path)
        agent.wait_state("demo", "2.0.0", "complete")
        assert (served("1.0"), served("2.0"), file("files/tool/tool.bin")) == (200, 200, 200)

        res = agent.cli("rollback", "demo", "--to", "1.0.0", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.startswith("rollback demo: 2.0.0 (sequence 2) → 1.0.0 (sequence 1); a one-time "
                                     "downgrade permit"), res.stdout
        assert "complete: demo 1.0.0" in res.stdout
        assert (served("1.0"), served("2.0")) == (200, 404)  # what only 2.0.0 had is no longer served
        assert file("model/tiny/config.json") == 200

        plan = agent.cli("plan", "--remove", "demo").stdout
        assert "remove:unpublish" in plan and f"unpublish   {app}:1.0" in plan and "remove:objects" not in plan
        res = agent.cli("remove", "demo", check=False)
        assert res.returncode == 0 and res.stdout.startswith("complete: demo removed"), res.stdout + res.stderr
        assert "remove:unpublish" in res.stdout
        assert (served("1.0"), served("2.0"), file("files/tool/tool.bin"), file("model/tiny/config.json")) == (
            404, 404, 404, 404)
        assert {b["version"]: b["state"] for b in agent.status()} == {"1.0.0": "removed", "2.0.0": "removed"}
        res = agent.cli("rollback", "demo", "--to", "9.0.0", check=False)
        assert res.returncode == 2 and "demo 9.0.0 is not retained" in res.stderr

        agent.drop_file(agent_bundles["demo2"].path, "demo2-again.tar")  # installs again after a remove
        agent.wait_state("demo", "2.0.0", "complete")
        assert served("2.0") == 200
        moves = [(c["action"], c["from"], c["to"]) for c in json.loads(agent.cli("history", "--json").stdout)[
            "changes"]]
        assert moves == [("install", None, "1.0.0"), ("upgrade", "1.0.0", "2.0.0"), ("rollback", "2.0.0", "1.0.0"),
                         ("remove", "1.0.0", None), ("install", None, "2.0.0")]


def test_a_remove_that_cannot_finish_waits_and_resumes_where_it_stopped(
        tmp_path: Path, own_kube: KubeAPIServer, agent_keys: Keys) -> None:
    """Without `site:` the cluster steps of a remove wait (the bundle is `removing`, nothing retries it behind the
    operator's back, `agent apply` refuses it); run again once the site is configured, only what is unfinished
    runs."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ns.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rs, namespace: default}\n")
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "rs", "version": "1.0.0", "sequence": 1}, "platforms": ["linux/amd64"],
            "manifests": [{"name": "ns", "path": "ns.yaml"}], "deploy": {"steps": [{"manifests": ["ns"]}]}}
    bundle = tmp_path / "rs.tar"
    build_bundle(src, spec, agent_keys.release_key, bundle, set(), cache=tmp_path / "cache")
    agent = AgentProc(tmp_path / "agent", [agent_keys.release_pub])
    assert _json(agent, "ingest", str(bundle), rc=1)["state"] == "waiting"  # no site: the apply steps wait

    res = _json(agent, "remove", "rs", rc=1)
    steps = {s["name"]: s for s in res["steps"]}
    assert res["state"] == "waiting" and steps["remove:objects"]["state"] == "pending"
    assert steps["remove:objects"]["detail"].startswith("no site: section in the agent config")
    assert steps["remove:unpublish"]["state"] == "done"  # a pending step does not hold back the others
    b = agent.bundle("rs", "1.0.0")
    assert b is not None and b["state"] == "removing"
    assert {s["name"]: s["state"] for s in b["steps"]}["apply:manifests-ns"] == "skipped"  # never applied now
    res = agent.cli("apply", "rs", check=False)
    assert res.returncode == 1 and "removed (or being removed)" in res.stdout, res.stdout

    cfg = yaml.safe_load(agent.config.read_text())
    cfg["site"] = {"cluster_name": "rs", "domain": "rs.example", "registry": agent.registry,
                   "file_server": agent.files_url, "kubeconfig": str(own_kube.kubeconfig)}
    agent.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = _json(agent, "remove", "rs")
    steps = {s["name"]: s for s in res["steps"]}
    assert res["state"] == "complete" and steps["remove:objects"]["detail"] == "nothing left to delete"
    assert steps["remove:objects"]["attempts"] == 2 and steps["remove:unpublish"]["attempts"] == 1
    assert agent.bundle("rs", "1.0.0")["state"] == "removed"
