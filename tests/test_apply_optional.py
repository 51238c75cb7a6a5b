"""Optional parts and per-site values, offline: ``when:`` expressions (parsed, never executed; bad ones are spec
errors with file:line), ``optional:`` steps the site enables by step or feature name, site values files merged over
a chart's values, and what the plan shows of them (text and --json). No servers needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.apply.plan import build_plan, step_names
from hydra_bundle.apply.runtime import Runtime
from hydra_bundle.apply.site import SiteConfig
from hydra_bundle.apply.steps import ChartStep, PruneStep
from hydra_bundle.errors import SpecError
from hydra_bundle.k8s.objects import BundleInfo
from hydra_bundle.spec import load_spec
from hydra_bundle.spec.deploy import DeploySpec
from hydra_bundle.spec.when import SITE_NAMES, UNKNOWN, parse_when
from tests.support.applyindex import synthetic_index

ROOT = Path(__file__).resolve().parent.parent
REG = "10.0.0.5:5000"


def site(**kw: Any) -> SiteConfig:
    base: dict[str, Any] = {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": REG,
                            "file_server": "http://10.0.0.5:81", "vars": {"tier": "prod", "mesh": "dce"}}
    base.update(kw)
    return SiteConfig.model_validate(base)


# ============================================================== when: expressions

@pytest.mark.parametrize(("text", "expected"), [
    ("not site.vars.mesh", False),
    ("site.vars.mesh == 'dce'", True),
    ("site.vars.mesh != 'dce' or site.domain == 'cn-sh-a1'", True),
    ("'istio' in site.enable", True),
    ("'kiali' not in site.enable", True),
    ("site.domain in ['cn-sh-a1', 'cn-bj-b2']", True),
    ("site.vars.nothing", False),                       # an unset site variable is null
    ("site.vars.nothing == null", True),
    ("'x' in site.vars.nothing", False),                # `in null` is false, not an error
    ("site.mysql", False),
    ("site.metallb and site.storage_class == 'nfs-csi'", False),
    ("not (site.vars.tier == 'dev' or site.in_cluster)", True),
    ("true", True),
    ("site.vars.replicas == 3", True),
])
def test_expressions_evaluate_over_the_site(text: str, expected: bool) -> None:
    s = site(enable=["istio"], vars={"mesh": "dce", "tier": "prod", "replicas": 3})
    c = parse_when(text)
    assert not c.uses_gpu and c.evaluate(s.facts()) is expected


def test_gpu_is_unknown_until_the_cluster_is_asked_and_asked_only_when_it_decides() -> None:
    facts = site().facts()
    asked: list[int] = []

    def gpu() -> bool:
        asked.append(1)
        return True

    c = parse_when("site.vars.tier == 'prod' and not gpu")
    assert c.uses_gpu and c.site_names == ("site.vars.tier",)
    assert c.evaluate(facts) is UNKNOWN                           # the plan cannot tell yet
    assert c.evaluate(facts, gpu) is False and asked == [1]
    dev = parse_when("site.vars.tier == 'dev' and not gpu")
    assert dev.evaluate(facts) is False                           # decided by the site alone
    assert dev.evaluate(facts, gpu) is False and asked == [1]     # the cluster was not asked
    assert parse_when("gpu or site.vars.tier == 'prod'").evaluate(facts) is True


def test_the_three_literals_are_unchanged() -> None:
    assert parse_when("always").tree is None and parse_when("always").evaluate({}) is True
    for text, gpus, expected in [("gpu", True, True), ("gpu", False, False), ("no-gpu", True, False),
                                 ("no-gpu", False, True)]:
        c = parse_when(text)
        assert c.literal and c.uses_gpu and c.text == text
        assert c.evaluate({}, lambda g=gpus: g) is expected  # type: ignore[misc]
    d = DeploySpec.model_validate({"steps": [{"when": "no-gpu", "label_nodes": {"labels": {"a": "b"}}},
                                             {"wait_for": [{"kind": "Service", "name": "s"}]}]})
    assert [st.when for st in d.steps] == ["no-gpu", "always"]
    dumped = d.model_dump(mode="json", exclude_none=True)
    assert dumped["steps"][0]["when"] == "no-gpu" and "optional" not in dumped["steps"][0]  # older agents load it
    assert DeploySpec.model_validate(dumped) == d
    off = DeploySpec.model_validate({"steps": [{"when": False, "wait_for": [{"kind": "Service", "name": "s"}]}]})
    assert off.steps[0].when == "false" and off.steps[0].condition.evaluate({}) is False   # YAML `when: false`


def test_site_facts_are_exactly_the_names_expressions_may_use() -> None:
    assert sorted(site().facts()) == sorted(SITE_NAMES)


SPEC = """\
apiVersion: hydra-bundle/v1
kind: BundleSpec
metadata: {name: hydra-ws, version: 1.0.0, sequence: 1}
charts:
- {name: istiod, repo: "https://istio-release.storage.googleapis.com/charts", version: 1.29.6}
manifests:
- {name: ns, path: ns.yaml}
deploy:
  steps:
  - manifests: ns
  - chart: istiod
    when: "not site.vars.mesh"
