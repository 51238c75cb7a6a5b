"""`hydra-bundle lint`: offline checks, in particular the "forgot one image" air-gap failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hydra_bundle.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def write_spec(tmp: Path, body: str) -> Path:
    p = tmp / "bundle-spec.yaml"
    p.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\nmetadata: {name: t, version: '1', sequence: 1}\n"
                 + body)
    return p


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      initContainers: [{name: init, image: "busybox:1.36"}]
      containers: [{name: web, image: "ghcr.io/acme/web:1.0"}]
"""


def test_repo_spec_lints_clean_with_fixtures(fixtures_dir: Path) -> None:
    code, out, err = run("lint", str(ROOT / "bundle-spec.yaml"), "--search", str(fixtures_dir), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["errors"] == []
    assert rep["siteVars"] == ["nfs_server", "nfs_share"]
    # the fixture charts were really checked (not merely "not checked")
    assert not any("fake-gpu-operator" in n and "not checked" in n for n in rep["notes"])


def test_forgotten_image_in_a_manifest_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(DEPLOYMENT)
    spec = write_spec(tmp_path, "images: [{ref: ghcr.io/acme/web:1.0}]\nmanifests: [{name: web, path: web.yaml}]\n")
    code, _, err = run("lint", str(spec))
    assert code == 1
    assert "web.yaml:1: Deployment/web spec.template.spec.initContainers[0].image: image busybox:1.36 is not " \
           "listed in images" in err
    assert "ghcr.io/acme/web" not in err  # the listed one is fine
    listed = "images: [{ref: ghcr.io/acme/web:1.0}, {ref: docker.io/library/busybox:1.36}]"
    spec.write_text(spec.read_text().replace("images: [{ref: ghcr.io/acme/web:1.0}]", listed))
    assert run("lint", str(spec))[0] == 0


def test_forgotten_image_in_a_chart(tmp_path: Path, fixtures_dir: Path) -> None:
    images = "\n".join(f"  - ref: ghcr.io/run-ai/fake-gpu-operator/{c}:0.0.63" for c in
                       ["device-plugin", "status-updater", "topology-server", "status-exporter",
                        "kwok-gpu-device-plugin", "mig-faker"])
    spec = write_spec(tmp_path, f"images:\n{images}\n  - ref: ubuntu:24.04\n"
                                "charts: [{name: fake-gpu-operator, ref: 'oci://ghcr.io/run-ai/fake-gpu-operator/"
                                "fake-gpu-operator', version: 0.0.63}]\n")
    code, _, err = run("lint", str(spec), "--search", str(fixtures_dir / "charts"))
    assert code == 1
    # ubuntu:22.04 is hard-coded in a template, not in values: the classic one to forget
    assert "chart fake-gpu-operator 0.0.63: image ubuntu:22.04 is not listed in images" in err
    assert err.count("is not listed") == 1


def test_unknown_kind_unknown_site_variable_and_unpinned_url(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    (tmp_path / "y.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"
                                     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n"
                                     "data: {domain: '${site.domian}'}\n")
    spec = write_spec(tmp_path, "manifests: [{name: x, path: x.yaml}, {name: y, path: y.yaml}]\n"
                                "files: [{name: tool, url: 'https://example.com/tool.bin'}]\n")
    code, _, err = run("lint", str(spec))
    assert code == 1
    assert "x.yaml:1: Widget (example.com/v1) is neither built in nor defined by a CRD in this bundle" in err
    assert "y.yaml:8: unknown variable ${site.domian}" in err
    assert "bundle-spec.yaml:5: files[0]: tool is fetched from a URL without a sha256 pin" in err


def test_crd_shipped_in_the_bundle_makes_its_kind_known(tmp_path: Path, fixtures_dir: Path) -> None:
    crd = fixtures_dir / "gateway-api-v1.2.1/standard/gateway.networking.k8s.io_gateways.yaml"
    (tmp_path / "gw.yaml").write_text("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
                                      "metadata: {name: g}\nspec: {gatewayClassName: istio, listeners: []}\n")
    spec = write_spec(tmp_path, f"manifests: [{{name: crd, path: {crd}}}, {{name: gw, path: gw.yaml}}]\n")
    assert run("lint", str(spec))[0] == 0


@pytest.mark.parametrize("sets,ok", [((), True), (("--set", "nfs_installer_url=not-a-url"), False)])
def test_build_variables(sets: tuple[str, ...], ok: bool, fixtures_dir: Path) -> None:
    code, _, err = run("lint", str(ROOT / "bundle-spec.yaml"), "--search", str(fixtures_dir), *sets)
    assert (code == 0) == ok, err
    if not ok:
        assert "files[0].url: must be an http:// or https:// URL" in err
