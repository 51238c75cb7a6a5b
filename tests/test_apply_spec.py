"""Apply library, offline parts: deploy/site schemas, ${site.x} substitution, image rewriting, mirror config,
the release and its values (the Helm library itself runs in test_apply_kube), the plan. No servers needed."""

from __future__ import annotations

import base64
import json
import stat
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.apply.mirrors import crio_registries_conf, mirror_config, upstream_registries
from hydra_bundle.apply.plan import build_plan, step_names
from hydra_bundle.apply.release import HelmRelease, chart_values, values_diff
from hydra_bundle.apply.rewrite import chart_site_repository, rewrite_image, rewrite_workload_images
from hydra_bundle.apply.runtime import Runtime
from hydra_bundle.apply.site import SiteConfig
from hydra_bundle.apply.steps import ChartStep, ManifestsStep, PruneStep, SqlStep
from hydra_bundle.errors import SpecError, SubstError
from hydra_bundle.k8s.manifests import parse_manifests, substitute, substitute_data
from hydra_bundle.k8s.objects import BundleInfo, workload_images
from hydra_bundle.spec import load_spec
from hydra_bundle.spec.deploy import DeploySpec, parse_duration
from hydra_bundle.spec.yamlmodel import load_yaml_model
from tests.support.applyindex import synthetic_index

SITE = "10.0.0.5:5000"


def site(**kw: Any) -> SiteConfig:
    base: dict[str, Any] = {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": SITE,
                            "file_server": "http://10.0.0.5:81",
                            "metallb": {"addresses": ["10.64.24.200-10.64.24.220"]}}
    base.update(kw)
    return SiteConfig.model_validate(base)


# ============================================================== deploy schema, in bundle-spec.yaml

SPEC_WITH_DEPLOY = """\
apiVersion: hydra-bundle/v1
kind: BundleSpec
metadata: {name: hydra-ws, version: 1.0.0, sequence: 1}
charts:
- {name: fake-gpu-operator, ref: "oci://ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator", version: 0.0.63,
   namespace: gpu-operator, values: {topology: {nodePoolLabelKey: run.ai/simulated-gpu-node-pool}}}
manifests:
- {name: gateway-api, path: gateway-api.yaml}
models:
- {name: qwen3-0.6b, base_url: "https://huggingface.co/Qwen/Qwen3-0.6B/resolve/abc/", files: [{path: config.json}]}
deploy:
  timeout: 5m
  steps:
  - manifests: gateway-api
  - name: simulate-gpu
    when: no-gpu
    label_nodes: {labels: {run.ai/simulated-gpu-node-pool: default}}
  - when: no-gpu
    chart:
      name: fake-gpu-operator
      pull_secrets: [gcr-secret]
      image_values: {devicePlugin.image.repository: ghcr.io/run-ai/fake-gpu-operator/device-plugin}
  - sql:
      database: hydra
      tables:
      - table: vendor
        key: [name]
        rows:
        - {name: alibaba, display_name: {enUS: Alibaba, zhCN: 通义千问}}
  - warmup: qwen3-0.6b
  - wait_for: [{kind: Service, namespace: istio-system, name: gateway-istio}]
    timeout: 90s
"""


def _write(tmp_path: Path, text: str, name: str = "bundle-spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    (tmp_path / "gateway-api.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    return p


def test_deploy_section_loads_with_defaults_and_shorthands(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, SPEC_WITH_DEPLOY))
    d = spec.deploy
    assert d is not None and d.prune and d.timeout == 300
    assert [s.step_name for s in d.steps] == ["manifests-gateway-api", "simulate-gpu", "chart-fake-gpu-operator",
                                              "sql", "warmup-qwen3-0.6b", "wait-for"]
    assert d.steps[0].manifests == ["gateway-api"]
    assert d.steps[2].chart is not None and d.steps[2].chart.pull_secrets == ["gcr-secret"]
    assert d.steps[4].warmup is not None and d.steps[4].warmup.namespace == "public"
    assert d.steps[5].timeout == 90
    # the normalized spec that goes into the signed index validates again on the agent side
    dumped = spec.model_dump(mode="json", exclude_none=True, by_alias=True)["deploy"]
    assert DeploySpec.model_validate(dumped) == d