"""


@pytest.mark.parametrize(("when", "message"), [
    ("__import__('os').system('id')", "(column 1): not allowed in when:"),
    ("site.mseh", "unknown site value 'mseh' (known: cluster_name,"),
    ("open", "unknown name 'open'"),
    ("site", "name a site value, e.g. site.domain"),
    ("site.vars", "write site.vars.<name>"),
    ("site.domain.upper", "write site.domain"),
    ("site.vars.x < 3", "only ==, !=, in and not in compare values"),
    ("-site.vars.x", "only `not` may prefix a value"),
    ("[site.domain] == ['a']", "lists hold plain values only"),
    ("(lambda: 1)()", "not allowed in when:"),
    ("site.domain ==", "is not an expression"),
    ("gpu.count == 1", "only site.<name> values may be named"),
    ("", "is empty"),
])
def test_a_bad_expression_is_a_spec_error_naming_field_and_line(tmp_path: Path, when: str, message: str) -> None:
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    p = tmp_path / "bundle-spec.yaml"
    p.write_text(SPEC.replace('"not site.vars.mesh"', json.dumps(when)))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert any(e.startswith(f"{p}:12: deploy.steps[1].when: ") and message in e for e in ei.value.problems), \
        ei.value.problems


def test_feature_needs_optional_and_is_a_name(tmp_path: Path) -> None:
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    p = tmp_path / "bundle-spec.yaml"
    p.write_text(SPEC + "  - {chart: {name: istiod, release: other}, feature: istio}\n")
    with pytest.raises(SpecError, match=r"bundle-spec.yaml:13: deploy.steps\[2\]: feature: only optional steps"):
        load_spec(p)
    p.write_text(SPEC + "  - {chart: {name: istiod, release: other}, optional: true, feature: Istio_X}\n")
    with pytest.raises(SpecError, match=r"bundle-spec.yaml:13: deploy.steps\[2\].feature: feature name must be"):
        load_spec(p)


# ============================================================== the plan: optional steps and site values

ISTIO = {
    "charts": [
        {"name": "istio-base", "chart": "base", "repo": "https://istio-release.storage.googleapis.com/charts",
         "version": "1.29.6", "namespace": "istio-system"},
        {"name": "istiod", "repo": "https://istio-release.storage.googleapis.com/charts", "version": "1.29.6",
         "namespace": "istio-system", "values": {"pilot": {"replicaCount": 1, "resources": {"cpu": "500m"}}}},
        {"name": "dataset", "repo": "https://baizeai.github.io/charts", "version": "0.1.11",
         "namespace": "dataset-system"},
    ],
    "deploy": {"steps": [
        {"manifests": ["ns"]},
        {"name": "istio-base", "optional": True, "feature": "istio", "chart": {"name": "istio-base"}},
        {"name": "istiod", "optional": True, "feature": "istio",
         "chart": {"name": "istiod", "image_values": {"pilot.image": "docker.io/istio/pilot:1.29.6"}}},
        {"when": "site.vars.tier == 'prod'", "chart": {"name": "dataset", "registry_values": ["global.imageRegistry"]}},
        {"name": "no-mesh-check", "when": "not site.vars.mesh and not gpu",
         "wait_for": [{"kind": "Service", "namespace": "istio-system", "name": "istiod"}]},
    ]},
}
NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: hydra-system}\n"


def _plan(tmp_path: Path, s: SiteConfig) -> Any:
    index, read_blob = synthetic_index(tmp_path, ISTIO, {"ns": NS})
    return index, build_plan(index, s, read_blob, digest="sha256:" + "1" * 64)


def test_optional_steps_are_skipped_unless_the_site_enables_them(tmp_path: Path) -> None:
    index, plan = _plan(tmp_path, site())
    names = ["manifests-ns", "istio-base", "istiod", "chart-dataset", "no-mesh-check", "prune"]
    assert step_names(index) == names and [s.name for s in plan.steps] == names   # the journal names them all
    by = {s.name: s for s in plan.steps}
    why = "optional, not enabled on this site (site.enable does not name 'istio' or 'istiod')"
    assert by["istiod"].off == why
    assert by["no-mesh-check"].off == 'when: not site.vars.mesh and not gpu is false on this site ' \
                                      '(site.vars.mesh="dce")'
    assert by["chart-dataset"].off is None and by["manifests-ns"].off is None
    text = plan.text()
    assert f" 3. istiod (chart, timeout 600s)  [skipped: {why}]" in text
    assert "release istio-system/istiod" not in text            # an off step lists no actions
    assert " 4. chart-dataset (chart, timeout 600s)  [when: site.vars.tier == 'prod': true on this site]" in text
    prune = plan.steps[-1]
    assert isinstance(prune, PruneStep) and prune.releases == {("dataset-system", "dataset")}
    res = by["istiod"].run(Runtime(site(), BundleInfo("hydra-ws", "1.0.0")))   # no cluster is touched
    assert (res.state, res.summary) == ("skipped", f"skipped: {why}")
    j = json.loads(plan.dumps())["steps"]
    assert j[2]["skipped"] == why
    assert j[2]["choices"] == {"optional": {"enabled": False, "feature": "istio"}}
    assert j[3]["choices"] == {"when": {"expression": "site.vars.tier == 'prod'", "site": {"site.vars.tier": "prod"},
                                        "value": True}}


def test_a_feature_name_enables_every_step_of_it_and_a_step_name_only_that_step(tmp_path: Path) -> None:
    _, plan = _plan(tmp_path, site(enable=["istio"], vars={"tier": "dev"}))
    by = {s.name: s for s in plan.steps}
    assert by["istio-base"].off is None and by["istiod"].off is None
    assert by["istiod"].choices == {"optional": {"enabled": True, "by": "istio", "feature": "istio"}}
    assert by["chart-dataset"].off == "when: site.vars.tier == 'prod' is false on this site (site.vars.tier=\"dev\")"
    nomesh = by["no-mesh-check"]        # no mesh here: decided when it runs (it names gpu)
    assert nomesh.off is None and nomesh.choices["when"]["value"] == "decided when the step runs (needs gpu)"
    assert "[only if not site.vars.mesh and not gpu]" in plan.text()
    prune = plan.steps[-1]
    assert isinstance(prune, PruneStep)
    assert prune.releases == {("istio-system", "istio-base"), ("istio-system", "istiod")}

    _, plan = _plan(tmp_path, site(enable=["istiod", "kiali"]))
    by = {s.name: s for s in plan.steps}
    assert by["istiod"].off is None and by["istio-base"].off is not None
    assert by["istiod"].choices["optional"]["by"] == "istiod"
    assert any(n.startswith("site.enable: 'kiali' names no optional step of this bundle") for n in plan.notes)


def test_site_values_files_overlay_the_charts_values_and_the_plan_shows_them(tmp_path: Path) -> None:
    vdir = tmp_path / "values"
    vdir.mkdir()
    (vdir / "istiod.yaml").write_text("pilot:\n  replicaCount: 3\n  nodeSelector: {zone: '${site.domain}'}\n")
    (vdir / "more.yaml").write_text("# the last word\npilot: {resources: {memory: 2Gi}}\nglobal: {hub: local}\n")
    s = site(enable=["istio"], values={"istiod": [str(vdir / "istiod.yaml"), str(vdir / "more.yaml")],
                                       "chart-dataset": str(vdir / "more.yaml"), "other-bundles-release": "/nope"})
    _, plan = _plan(tmp_path, s)
    by = {st.name: st for st in plan.steps}
    istiod = by["istiod"]
    assert isinstance(istiod, ChartStep)
    assert istiod.release.values == {
        "pilot": {"replicaCount": 3, "resources": {"cpu": "500m", "memory": "2Gi"}, "nodeSelector": {"zone":
                  "cn-sh-a1"}, "image": f"{REG}/docker.io/istio/pilot:1.29.6"},
        "global": {"hub": "local"}}
    sha = {n: "sha256:" + hashlib.sha256((vdir / n).read_bytes()).hexdigest() for n in ("istiod.yaml", "more.yaml")}
    assert istiod.choices["valuesFiles"] == [
        {"key": "istiod", "path": str(vdir / "istiod.yaml"), "sha256": sha["istiod.yaml"]},
        {"key": "istiod", "path": str(vdir / "more.yaml"), "sha256": sha["more.yaml"]}]
    dataset = by["chart-dataset"]
    assert isinstance(dataset, ChartStep)
    assert dataset.release.values == {"global": {"imageRegistry": REG, "hub": "local"},   # keyed by step name
                                      "pilot": {"resources": {"memory": "2Gi"}}}
    text = plan.text()
    assert f"      site values {vdir / 'istiod.yaml'} ({sha['istiod.yaml']})" in text
    assert "      values      pilot.replicaCount: 3\n" in text
    assert "      values      pilot.nodeSelector.zone: cn-sh-a1\n" in text
    assert "note: site.values: 'other-bundles-release' names no chart step or release of this bundle" in text
    j = json.loads(plan.dumps())["steps"]
    assert j[2]["values"]["pilot"]["replicaCount"] == 3
    assert j[2]["choices"]["valuesFiles"][1]["sha256"] == sha["more.yaml"]
    assert "values" not in j[0]                                 # only chart steps have values


@pytest.mark.parametrize(("content", "message"), [
    (None, "site.values.istiod: cannot read {path}: No such file or directory"),
    ("pilot: [1, 2\n", "{path}:2: not valid YAML"),
    ("- a\n- b\n", "{path}:1: site.values.istiod: a values file is a mapping (key: value), not a list"),
    ("pilot: {zone: \"${site.nowhere}\"}\n", "unknown variable ${{site.nowhere}}"),
])
def test_a_bad_site_values_file_stops_the_plan_naming_it(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "istiod.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError) as ei:
        _plan(tmp_path, site(enable=["istio"], values={"istiod": str(path)}))
    assert message.format(path=path) in str(ei.value), str(ei.value)


def test_site_config_checks_enable_and_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="enable: name must be a lowercase DNS name"):
        site(enable=["Istio"])
    with pytest.raises(ValidationError, match=r"values\.istiod: list at least one file"):
        site(values={"istiod": []})
    assert site(enable=["istio", "istio"]).enable == ["istio"]


# ============================================================== the Hydra spec

def test_the_hydra_spec_installs_istio_only_where_the_site_enables_it(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "bundle-spec.yaml", use_examples=True)
    assert spec.deploy is not None
    steps = {st.step_name: st for st in spec.deploy.steps}
    for n in ("istio-base", "istiod"):
        assert steps[n].optional and steps[n].feature == "istio" and steps[n].chart is not None
    raw = yaml.safe_load((ROOT / "bundle-spec.yaml").read_text())
    names = [st.step_name for st in spec.deploy.steps]
    assert names.index("istio-base") < names.index("istiod") < names.index("manifests-gateway")
    assert raw["deploy"]["steps"][names.index("istiod")]["chart"]["name"] == "istiod"


def test_preflight_needs_leave_out_steps_that_are_off(tmp_path: Path) -> None:
    from hydra_bundle.apply.needs import needs_of

    index, plan = _plan(tmp_path, site())
    assert needs_of(plan, index, lambda _d: None).unread_charts == ["apply:chart-dataset"]
    index, plan = _plan(tmp_path, site(enable=["istio"]))
    assert needs_of(plan, index, lambda _d: None).unread_charts == ["apply:istio-base", "apply:istiod",
                                                                    "apply:chart-dataset"]