@pytest.mark.parametrize(("old", "new", "line", "message"), [
    ("  - manifests: gateway-api\n", "  - manifests: gateway-api\n    manifst: x\n", 15,
     "deploy.steps[0].manifst: unknown field"),
    ("  - manifests: gateway-api\n",
     "  - manifests: gateway-api\n    sql: {tables: [{table: t, key: [a], rows: [{a: 1}]}]}\n", 14,
     "deploy.steps[0]: a step needs exactly one of manifests, label_nodes, chart, sql, warmup, wait_for, tls (got "
     "manifests, sql)"),
    ("  - manifests: gateway-api\n", "  - manifests:\n    - nope\n", 15,
     "deploy.steps[0].manifests[0]: no manifest named 'nope' in `manifests:`"),
    ("  - warmup: qwen3-0.6b\n", "  - warmup: qwen9\n", 30, "deploy.steps[4].warmup.model: no model named 'qwen9'"),
    ("    timeout: 90s\n", "    timeout: soon\n", 32, "deploy.steps[5].timeout: must be a duration"),
    ("      pull_secrets: [gcr-secret]\n", "      pull_secrets: [GCR_secret]\n", 21,
     "deploy.steps[2].chart.pull_secrets: secret name must be a lowercase DNS name"),
])
def test_deploy_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, line: int, message: str) -> None:
    assert old in SPEC_WITH_DEPLOY
    with pytest.raises(SpecError) as ei:
        load_spec(_write(tmp_path, SPEC_WITH_DEPLOY.replace(old, new)))
    problems = ei.value.problems
    assert any(p.startswith(f"{tmp_path / 'bundle-spec.yaml'}:{line}: ") and message in p for p in problems), problems


def test_duplicate_step_names_and_second_sql_step_are_errors(tmp_path: Path) -> None:
    text = SPEC_WITH_DEPLOY + "  - manifests: gateway-api\n  - sql: {tables: [{table: t, key: [a], rows: [{a: 1}]}]}\n"
    with pytest.raises(SpecError) as ei:
        load_spec(_write(tmp_path, text))
    msg = "\n".join(ei.value.problems)
    assert "step name 'manifests-gateway-api' already used by steps[0]; give this step a `name`" in msg
    assert "only one sql step per bundle" in msg


def test_sql_seed_rows_are_checked() -> None:
    from hydra_bundle.spec.deploy import SeedTable

    with pytest.raises(ValueError, match="lacks key column"):
        SeedTable.model_validate({"table": "vendor", "key": ["name"], "rows": [{"other": 1}]})
    with pytest.raises(ValueError, match="same key as rows"):
        SeedTable.model_validate({"table": "vendor", "key": ["name"], "rows": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        SeedTable.model_validate({"table": "vendor; drop table x", "key": ["name"], "rows": [{"name": "a"}]})
    with pytest.raises(ValueError, match="key columns must hold plain values"):
        SeedTable.model_validate({"table": "vendor", "key": ["name"], "rows": [{"name": {"enUS": "a"}}]})


def test_durations() -> None:
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("1h30m") == 5400
    assert parse_duration(45) == 45
    for bad in ("", "10x", "5 minutes", "0s", True, -1):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ============================================================== site values

def test_site_config_from_yaml_with_file_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "site.yaml"
    pw = tmp_path / "mysql.pw"
    pw.write_text("s3cret\n")
    good.write_text(textwrap.dedent(f"""\
        cluster_name: jxj31-mspider
        domain: cn-sh-a1
        registry: 10.0.0.5:5000
        file_server: http://10.0.0.5:81/
        metallb: {{addresses: [10.64.24.200-10.64.24.220, 10.64.25.0/28]}}
        kubeconfig: /etc/kubernetes/admin.conf
        mysql: {{dsn: "mysql://hydra@10.0.0.9:3306/hydra", password_file: {pw}}}
        timeout: 15m
        vars: {{gateway_class: istio}}
        """))
    s = load_yaml_model(good, SiteConfig)
    assert s.timeout == 900 and s.file_server == "http://10.0.0.5:81" and s.plain_http
    assert s.mysql is not None and s.mysql.user == "hydra" and s.mysql.port == 3306 and s.mysql.database == "hydra"
    assert s.mysql.password() == "s3cret" and "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()
    assert s.model_url("qwen3-0.6b") == "http://10.0.0.5:81/model/qwen3-0.6b/"
    v = s.variables("hydra-ws", "1.0.0")
    assert v["site.metallb.addresses"] == ["10.64.24.200-10.64.24.220", "10.64.25.0/28"]
    assert v["site.vars.gateway_class"] == "istio" and v["bundle.version"] == "1.0.0"

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("mysql://hydra@", "mysql://hydra:pw@")
                   .replace("10.64.25.0/28", "10.64.25.9-10.64.25.1").replace("registry: 10", "registry: http://10"))
    with pytest.raises(SpecError) as ei:
        load_yaml_model(bad, SiteConfig)
    msg = "\n".join(ei.value.problems)
    assert f"{bad}:3: registry: give HOST[:PORT][/PREFIX] without a scheme" in msg
    assert f"{bad}:5: metallb.addresses: '10.64.25.9-10.64.25.1' is not a CIDR" in msg
    assert f"{bad}:7: mysql.dsn: put the password in password_file, not in the DSN" in msg
    assert "hydra:pw" not in msg


# ============================================================== substitution

def test_substitution_rules() -> None:
    v = site().variables("hydra-ws", "1.2.3")
    assert substitute("http://${site.domain}/v1", v, "f:1") == "http://cn-sh-a1/v1"
    assert substitute("${site.metallb.addresses}", v, "f:1") == ["10.64.24.200-10.64.24.220"]
    assert substitute("echo ${HOME} $${site.domain} ${bundle.version}", v, "f:1") == \
        "echo ${HOME} ${site.domain} 1.2.3"
    with pytest.raises(SubstError, match=r"^f:7: unknown variable \$\{site.domian\} \(defined: bundle.name"):
        substitute("${site.domian}", v, "f:7")
    with pytest.raises(SubstError, match="is a list; use it as the whole value"):
        substitute("pools: ${site.metallb.addresses}", v, "f:1")
    assert substitute_data({"a": ["${site.cluster_name}", 3, {"b": "${site.registry}/x"}]}, v, "w") == \
        {"a": ["jxj31-mspider", 3, {"b": f"{SITE}/x"}]}


def test_parse_manifests_substitutes_in_values_only_and_names_lines() -> None:
    v = site().variables("hydra-ws", "1")
    text = textwrap.dedent("""\
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: pool, namespace: metallb-system}
        spec:
          addresses: ${site.metallb.addresses}
        ---
        # a comment-only document is skipped
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: script}
        data:
          run.sh: |
            echo "${HOME}: ${site.domain}: a key: with colons"
          "${site.domain}": key-is-not-substituted
        """)
    docs = parse_manifests(text, "manifests/m/x.yaml", v)
    assert [d.line for d in docs] == [1, 9]
    assert docs[0].obj["spec"]["addresses"] == ["10.64.24.200-10.64.24.220"]
    assert docs[1].obj["data"]["run.sh"] == 'echo "${HOME}: cn-sh-a1: a key: with colons"\n'
    assert docs[1].obj["data"]["${site.domain}"] == "key-is-not-substituted"
    with pytest.raises(SubstError) as ei:
        parse_manifests(text.replace("${site.domain}: a key", "${site.nope}: a key"), "manifests/m/x.yaml", v)
    assert ei.value.problems == ["manifests/m/x.yaml:14: unknown variable ${site.nope} (defined: bundle.name, "
                                 "bundle.version, site.cluster_name, site.domain, site.file_server, "
                                 "site.metallb.addresses, site.registry, site.storage_class)"]
    with pytest.raises(SubstError, match=r"x.yaml:2: document 0: missing metadata.name"):
        parse_manifests("\napiVersion: v1\nkind: Namespace\n", "x.yaml", v)


# ============================================================== image rewriting and mirrors

@pytest.mark.parametrize(("ref", "expected"), [
    ("release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu",
     f"{SITE}/release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu"),
    ("ubuntu:24.04", f"{SITE}/docker.io/library/ubuntu:24.04"),
    ("ubuntu", f"{SITE}/docker.io/library/ubuntu"),
    ("registry-1.docker.io/library/ubuntu:24.04", f"{SITE}/docker.io/library/ubuntu:24.04"),
    ("docker.io/istio/pilot:1.24.2", f"{SITE}/docker.io/istio/pilot:1.24.2"),
    ("ghcr.io/run-ai/fake-gpu-operator/device-plugin", f"{SITE}/ghcr.io/run-ai/fake-gpu-operator/device-plugin"),
    ("quay.io/metallb/speaker:v0.16.1@sha256:" + "a" * 64,
     f"{SITE}/quay.io/metallb/speaker:v0.16.1@sha256:" + "a" * 64),
    (f"{SITE}/docker.io/library/ubuntu:22.04", f"{SITE}/docker.io/library/ubuntu:22.04"),
    ("localhost:5000/x/y:1", f"{SITE}/localhost_5000/x/y:1"),
])
def test_rewrite_image(ref: str, expected: str) -> None:
    assert rewrite_image(ref, SITE) == expected


def test_rewrite_image_with_prefix() -> None:
    assert rewrite_image("ubuntu:24.04", "harbor.site:443/mirror") == \
        "harbor.site:443/mirror/docker.io/library/ubuntu:24.04"
    assert rewrite_image("harbor.site:443/mirror/docker.io/library/ubuntu:24.04", "harbor.site:443/mirror") == \
        "harbor.site:443/mirror/docker.io/library/ubuntu:24.04"


POD = {"initContainers": [{"name": "i", "image": "ubuntu:24.04"}],
       "containers": [{"name": "c", "image": "release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu"}],
       "ephemeralContainers": [{"name": "e", "image": "busybox:1.36"}]}


@pytest.mark.parametrize(("api_version", "kind", "wrap"), [
    ("v1", "Pod", lambda p: {"spec": p}),
    ("apps/v1", "Deployment", lambda p: {"spec": {"template": {"spec": p}}}),
    ("apps/v1", "StatefulSet", lambda p: {"spec": {"template": {"spec": p}}}),
    ("apps/v1", "DaemonSet", lambda p: {"spec": {"template": {"spec": p}}}),
    ("apps/v1", "ReplicaSet", lambda p: {"spec": {"template": {"spec": p}}}),
    ("batch/v1", "Job", lambda p: {"spec": {"template": {"spec": p}}}),
    ("batch/v1", "CronJob", lambda p: {"spec": {"jobTemplate": {"spec": {"template": {"spec": p}}}}}),
    ("batch/v1beta1", "CronJob", lambda p: {"spec": {"jobTemplate": {"spec": {"template": {"spec": p}}}}}),
])
def test_rewrite_workloads_every_container_list(api_version: str, kind: str, wrap: Any) -> None:
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "w"}, **wrap(json.loads(json.dumps(POD)))}
    changes = rewrite_workload_images(obj, SITE)
    assert [c.new for c in changes] == [f"{SITE}/docker.io/library/ubuntu:24.04",
                                        f"{SITE}/release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu",
                                        f"{SITE}/docker.io/library/busybox:1.36"]
    assert [img for _, img in workload_images(obj)] == [c.new for c in changes]
    assert changes[0].path.endswith("initContainers[0].image")
    assert rewrite_workload_images(obj, SITE) == []  # idempotent


def test_rewrite_leaves_other_kinds_and_lookalikes_alone() -> None:
    cr = {"apiVersion": "example.com/v1", "kind": "Job", "metadata": {"name": "j"},
          "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "ubuntu"}]}}}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"image": "ubuntu"}}
    assert rewrite_workload_images(cr, SITE) == [] and rewrite_workload_images(cm, SITE) == []
    assert cr["spec"]["template"]["spec"]["containers"][0]["image"] == "ubuntu"


def test_mirror_config_is_valid_toml_per_upstream() -> None:
    ups = upstream_registries(["release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu", "ubuntu:24.04",
                               "ghcr.io/run-ai/fake-gpu-operator/device-plugin:0.0.63",
                               "quay.io/metallb/speaker:v0.16.1",
                               "docker-daemon:docker.io/library/busybox:1"])
    assert ups == ["docker.io", "ghcr.io", "quay.io", "release.daocloud.io"]
    files = mirror_config(ups, SITE)
    assert sorted(files) == [f"/etc/containerd/certs.d/{u}/hosts.toml" for u in ups]
    docker = tomllib.loads(files["/etc/containerd/certs.d/docker.io/hosts.toml"])
    assert docker == {"server": "https://registry-1.docker.io",
                      "host": {f"http://{SITE}/v2/docker.io": {"capabilities": ["pull", "resolve"],
                                                              "override_path": True}}}
    quay = tomllib.loads(files["/etc/containerd/certs.d/quay.io/hosts.toml"])
    assert quay["server"] == "https://quay.io"
    tls = tomllib.loads(mirror_config(["ghcr.io"], "reg.site:443/hydra", "https", True)[
        "/etc/containerd/certs.d/ghcr.io/hosts.toml"])
    assert tls["host"] == {"https://reg.site:443/v2/hydra/ghcr.io": {"capabilities": ["pull", "resolve"],
                                                                      "override_path": True, "skip_verify": True}}
    crio = tomllib.loads(crio_registries_conf(ups, SITE))
    assert [r["prefix"] for r in crio["registry"]] == ups
    assert crio["registry"][0]["mirror"] == [{"location": f"{SITE}/docker.io", "insecure": True}]


def test_site_mirror_files_for_a_bundle() -> None:
    from hydra_bundle.apply.mirrors import CRIO_FILE, site_mirror_files

    files = site_mirror_files(["release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu", "ubuntu:22.04",
                               f"{SITE}/already/here:1"], SITE)
    assert sorted(files) == sorted([CRIO_FILE, "/etc/containerd/certs.d/docker.io/hosts.toml",
                                    "/etc/containerd/certs.d/release.daocloud.io/hosts.toml"])
    assert 'prefix = "release.daocloud.io"' in files[CRIO_FILE]


def test_chart_site_repository() -> None:
    assert chart_site_repository("oci://ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator", "x") == \
        "ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator"
    assert chart_site_repository("https://baizeai.github.io/charts", "dataset") == "charts/dataset"
    assert chart_site_repository("https://baizeai.github.io/charts", "dataset", "mirror") == "mirror/charts/dataset"


# ============================================================== helm

FAKE_GPU_IMAGE_VALUES = {
    f"{c}.image.repository": f"ghcr.io/run-ai/fake-gpu-operator/{img}"
    for c, img in [("devicePlugin", "device-plugin"), ("statusUpdater", "status-updater"),
                   ("topologyServer", "topology-server"), ("statusExporter", "status-exporter"),
                   ("kwokGpuDevicePlugin", "kwok-gpu-device-plugin"), ("migFaker", "mig-faker")]
} | {"ubuntu.image.repository": "ubuntu"}


def test_chart_values_rewrite_the_fake_gpu_operator_keys(fixtures_dir: Path) -> None:
    defaults = yaml.safe_load((fixtures_dir / "charts/fake-gpu-operator/values.yaml").read_text())
    for path in FAKE_GPU_IMAGE_VALUES:  # every key we set exists in the chart's values.yaml
        node = defaults
        for p in path.split("."):
            node = node[p]
        assert isinstance(node, str)
    values = chart_values({"topology": {"migStrategy": "none"}}, {"topology": {"nodePoolLabelKey": "k"}},
                          FAKE_GPU_IMAGE_VALUES, ["global.imageRegistry"], SITE)
    assert values["devicePlugin"]["image"]["repository"] == f"{SITE}/ghcr.io/run-ai/fake-gpu-operator/device-plugin"
    assert values["ubuntu"]["image"]["repository"] == f"{SITE}/docker.io/library/ubuntu"
    assert values["topology"] == {"migStrategy": "none", "nodePoolLabelKey": "k"}
    assert values["global"]["imageRegistry"] == SITE


def test_helm_command_for_an_operator() -> None:
    """What an operator runs when the Helm library cannot load on this host."""
    rel = HelmRelease("gpu-operator", "gpu-operator", f"oci://{SITE}/ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator",
                      "fake-gpu-operator", "0.0.63", {}, plain_http=True, kubeconfig="/etc/k.conf", timeout=300)
    assert rel.cli_args("/v.yaml") == [
        "upgrade", "--install", "gpu-operator", f"oci://{SITE}/ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator",
        "--version", "0.0.63", "--namespace", "gpu-operator", "--kubeconfig", "/etc/k.conf", "--create-namespace",
        "--values", "/v.yaml", "--plain-http", "--wait", "--atomic", "--timeout", "300s"]
    tls = HelmRelease("r", "ns", "oci://reg:443/c", "c", "1", {}, plain_http=False, skip_verify=True, wait=False,
                      create_namespace=False)
    args = tls.cli_args("v")
    assert "--insecure-skip-tls-verify" in args and "--plain-http" not in args and "--wait" not in args


def test_values_diff_names_every_change() -> None:
    old = {"a": {"b": 1, "c": "x"}, "gone": True, "list": [1, 2]}
    new = {"a": {"b": 2, "c": "x"}, "new": {"k": "v"}, "list": [1, 2]}
    assert values_diff(old, new) == ["~ a.b: 1 → 2", "- gone", "+ new: {k: v}"]
    assert values_diff(new, new) == []


def _chart_plan(tmp_path: Path, s: SiteConfig, pull_secrets: list[str] | None = None) -> ChartStep:
    spec = yaml.safe_load(SPEC_WITH_DEPLOY)
    spec["deploy"]["steps"] = [{"chart": {"name": "fake-gpu-operator", "image_values": FAKE_GPU_IMAGE_VALUES,
                                          "pull_secrets": pull_secrets or [],
                                          "values": {"environment": {"resourceReservationNamespace":
                                                                     "${site.cluster_name}-reservation"}}}}]
    index, read_blob = synthetic_index(tmp_path, spec, {"gateway-api": "apiVersion: v1\nkind: Namespace\n"
                                                                       "metadata: {name: x}\n"})
    plan = build_plan(index, s, read_blob)
    step = plan.steps[0]
    assert isinstance(step, ChartStep)
    return step


def test_chart_without_the_helm_library_is_pending_with_the_exact_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libhelm_c cannot load (another platform, an old libc), the step says why and what to run instead."""
    from hydra_bundle.apply import helm

    monkeypatch.setattr(helm, "_library", None)
    monkeypatch.setattr(helm, "_reason", "the Helm library (helm-python-sdk) cannot load: OSError: libc too old")
    step = _chart_plan(tmp_path, site())
    rt = Runtime(site(), BundleInfo("hydra-ws", "1.0.0"), state_dir=tmp_path / "state",
                 kube_factory=lambda _rt: _NoCluster())  # type: ignore[arg-type,return-value]
    res = step.run(rt)
    assert res.state == "pending" and res.command is not None
    values_file = tmp_path / "state/helm/hydra-ws-gpu-operator-fake-gpu-operator.values.yaml"
    assert res.command == ["helm", "upgrade", "--install", "fake-gpu-operator",
                           f"oci://{SITE}/ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator", "--version", "0.0.63",
                           "--namespace", "gpu-operator", "--create-namespace", "--values", str(values_file),
                           "--plain-http", "--wait", "--atomic", "--timeout", "300s"]
    values = yaml.safe_load(values_file.read_text())
    assert values["environment"]["resourceReservationNamespace"] == "jxj31-mspider-reservation"
    assert values["migFaker"]["image"]["repository"] == f"{SITE}/ghcr.io/run-ai/fake-gpu-operator/mig-faker"
    assert values["topology"]["nodePoolLabelKey"] == "run.ai/simulated-gpu-node-pool"  # from the spec's chart
    assert stat.S_IMODE(values_file.stat().st_mode) == 0o600
    assert res.summary.startswith("the Helm library (helm-python-sdk) cannot load: OSError: libc too old")
    assert any("could not check whether the release is deployed" in n for n in res.notes)


class _NoCluster:
    def list_raw(self, *_a: Any, **_kw: Any) -> list[dict[str, Any]]:
        from hydra_bundle.errors import ApplyError

        raise ApplyError("kubernetes API: not reachable")


# ============================================================== the plan

GATEWAY_MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: hydra-system}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  labels: {app.kubernetes.io/managed-by: Helm}
  name: hydra-agent-knoway
  namespace: hydra-system
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gateway, namespace: default}]
  hostnames: ["${site.domain}"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: hydra-system}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu"}]}
"""


def test_registry_auth_gives_rewritten_workloads_a_pull_secret(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC_WITH_DEPLOY)
    index, read_blob = synthetic_index(tmp_path, spec, {"gateway-api": GATEWAY_MANIFEST})
    pw = tmp_path / "pull.pw"
    pw.write_text("s3cret pull\n")
    plan = build_plan(index, site(registry_auth={"username": "puller", "password_file": str(pw)}), read_blob,
                      digest="sha256:" + "1" * 64)
    m = plan.steps[0]
    assert isinstance(m, ManifestsStep)
    keys = [str(p.key) for p in m.ordered()]
    assert "Secret hydra-system/hydra-bundle-registry" in keys
    assert keys.index("Secret hydra-system/hydra-bundle-registry") < keys.index("Deployment hydra-system/web")
    secret = next(p.obj for p in m.objects if p.obj["kind"] == "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
    assert base64.b64decode(auths[SITE]["auth"]).decode() == "puller:s3cret pull"
    web = next(p.obj for p in m.objects if p.obj["kind"] == "Deployment")
    assert web["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "hydra-bundle-registry"}]
    assert "s3cret" not in plan.text()   # the plan names the Secret, never its content


def test_plan_lists_every_action_in_order_offline(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC_WITH_DEPLOY)
    index, read_blob = synthetic_index(tmp_path, spec, {"gateway-api": GATEWAY_MANIFEST})
    assert step_names(index) == ["manifests-gateway-api", "simulate-gpu", "chart-fake-gpu-operator", "sql",
                                 "warmup-qwen3-0.6b", "wait-for", "prune"]
    plan = build_plan(index, site(), read_blob, digest="sha256:" + "1" * 64)
    assert [s.name for s in plan.steps] == step_names(index)
    assert [s.kind for s in plan.steps] == ["manifests", "label-nodes", "chart", "sql", "warmup", "wait-for",
                                            "prune"]
    m = plan.steps[0]
    assert isinstance(m, ManifestsStep)
    assert [str(p.key) for p in m.ordered()] == ["Namespace hydra-system", "Deployment hydra-system/web",
                                                 "HTTPRoute hydra-system/hydra-agent-knoway"]
    route = next(p.obj for p in m.objects if p.obj["kind"] == "HTTPRoute")
    assert route["spec"]["hostnames"] == ["cn-sh-a1"]
    assert route["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "hydra-bundle",
                                           "hydra-bundle.io/bundle": "hydra-ws"}
    assert route["metadata"]["annotations"] == {"hydra-bundle.io/version": "1.0.0",
                                                "hydra-bundle.io/digest": "sha256:" + "1" * 64}
    assert any("managed-by=Helm" in n for n in plan.notes)
    text = plan.text()
    assert ("release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu → "
            "10.0.0.5:5000/release.daocloud.io/hydra/vllm-openai") in text
    assert "[only if no node advertises nvidia.com/gpu]" in text
    assert "label-node  Node (every schedulable node)  (run.ai/simulated-gpu-node-pool=default)" in text
    assert "sql-upsert  hydra.vendor name='alibaba'" in text
    assert "apply       Dataset public/qwen3-0.6b  (HTTP source http://10.0.0.5:81/model/qwen3-0.6b/, storage " \
           "class nfs-csi)" in text
    assert "wait        Service istio-system/gateway-istio  (ready)" in text
    j = json.loads(plan.dumps())
    assert j["bundle"]["name"] == "hydra-ws" and j["steps"][1]["when"] == "no-gpu"
    assert j["steps"][5]["timeout"] == 90 and j["steps"][0]["timeout"] == 300
    prune = plan.steps[-1]
    assert isinstance(prune, PruneStep)
    kept = {str(k) for k, _ in prune.keep}
    assert {"Namespace hydra-system", "HTTPRoute hydra-system/hydra-agent-knoway", "Namespace gpu-operator",
            "Secret gpu-operator/gcr-secret", "Namespace public", "Dataset public/qwen3-0.6b"} <= kept
    sql = plan.steps[3]
    assert isinstance(sql, SqlStep) and sql.seed.tables[0].rows[0]["display_name"]["zhCN"] == "通义千问"


def test_plan_errors_name_the_manifest_file_and_line(tmp_path: Path) -> None:
    spec = yaml.safe_load(SPEC_WITH_DEPLOY)
    bad = GATEWAY_MANIFEST.replace("${site.domain}", "${site.gateway_domain}")
    index, read_blob = synthetic_index(tmp_path, spec, {"gateway-api": bad})
    with pytest.raises(SpecError) as ei:
        build_plan(index, site(), read_blob)
    assert ei.value.problems[0].startswith("manifests/gateway-api/gateway-api.yaml:13: unknown variable "
                                           "${site.gateway_domain}")
    dup = GATEWAY_MANIFEST + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: hydra-system}\n"
    index, read_blob = synthetic_index(tmp_path, spec, {"gateway-api": dup})
    with pytest.raises(SpecError, match=r"gateway-api.yaml:24: Namespace hydra-system is already defined at "
                                        r"manifests/gateway-api/gateway-api.yaml:1"):
        build_plan(index, site(), read_blob)


def test_no_deploy_section_means_an_empty_plan(tmp_path: Path) -> None:
    index, read_blob = synthetic_index(tmp_path, {"images": []})
    plan = build_plan(index, site(), read_blob)
    assert plan.steps == [] and step_names(index) == []
    assert "nothing to apply" in plan.text()
