"""`hydra-bundle build` / `lock` against real servers: docker-registry instances and a local HTTP file server.

Every image, chart and file here is synthetic and small, except the real upstream fixture charts and CRDs
(`$HYDRA_BUNDLE_FIXTURES`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.bundles import (
    blob,
    blob_names,
    component,
    digest_of,
    isolated_auth_env,
    keypair,
    layout_index,
    read_index,
    run_cli,
    sha256_hex,
    tar_members,
    write_spec,
)
from tests.support.chartrepo import make_chart, write_index
from tests.support.httpserver import FileServer
from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    HELM_CHART,
    HELM_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    diff_id,
    get_manifest,
    make_config,
    make_image,
    make_index,
    make_layer,
    make_manifest,
    push_blob,
    push_helm_chart,
    push_image,
    push_index,
    push_manifest,
    push_random_image,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

EPOCH = "1700000000"
DATASET_SHA256 = "7bd3b615d5cf1a77af884a883d1869f1f685406e51ab9f1b41184b3d877777b9"
FileServerFactory = Callable[..., FileServer]
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")


def _repo(name: str) -> str:
    """A repository name no other test uses (the session registry is shared)."""
    return f"t{uuid.uuid4().hex[:10]}/{name}"


def build(spec: Path, out: Path, cache: Path, *extra: str | Path, key: Path | None = None,
          hosts: Sequence[str] = (), env: dict[str, str | None] | None = None, expect: int = 0) -> dict:
    """Run `hydra-bundle build --json`; returns the JSON summary (or {} when a failure was expected)."""
    args: list[str | Path] = ["build", "--no-agent-kit", spec, "-o", out, "--cache-dir", cache, "--json", *extra]
    args += ["--key", key] if key else ["--unsigned"]
    for h in hosts:
        args += ["--insecure-registry", h]
    res = run_cli(args, env={"SOURCE_DATE_EPOCH": EPOCH, **(env or {})})
    assert res.exit_code == expect, (res.exit_code, res.stdout, res.stderr)
    if expect:
        assert res.stdout == "", res.stdout
        assert not out.exists()
        build.stderr = res.stderr  # type: ignore[attr-defined]
        return {}
    return json.loads(res.stdout)


def _last_error() -> str:
    return build.stderr  # type: ignore[attr-defined,no-any-return]


def _has(bundle: Path, *digests: str) -> list[bool]:
    names = set(blob_names(bundle))
    return ["blobs/sha256/" + d.removeprefix("sha256:") in names for d in digests]


def _image_digests(img: Image) -> list[str]:
    return [img.digest, img.config_digest, *img.layer_digests]


def _layout_entries(bundle: Path, ref: str) -> list[dict]:
    return [m for m in layout_index(bundle)["manifests"]
            if m["annotations"]["org.opencontainers.image.ref.name"] == ref]


def _layout_entry(bundle: Path, ref: str) -> dict:
    [entry] = _layout_entries(bundle, ref)
    return entry


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_multiarch_platform_filter(registry: Registry, tmp_path: Path, docker: bool) -> None:
    imgs = [make_image([3000], 10, "linux/amd64", docker), make_image([3000], 11, "linux/arm64/v8", docker),
            make_image([3000], 12, "linux/s390x", docker)]
    index = make_index(imgs, docker)
    repo = _repo("multi")
    idig = push_index(registry.host, repo, "1", index, imgs)
    ref = f"{registry.host}/{repo}:1"
    amd, arm, s390 = imgs
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    out = tmp_path / "amd.tar"
    build(spec, out, tmp_path / "cache", hosts=[registry.host])

    idx = read_index(out)
    c = component(idx, "images", ref=ref)
    assert c["digest"] == idig and c["mediaType"] == (DOCKER_LIST if docker else OCI_INDEX)
    assert c["platforms"] == ["linux/amd64"]
    assert blob(out, idig) == index  # the original index, byte for byte
    wrapper = {c["layoutDigest"]} if docker else set()
    assert set(c["blobs"]) == {idig, *_image_digests(amd), *wrapper}
    assert all(_has(out, *_image_digests(amd)))
    assert not any(_has(out, *_image_digests(arm), *_image_digests(s390)))
    assert blob(out, amd.digest) == amd.manifest and blob(out, amd.layer_digests[0]) == amd.layers[0]
    entry, *fallback = _layout_entries(out, ref)
    assert (entry["digest"], entry["mediaType"], entry["size"]) == (idig, c["mediaType"], len(index))
    if docker:  # for OCI readers that skip Docker-typed entries: a small OCI index lists the kept Docker manifests
        [wrapped] = fallback
        assert (wrapped["digest"], wrapped["mediaType"]) == (c["layoutDigest"], OCI_INDEX)
        assert [m["digest"] for m in json.loads(blob(out, wrapped["digest"]))["manifests"]] == [amd.digest]
    else:
        assert fallback == []

    out2 = tmp_path / "arm.tar"
    build(spec, out2, tmp_path / "cache", "--platform", "linux/arm64", "--platform", "linux/s390x",
          hosts=[registry.host])
    idx2 = read_index(out2)
    c2 = component(idx2, "images", ref=ref)
    assert idx2["platforms"] == ["linux/arm64", "linux/s390x"]
    assert c2["digest"] == idig and c2["platforms"] == ["linux/arm64/v8", "linux/s390x"]
    assert all(_has(out2, *_image_digests(arm), *_image_digests(s390)))
    assert not any(_has(out2, *_image_digests(amd)))

    # a per-image override wins over the bundle's platforms
    spec3 = write_spec(tmp_path / "s3.yaml", images=[{"ref": ref, "platforms": ["linux/s390x"]}])
    out3 = tmp_path / "s390.tar"
    build(spec3, out3, tmp_path / "cache", hosts=[registry.host])
    assert component(read_index(out3), "images", ref=ref)["platforms"] == ["linux/s390x"]
    assert _has(out3, amd.digest, arm.digest, s390.digest) == [False, False, True]

    res = run_cli(["inspect", out])
    assert res.exit_code == 0 and f"  {ref}  {idig[:19]}" in res.stdout and "[linux/amd64]" in res.stdout


def test_platform_not_in_index(registry: Registry, tmp_path: Path) -> None:
    imgs = [make_image([500], 13, "linux/amd64"), make_image([500], 14, "linux/arm64/v8")]
    repo = _repo("multi")
    push_index(registry.host, repo, "1", make_index(imgs), imgs)
    ref = f"{registry.host}/{repo}:1"
    spec = write_spec(tmp_path / "s.yaml", platforms=["linux/ppc64le"], images=[{"ref": ref}])
    build(spec, tmp_path / "o.tar", tmp_path / "cache", hosts=[registry.host], expect=1)
    assert _last_error().strip() == (f"error: {ref}: no manifest for linux/ppc64le "
                                     "(image has linux/amd64, linux/arm64/v8)")


def test_docker_v2s2_manifest(registry: Registry, tmp_path: Path) -> None:
    img = make_image([2000, 1000], 21, docker=True)
    repo = _repo("docker")
    assert push_image(registry.host, repo, "v1", img) == img.digest
    ref = f"{registry.host}/{repo}:v1"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    key, pub = keypair(tmp_path)
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", key=key, hosts=[registry.host])
    idx = read_index(out)
    c = component(idx, "images", ref=ref)
    assert (c["digest"], c["mediaType"], c["platforms"]) == (img.digest, DOCKER_MANIFEST, ["linux/amd64"])
    assert blob(out, img.digest) == img.manifest and blob(out, img.config_digest) == img.config
    assert [blob(out, d) for d in img.layer_digests] == img.layers
    types = {b["digest"]: b["mediaType"] for b in idx["blobs"]}
    assert types[img.digest] == DOCKER_MANIFEST and types[img.config_digest] == DOCKER_CONFIG
    assert {types[d] for d in img.layer_digests} == {DOCKER_LAYER}
    entry, wrapped = _layout_entries(out, ref)
    assert (entry["mediaType"], entry["digest"], entry["size"]) == (DOCKER_MANIFEST, img.digest, len(img.manifest))
    assert wrapped["mediaType"] == OCI_INDEX and wrapped["digest"] == c["layoutDigest"]
    [kept] = json.loads(blob(out, wrapped["digest"]))["manifests"]
    assert (kept["digest"], kept["mediaType"], kept["platform"]) == (img.digest, DOCKER_MANIFEST,
                                                                     {"os": "linux", "architecture": "amd64"})
    assert run_cli(["verify", out, "--pub", pub]).exit_code == 0


def test_image_by_digest(registry: Registry, tmp_path: Path) -> None:
    img = make_image([800], 22)
    repo = _repo("bydigest")
    push_image(registry.host, repo, None, img)  # no tag at all
    ref = f"{registry.host}/{repo}@{img.digest}"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", hosts=[registry.host])
    assert component(read_index(out), "images", ref=ref)["digest"] == img.digest
    assert _layout_entry(out, ref)["digest"] == img.digest


def test_shared_layers_stored_once(registry: Registry, tmp_path: Path) -> None:
    shared, only_a, only_b = make_layer(6000, 77), make_layer(1000, 78), make_layer(1000, 79)
    repo_a, repo_b = _repo("a"), _repo("b")
    digests = {}
    for repo, layers in ((repo_a, [shared, only_a]), (repo_b, [shared, only_b])):
        config = make_config("linux/amd64", [diff_id(x) for x in layers])
        for data in (config, *layers):
            push_blob(registry.host, repo, data)
        digests[repo] = push_manifest(registry.host, repo, "1", make_manifest(config, layers), OCI_MANIFEST)
    refs = [f"{registry.host}/{repo_a}:1", f"{registry.host}/{repo_b}:1",
            f"{registry.host}/{repo_b}@{digests[repo_b]}"]  # the same image again, by digest
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": r} for r in refs])
    out = tmp_path / "b.tar"
    summary = build(spec, out, tmp_path / "cache", hosts=[registry.host])
    names = [m.name for m in tar_members(out)]
    assert names.count("blobs/sha256/" + sha256_hex(shared)) == 1
    assert len(names) == len(set(names))
    idx = read_index(out)
    assert all(digest_of(shared) in component(idx, "images", ref=r)["blobs"] for r in refs)
    assert len(idx["blobs"]) == len({d for c in idx["components"]["images"] for d in c["blobs"]}) == 7
    assert summary["blobs"] == 7
    # the shared layer was downloaded once (configs and manifests are fetched while resolving)
    assert summary["downloadedBytes"] == len(shared) + len(only_a) + len(only_b)


def _auth_file(tmp_path: Path, host: str, user: str, password: str) -> Path:
    p = tmp_path / "auth.json"
    p.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    return p


def test_basic_auth_registry(auth_registry: Registry, tmp_path: Path) -> None:
    img = make_image([1500], 23)
    repo = _repo("private")
    push_image(auth_registry.host, repo, "1", img, auth=auth_registry.auth)
    ref = f"{auth_registry.host}/{repo}:1"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    host = auth_registry.host

    build(spec, tmp_path / "none.tar", tmp_path / "c0", hosts=[host], env=isolated_auth_env(tmp_path), expect=1)
    assert _last_error().splitlines() == [
        f"error: {host}: registry wants basic auth and no credentials are configured "
        "(docker login / REGISTRY_AUTH_FILE)"]

    bad = _auth_file(tmp_path, host, "hydra", "wrong-password")
    build(spec, tmp_path / "bad.tar", tmp_path / "c1", hosts=[host], env=isolated_auth_env(tmp_path, bad), expect=1)
    [line] = _last_error().splitlines()
    assert line.startswith(f"error: {ref}: access denied (HTTP 401")

    good = _auth_file(tmp_path, host, *auth_registry.auth)  # type: ignore[misc]
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "c2", hosts=[host], env=isolated_auth_env(tmp_path, good))
    c = component(read_index(out), "images", ref=ref)
    assert c["digest"] == img.digest and "source" not in c
    assert blob(out, img.layer_digests[0]) == img.layers[0]


def test_mirror(registry: Registry, tmp_path: Path) -> None:
    """The spec names ghcr.io; the content is only in the local registry (directly, and under a prefix)."""
    img = make_image([1200], 31)
    repo = _repo("y")
    push_image(registry.host, repo, "1", img)
    push_image(registry.host, f"proxy/{repo}", "1", img)
    ref = f"ghcr.io/{repo}:1"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    for mirror, source in ((registry.host, f"{registry.host}/{repo}"),
                           (f"{registry.host}/proxy", f"{registry.host}/proxy/{repo}")):
        out = tmp_path / "b.tar"
        build(spec, out, tmp_path / f"cache-{len(mirror)}", "--mirror", f"ghcr.io={mirror}", hosts=[registry.host])
        c = component(read_index(out), "images", ref=ref)
        assert c["source"] == source and c["digest"] == img.digest
        assert _layout_entry(out, ref)["digest"] == img.digest
        assert blob(out, img.digest) == img.manifest
        out.unlink()


def test_missing_image_and_bad_mirror_flag(registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/{_repo('absent')}:1"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    build(spec, tmp_path / "o.tar", tmp_path / "cache", hosts=[registry.host], expect=1)
    [line] = _last_error().splitlines()
    assert line.startswith(f"error: {ref}: not found")
    build(spec, tmp_path / "o.tar", tmp_path / "cache", "--mirror", "ghcr.io", expect=2)
    assert "--mirror 'ghcr.io': expected SRC=DST" in _last_error()


# ---------------------------------------------------------------- charts, manifests, files, models


def test_oci_chart_and_classic_repo_chart(registry: Registry, tmp_path: Path, fixtures_dir: Path,
                                          file_server: FileServerFactory) -> None:
    tgz = (fixtures_dir / "charts" / "fake-gpu-operator-0.0.63.tgz").read_bytes()
    repo = _repo("fake-gpu-operator")
    chart_digest = push_helm_chart(registry.host, repo, "0.0.63", tgz)
    plus = make_chart("demo", "0.1.0+build.1")
    plus_repo = _repo("demo")
    push_helm_chart(registry.host, plus_repo, "0.1.0+build.1", plus)  # tag 0.1.0_build.1, like helm push

    repo_dir = tmp_path / "chartrepo"
    repo_dir.mkdir()
    dataset = repo_dir / "dataset-0.1.11.tgz"
    shutil.copyfile(fixtures_dir / "charts" / "dataset-0.1.11.tgz", dataset)
    assert sha256_hex(dataset.read_bytes()) == DATASET_SHA256
    write_index(repo_dir, [(dataset, "")])
    srv = file_server(repo_dir)

    spec = write_spec(tmp_path / "s.yaml", charts=[
        {"name": "fake-gpu-operator", "ref": f"oci://{registry.host}/{repo}", "version": "0.0.63"},
        {"name": "dataset", "repo": srv.url + "/", "version": "0.1.11"},
        {"name": "demo", "ref": f"oci://{registry.host}/{plus_repo}", "version": "0.1.0+build.1"},
    ])
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", hosts=[registry.host])
    idx = read_index(out)

    oci = component(idx, "charts", name="fake-gpu-operator")
    assert oci["digest"] == chart_digest and oci["version"] == "0.0.63"
    assert oci["chartDigest"] == digest_of(tgz) and blob(out, oci["chartDigest"]) == tgz
    assert oci["ref"] == f"{registry.host}/{repo}:0.0.63" and oci["source"] == f"oci://{registry.host}/{repo}"
    man = json.loads(blob(out, chart_digest))
    assert man["config"]["mediaType"] == HELM_CONFIG and [x["mediaType"] for x in man["layers"]] == [HELM_CHART]

    ds = component(idx, "charts", name="dataset")
    assert ds["chartDigest"] == f"sha256:{DATASET_SHA256}"
    assert blob(out, ds["chartDigest"]) == dataset.read_bytes()
    assert ds["source"] == srv.url + "/" and ds["ref"] == "charts/dataset:0.1.11"
    art = json.loads(blob(out, ds["digest"]))
    assert art["config"]["mediaType"] == HELM_CONFIG
    assert art["layers"] == [{"mediaType": HELM_CHART, "digest": ds["chartDigest"], "size": dataset.stat().st_size}]
    cfg = json.loads(blob(out, art["config"]["digest"]))
    assert (cfg["name"], cfg["version"], cfg["appVersion"]) == ("dataset", "0.1.11", "1.16.0")

    demo = component(idx, "charts", name="demo")
    assert demo["version"] == "0.1.0+build.1" and demo["ref"].endswith(":0.1.0_build.1")
    assert blob(out, demo["chartDigest"]) == plus
    layout_refs = {m["annotations"]["org.opencontainers.image.ref.name"] for m in layout_index(out)["manifests"]}
    assert layout_refs == {oci["ref"], ds["ref"], demo["ref"]}


def test_classic_chart_errors(tmp_path: Path, fixtures_dir: Path, file_server: FileServerFactory) -> None:
    repo_dir = tmp_path / "chartrepo"
    repo_dir.mkdir()
    shutil.copyfile(fixtures_dir / "charts" / "dataset-0.1.11.tgz", repo_dir / "dataset-0.1.11.tgz")
    write_index(repo_dir, [(repo_dir / "dataset-0.1.11.tgz", "")])
    srv = file_server(repo_dir)
    url = srv.url + "/"
    spec = write_spec(tmp_path / "s.yaml", charts=[{"name": "dataset", "repo": url, "version": "9.9.9"}])
    build(spec, tmp_path / "o.tar", tmp_path / "cache", expect=1)
    assert _last_error().strip() == f"error: charts: dataset 9.9.9 not in {srv.url}/index.yaml (has 0.1.11 …)"
    wrong = "0" * 64
    spec = write_spec(tmp_path / "s.yaml",
                      charts=[{"name": "dataset", "repo": url, "version": "0.1.11", "sha256": wrong}])
    build(spec, tmp_path / "o.tar", tmp_path / "cache", expect=1)
    assert _last_error().strip() == (f"error: charts: dataset 0.1.11 (repo index): digest mismatch: "
                                     f"expected sha256:{wrong}, got sha256:{DATASET_SHA256}")
    assert not any(r.path.endswith(".tgz") for r in srv.requests)  # refused before downloading


def _served_content(root: Path, fixtures_dir: Path) -> dict[str, bytes]:
    files = {
        "crds/grpcroutes.yaml": (fixtures_dir / "gateway-api-v1.2.1" / "standard"
                                 / "gateway.networking.k8s.io_grpcroutes.yaml").read_bytes(),
        "files/nfs-install.tar": random.Random(5).randbytes(50_000),
        "models/tiny/config.json": b'{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 16}',
        "models/tiny/tokenizer.json": b'{"version": "1.0"}',
        "models/tiny/model.safetensors": random.Random(6).randbytes(120_000),
        "models/tiny/README.md": b"# tiny\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_manifests_files_models(tmp_path: Path, fixtures_dir: Path, file_server: FileServerFactory) -> None:
    root = tmp_path / "www"
    served = _served_content(root, fixtures_dir)
    srv = file_server(root)
    specdir = tmp_path / "spec"
    (specdir / "crds").mkdir(parents=True)
    local = (fixtures_dir / "gateway-api-v1.2.1" / "standard" / "gateway.networking.k8s.io_httproutes.yaml")
    shutil.copyfile(local, specdir / "crds" / "httproutes.yaml")
    model_files = ["config.json", "tokenizer.json", "model.safetensors", "README.md"]
    spec = write_spec(
        specdir / "bundle-spec.yaml",
        manifests=[
            {"name": "gateway-api-httproutes", "path": "crds/httproutes.yaml"},  # relative to the spec
            {"name": "gateway-api-grpcroutes", "url": f"{srv.url}/crds/grpcroutes.yaml",
             "sha256": sha256_hex(served["crds/grpcroutes.yaml"])},
        ],
        files=[{"name": "nfs-installer", "url": f"{srv.url}/files/nfs-install.tar",
                "sha256": sha256_hex(served["files/nfs-install.tar"])}],
        models=[{"name": "tiny", "base_url": f"{srv.url}/models/tiny",
                 "files": [{"path": f, "sha256": sha256_hex(served[f"models/tiny/{f}"])} for f in model_files]}],
    )
    key, pub = keypair(tmp_path)
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", key=key)
    assert run_cli(["verify", out, "--pub", pub]).exit_code == 0
    idx = read_index(out)

    m = component(idx, "manifests", name="gateway-api-httproutes")
    assert m["source"] == "crds/httproutes.yaml" and blob(out, m["file"]["digest"]) == local.read_bytes()
    m = component(idx, "manifests", name="gateway-api-grpcroutes")
    assert m["file"]["path"] == "grpcroutes.yaml" and blob(out, m["file"]["digest"]) == served["crds/grpcroutes.yaml"]
    assert json.loads(blob(out, m["digest"]))["layers"][0]["mediaType"] == "application/yaml"
    f = component(idx, "files", name="nfs-installer")
    assert f["file"] == {"path": "nfs-install.tar", "digest": digest_of(served["files/nfs-install.tar"]),
                         "size": 50_000}
    assert f["ref"] == "hydra-bundle/files/nfs-installer:1.0.0"
    model = component(idx, "models", name="tiny")
    assert [x["path"] for x in model["files"]] == model_files
    for x in model["files"]:
        assert blob(out, x["digest"]) == served[f"models/tiny/{x['path']}"]
    art = json.loads(blob(out, model["digest"]))
    assert art["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    mp = "application/vnd.cncf.model."
    assert [(x["annotations"]["org.opencontainers.image.title"], x["mediaType"]) for x in art["layers"]] == [
        ("config.json", mp + "weight.config.v1.raw"), ("tokenizer.json", mp + "weight.config.v1.raw"),
        ("model.safetensors", mp + "weight.v1.raw"), ("README.md", mp + "doc.v1.raw")]
    cfg = json.loads(blob(out, art["config"]["digest"]))
    assert cfg["modelfs"]["diffIds"] == [x["digest"] for x in model["files"]]
    gets = sorted(r.path for r in srv.requests if r.method == "GET")
    assert gets == sorted(["/crds/grpcroutes.yaml", "/files/nfs-install.tar",
                           *[f"/models/tiny/{f}" for f in model_files]])  # each exactly once


@pytest.mark.parametrize("kind", ["file", "model", "manifest", "local-file"])
def test_pinned_sha256_mismatch(tmp_path: Path, file_server: FileServerFactory, kind: str) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = random.Random(7).randbytes(30_000)
    (root / "thing.bin").write_bytes(data)
    srv = file_server(root)
    wrong = sha256_hex(b"something else")
    url = f"{srv.url}/thing.bin"
    section = {
        "file": {"files": [{"name": "thing", "url": url, "sha256": wrong}]},
        "manifest": {"manifests": [{"name": "thing", "url": url, "sha256": wrong}]},
        "model": {"models": [{"name": "thing", "base_url": srv.url, "files": [{"path": "thing.bin",
                                                                              "sha256": wrong}]}]},
        "local-file": {"files": [{"name": "thing", "path": str(root / "thing.bin"), "sha256": wrong}]},
    }[kind]
    spec = write_spec(tmp_path / "s.yaml", **section)
    outdir = tmp_path / "out"
    outdir.mkdir()
    key, _ = keypair(tmp_path)
    cache = tmp_path / "cache"
    build(spec, outdir / "b.tar", cache, key=key, expect=1)
    where = str(root / "thing.bin") if kind == "local-file" else url
    assert _last_error().splitlines() == [
        f"error: {where}: digest mismatch: expected sha256:{wrong}, got sha256:{sha256_hex(data)}"]
    assert list(outdir.iterdir()) == []  # no bundle, no temp file
    assert sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()) == []  # nothing wrong got cached


def test_interrupted_download_resumes_with_range(tmp_path: Path, file_server: FileServerFactory) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = random.Random(8).randbytes(3_000_000)
    (root / "big.bin").write_bytes(data)
    (root / "other.bin").write_bytes(data[::-1])
    srv = file_server(root)
    spec = write_spec(tmp_path / "s.yaml", files=[
        {"name": "big", "url": f"{srv.url}/big.bin", "sha256": sha256_hex(data)},
        {"name": "unpinned", "url": f"{srv.url}/other.bin"},
    ])
    srv.fail_after("/big.bin", 1_000_000)
    srv.fail_after("/other.bin", 700_000)
    out = tmp_path / "b.tar"
    summary = build(spec, out, tmp_path / "cache")
    for path, cut in (("/big.bin", 1_000_000), ("/other.bin", 700_000)):
        gets = [(r.range, r.status) for r in srv.requests if r.path == path and r.method == "GET"]
        assert gets == [(None, 200), (f"bytes={cut}-", 206)]
    assert blob(out, digest_of(data)) == data
    assert blob(out, digest_of(data[::-1])) == data[::-1]
    assert summary["downloadedBytes"] == 2 * len(data)


def test_resume_across_runs(tmp_path: Path, file_server: FileServerFactory) -> None:
    """Cut more often than the builder retries: the build fails, the next build resumes from the partial."""
    root = tmp_path / "www"
    root.mkdir()
    data = random.Random(9).randbytes(2_000_000)
    (root / "big.bin").write_bytes(data)
    srv = file_server(root)
    spec = write_spec(tmp_path / "s.yaml", files=[{"name": "big", "url": f"{srv.url}/big.bin",
                                                   "sha256": sha256_hex(data)}])
    srv.fail_after("/big.bin", 200_000, times=5)
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", expect=1)
    assert "run again to resume" in _last_error()
    srv.clear_requests()
    build(spec, out, tmp_path / "cache")
    assert [r.range for r in srv.requests if r.method == "GET"] == ["bytes=1000000-"]
    assert blob(out, digest_of(data)) == data


# ---------------------------------------------------------------- cache and reproducibility


def _mixed_spec(tmp_path: Path, registry: Registry, srv: FileServer, served: dict[str, bytes]) -> Path:
    oci, docker = make_image([4000, 2500], 51), make_image([3000], 52, docker=True)
    repo_o, repo_d = _repo("oci"), _repo("docker")
    push_image(registry.host, repo_o, "1", oci)
    push_image(registry.host, repo_d, "1", docker)
    (tmp_path / "local.yaml").write_bytes(b"apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n")
    return write_spec(
        tmp_path / "s.yaml",
        images=[{"ref": f"{registry.host}/{repo_o}:1"}, {"ref": f"{registry.host}/{repo_d}:1"}],
        manifests=[{"name": "ns", "path": "local.yaml"}],
        files=[{"name": "nfs-installer", "url": f"{srv.url}/files/nfs-install.tar",
                "sha256": sha256_hex(served["files/nfs-install.tar"])}],
        models=[{"name": "tiny", "base_url": f"{srv.url}/models/tiny/",
                 "files": [{"path": f, "sha256": sha256_hex(served[f"models/tiny/{f}"])}
                           for f in ("config.json", "model.safetensors")]}],
        charts=[{"name": "dataset", "repo": f"{srv.url}/charts", "version": "0.1.11"}],
    )


def _serve_mixed(tmp_path: Path, fixtures_dir: Path, file_server: FileServerFactory) -> tuple[FileServer, dict]:
    root = tmp_path / "www"
    served = _served_content(root, fixtures_dir)
    (root / "charts").mkdir()
    shutil.copyfile(fixtures_dir / "charts" / "dataset-0.1.11.tgz", root / "charts" / "dataset-0.1.11.tgz")
    write_index(root / "charts", [(root / "charts" / "dataset-0.1.11.tgz", "")])
    return file_server(root), served


def test_rebuild_downloads_nothing(registry: Registry, tmp_path: Path, fixtures_dir: Path,
                                   file_server: FileServerFactory) -> None:
    srv, served = _serve_mixed(tmp_path, fixtures_dir, file_server)
    spec = _mixed_spec(tmp_path, registry, srv, served)
    cache = tmp_path / "cache"
    first = build(spec, tmp_path / "1.tar", cache, hosts=[registry.host])
    assert first["downloadedBytes"] > 0

    # take every image blob (configs, layers) away upstream: only manifests remain to resolve the tags
    idx = read_index(tmp_path / "1.tar")
    for c in idx["components"]["images"]:
        repo = c["ref"].split("/", 1)[1].rsplit(":", 1)[0]
        man = json.loads(blob(tmp_path / "1.tar", c["digest"]))
        for d in [man["config"], *man["layers"]]:
            r = httpx.delete(f"{registry.url}/v2/{repo}/blobs/{d['digest']}")
            assert r.status_code == 202, r.text
            assert httpx.head(f"{registry.url}/v2/{repo}/blobs/{d['digest']}").status_code == 404
    srv.clear_requests()

    second = build(spec, tmp_path / "2.tar", cache, hosts=[registry.host])
    local = (tmp_path / "local.yaml").stat().st_size  # an unpinned local file is copied (hashed) again
    assert second["downloadedBytes"] == local
    assert second["cachedBytes"] >= first["downloadedBytes"] - local
    assert [(r.method, r.path) for r in srv.requests] == [("GET", "/charts/index.yaml")]  # metadata only
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


def test_damaged_cache_blob_is_found_removed_and_refetched(registry: Registry, tmp_path: Path) -> None:
    """The cache is not fsynced (one disk write per byte per build): blobs from an earlier run are re-hashed
    while they are copied into the bundle, so a damaged entry never reaches a bundle."""
    img = make_image([5000, 3000], 71)
    repo = _repo("cached")
    push_image(registry.host, repo, "1", img)
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": f"{registry.host}/{repo}:1"}])
    cache = tmp_path / "cache"
    build(spec, tmp_path / "1.tar", cache, hosts=[registry.host])
    damaged = cache / "blobs/sha256" / img.layer_digests[0].removeprefix("sha256:")
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))  # what a crash before writeback can leave behind

    build(spec, tmp_path / "2.tar", cache, hosts=[registry.host], expect=1)
    assert "damaged blob" in _last_error() and img.layer_digests[0] in _last_error()
    assert not damaged.exists()
    third = build(spec, tmp_path / "3.tar", cache, hosts=[registry.host])
    assert third["downloadedBytes"] == len(img.layers[0])  # only the damaged one came again
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "3.tar").read_bytes()


def test_reproducible(registry: Registry, tmp_path: Path, fixtures_dir: Path,
                      file_server: FileServerFactory) -> None:
    srv, served = _serve_mixed(tmp_path, fixtures_dir, file_server)
    spec = _mixed_spec(tmp_path, registry, srv, served)
    h = [registry.host]
    u1, u2 = tmp_path / "u1.tar", tmp_path / "u2.tar"
    build(spec, u1, tmp_path / "c1", hosts=h)
    build(spec, u2, tmp_path / "c2", "-j", "1", hosts=h)  # separate cache, other parallelism
    assert u1.read_bytes() == u2.read_bytes()
    ms = tar_members(u1)
    assert read_index(u1)["created"] == "2023-11-14T22:13:20Z"
    import tarfile

    with tarfile.open(u1) as tf:
        assert {(ti.mtime, ti.uid, ti.gid, ti.mode, ti.uname, ti.gname) for ti in tf} == {
            (int(EPOCH), 0, 0, 0o644, "", "")}

    key, pub = keypair(tmp_path)
    s1, s2 = tmp_path / "s1.tar", tmp_path / "s2.tar"
    build(spec, s1, tmp_path / "c3", key=key, hosts=h)
    build(spec, s2, tmp_path / "c4", key=key, hosts=h)
    a, b = s1.read_bytes(), s2.read_bytes()
    ms = tar_members(s1)
    assert [m.name for m in ms][:2] == ["hydra-bundle.json", "hydra-bundle.json.sig"]
    assert [(m.name, m.header_offset) for m in ms] == [(m.name, m.header_offset) for m in tar_members(s2)]
    lo, hi = ms[1].header_offset, ms[2].header_offset  # member 2: header + signature + padding
    assert len(a) == len(b) and a[:lo] == b[:lo] and a[hi:] == b[hi:]
    assert a[lo:hi] != b[lo:hi]  # ECDSA signatures are randomized
    for p in (s1, s2):
        assert run_cli(["verify", p, "--pub", pub]).exit_code == 0


# ---------------------------------------------------------------- skopeo


def _skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["skopeo", *args], capture_output=True, timeout=120)


@needs_skopeo
def test_skopeo_reads_images_out_of_bundle(registry: Registry, tmp_path: Path) -> None:
    single = make_image([3000, 1000], 61)
    multi = [make_image([2000], 62, "linux/amd64"), make_image([2000], 63, "linux/arm64/v8")]
    index = make_index(multi)
    repo_s, repo_m = _repo("single"), _repo("multi")
    push_image(registry.host, repo_s, "1", single)
    idig = push_index(registry.host, repo_m, "1", index, multi)
    mirrored = f"ghcr.io/{repo_s}:1"  # as written in the spec; pulled through --mirror
    refs = [mirrored, f"{registry.host}/{repo_m}:1"]
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": r} for r in refs])
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", "--mirror", f"ghcr.io={registry.host}", hosts=[registry.host])

    raw = _skopeo("inspect", "--raw", f"oci-archive:{out}:{mirrored}")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.rstrip(b"\n") == single.manifest
    raw = _skopeo("inspect", "--raw", f"oci-archive:{out}:{refs[1]}")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.rstrip(b"\n") == index

    dest = _repo("copied")
    for src_ref, tag, want in ((mirrored, "single", single), (refs[1], "multi", multi[0])):
        cp = _skopeo("copy", "--preserve-digests", f"oci-archive:{out}:{src_ref}",
                     f"docker://{registry.host}/{dest}:{tag}", "--dest-tls-verify=false")
        assert cp.returncode == 0, cp.stderr
        r = get_manifest(registry.host, dest, tag)
        assert r.status_code == 200 and r.content == want.manifest
        assert r.headers["docker-content-digest"] == want.digest
        for d, data in zip(want.layer_digests, want.layers, strict=True):
            assert httpx.get(f"{registry.url}/v2/{dest}/blobs/{d}").content == data
    assert idig == digest_of(index)


@needs_skopeo
def test_skopeo_reads_docker_v2s2_image(registry: Registry, tmp_path: Path) -> None:
    img = make_image([1000], 64, docker=True)
    repo = _repo("docker")
    push_image(registry.host, repo, "1", img)
    ref = f"{registry.host}/{repo}:1"
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": ref}])
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", hosts=[registry.host])
    raw = _skopeo("inspect", "--raw", f"oci-archive:{out}:{ref}")
    assert raw.returncode == 0, raw.stderr
    # readers that look up Docker-typed index.json entries see the manifest; older ones the small OCI index
    got_raw = raw.stdout.rstrip(b"\n")
    assert got_raw == img.manifest or [m["digest"] for m in json.loads(got_raw)["manifests"]] == [img.digest]
    dest = f"{registry.host}/{_repo('docker-copy')}:1"
    cp = _skopeo("copy", "--preserve-digests", "--dest-tls-verify=false", f"oci-archive:{out}:{ref}",
                 f"docker://{dest}")
    assert cp.returncode == 0, cp.stderr
    got = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert got.stdout.rstrip(b"\n") == img.manifest  # the original Docker v2s2 manifest, same digest


# ---------------------------------------------------------------- lock


def test_lock_and_locked_refuses_drift(registry: Registry, tmp_path: Path, file_server: FileServerFactory) -> None:
    a, b = make_image([1000], 41), make_image([1000], 42)
    repo = _repo("app")
    push_image(registry.host, repo, "1", a)
    chart_a, chart_b = make_chart("app", "1.0.0"), make_chart("app", "1.0.0", app_version="2.0.0")
    chart_repo = _repo("app-chart")
    push_helm_chart(registry.host, chart_repo, "1.0.0", chart_a)
    root = tmp_path / "www"
    root.mkdir()
    (root / "tool.bin").write_bytes(b"tool v1\n")
    srv = file_server(root)
    ref = f"{registry.host}/{repo}:1"
    spec = write_spec(tmp_path / "bundle-spec.yaml", images=[{"ref": ref}],
                      charts=[{"name": "app", "ref": f"oci://{registry.host}/{chart_repo}", "version": "1.0.0"}],
                      files=[{"name": "tool", "url": f"{srv.url}/tool.bin"}])
    h = ["--insecure-registry", registry.host]
    cache = tmp_path / "cache"

    res = run_cli(["build", "--no-agent-kit",
                   spec, "-o", tmp_path / "x.tar", "--unsigned", "--locked", *h, "--cache-dir", cache])
    assert res.exit_code == 2
    assert "lock file" in res.stderr and "does not exist" in res.stderr and "hydra-bundle lock" in res.stderr

    res = run_cli(["lock", spec, *h, "--cache-dir", cache, "-q"])
    assert res.exit_code == 0, res.output
    lock_file = tmp_path / "bundle-spec.lock.yaml"
    lock = yaml.safe_load(lock_file.read_text())
    assert lock["kind"] == "BundleLock"
    assert lock["images"] == {ref: a.digest}
    assert lock["files"] == {"tool": digest_of(b"tool v1\n")}
    assert set(lock["charts"]) == {"app"}
    assert not any(_has_cache(cache, d) for d in a.layer_digests)  # locking pulls no layers

    out = tmp_path / "b.tar"
    build(spec, out, cache, "--locked", hosts=[registry.host])
    assert component(read_index(out), "images", ref=ref)["digest"] == a.digest
    out.unlink()

    push_image(registry.host, repo, "1", b)  # the tag moves
    build(spec, out, cache, "--locked", hosts=[registry.host], expect=2)
    [line] = _last_error().splitlines()
    assert line == (f"error: images: {ref} drifted: the lock pins {a.digest}, the tag now points at {b.digest}; "
                    "run `hydra-bundle lock` to accept the change")

    assert run_cli(["lock", spec, *h, "--cache-dir", cache, "-q"]).exit_code == 0
    assert yaml.safe_load(lock_file.read_text())["images"] == {ref: b.digest}
    build(spec, out, cache, "--locked", hosts=[registry.host])
    assert component(read_index(out), "images", ref=ref)["digest"] == b.digest
    out.unlink()

    push_helm_chart(registry.host, chart_repo, "1.0.0", chart_b)  # the chart tag moves
    build(spec, out, cache, "--locked", hosts=[registry.host], expect=2)
    assert "charts: app 1.0.0 drifted" in _last_error()
    assert run_cli(["lock", spec, *h, "--cache-dir", cache, "-q"]).exit_code == 0

    (root / "tool.bin").write_bytes(b"tool v2\n")  # the file changes upstream
    build(spec, out, cache, "--locked", hosts=[registry.host])  # the cache still has what the lock pins
    out.unlink()
    build(spec, out, tmp_path / "fresh-cache", "--locked", hosts=[registry.host], expect=1)
    v1, v2 = digest_of(b"tool v1\n"), digest_of(b"tool v2\n")
    assert _last_error().strip() == f"error: {srv.url}/tool.bin: digest mismatch: expected {v1}, got {v2}"

    spec2 = write_spec(tmp_path / "bundle-spec.yaml", images=[{"ref": ref}, {"ref": f"{registry.host}/{repo}:2"}])
    build(spec2, out, cache, "--locked", hosts=[registry.host], expect=2)
    assert f"images: {registry.host}/{repo}:2 is not in the lock file" in _last_error()


def _has_cache(cache: Path, digest: str) -> bool:
    return (cache / "blobs" / "sha256" / digest.removeprefix("sha256:")).exists()


# ---------------------------------------------------------------- memory


_RSS = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_kib(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Peak RSS of `cmd` run in a fresh subprocess (its own RUSAGE_CHILDREN, unaffected by other tests)."""
    p = subprocess.run([sys.executable, "-c", _RSS, *cmd], capture_output=True, text=True, timeout=300, env=env)
    rc, rss = p.stdout.split()
    assert rc == "0", p.stderr
    return int(rss)


def test_memory_stays_flat(registry: Registry, tmp_path: Path) -> None:
    """A 64 MiB layer must stream: peak RSS of the build barely differs from a tiny build's."""
    big_repo, small_repo = _repo("big"), _repo("small")
    push_random_image(registry.host, big_repo, "1", [64 << 20], seed=90, workers=1, tmp_dir=tmp_path)
    push_image(registry.host, small_repo, "1", make_image([1000], 91))
    cli = [sys.executable, "-m", "hydra_bundle.cli.main"]
    rss = {}
    for name, repo in (("small", small_repo), ("big", big_repo)):
        spec = write_spec(tmp_path / f"{name}.yaml", images=[{"ref": f"{registry.host}/{repo}:1"}])
        rss[name] = _peak_rss_kib([*cli, "build", "--no-agent-kit",
                                   str(spec), "-o", str(tmp_path / f"{name}.tar"), "--unsigned",
                                   "-q", "--insecure-registry", registry.host, "--cache-dir", str(tmp_path / "c")])
    assert (tmp_path / "big.tar").stat().st_size > 64 << 20
    assert rss["big"] < 150 * 1024, rss
    assert rss["big"] - rss["small"] < 24 * 1024, rss


# ---------------------------------------------------------------- in place (the default) and --cache-blobs


def _direct_spec(tmp_path: Path, registry: Registry, srv: FileServer, weights: bytes) -> tuple[Path, Image]:
    img = make_image([2_500_000, 1_200_000, 3000], 91)  # two layers over the 1 MiB in-place threshold
    repo = _repo("direct")
    push_image(registry.host, repo, "1", img)
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": f"{registry.host}/{repo}:1"}],
                      models=[{"name": "m", "base_url": f"{srv.url}/m/",
                               "files": [{"path": "w.bin", "sha256": sha256_hex(weights), "size": len(weights)},
                                         {"path": "c.json", "sha256": sha256_hex(b"{}")}]}],
                      files=[{"name": "f", "url": f"{srv.url}/m/f.bin", "sha256": sha256_hex(_FILE),
                              "size": len(_FILE)}])
    return spec, img


_FILE = random.Random(93).randbytes(1_500_000)


def _weights(tmp_path: Path) -> bytes:
    data = random.Random(92).randbytes(3_000_000)
    (tmp_path / "www" / "m").mkdir(parents=True)
    (tmp_path / "www" / "m" / "w.bin").write_bytes(data)
    (tmp_path / "www" / "m" / "c.json").write_bytes(b"{}")
    (tmp_path / "www" / "m" / "f.bin").write_bytes(_FILE)
    return data


def test_default_build_writes_each_byte_once_and_rebuilds_from_the_earlier_bundle(
        registry: Registry, tmp_path: Path, file_server: FileServerFactory) -> None:
    """Big blobs go straight into the bundle (not into the cache); a rebuild downloads nothing, copying them from
    the earlier bundle; the bundle is byte-for-byte the one --cache-blobs (the cache path) writes."""
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, img = _direct_spec(tmp_path, registry, srv, weights)
    key, pub = keypair(tmp_path)
    cached = build(spec, tmp_path / "cached.tar", tmp_path / "c1", "--cache-blobs", key=key, hosts=[registry.host])
    direct = build(spec, tmp_path / "direct.tar", tmp_path / "c2", key=key, hosts=[registry.host])
    a, b = (tmp_path / "cached.tar").read_bytes(), (tmp_path / "direct.tar").read_bytes()
    ms = tar_members(tmp_path / "cached.tar")
    lo, hi = ms[1].header_offset, ms[2].header_offset  # the signature member (ECDSA is randomized)
    assert len(a) == len(b) and a[:lo] == b[:lo] and a[hi:] == b[hi:]
    assert run_cli(["verify", tmp_path / "direct.tar", "--pub", pub]).exit_code == 0
    assert direct["downloadedBytes"] == cached["downloadedBytes"] > len(weights)
    big = [img.layer_digests[0], img.layer_digests[1], digest_of(weights), digest_of(_FILE)]
    assert all(_has_cache(tmp_path / "c1", d) for d in big)
    assert not any(_has_cache(tmp_path / "c2", d) for d in big)  # written once: into the bundle only
    assert _has_cache(tmp_path / "c2", img.layer_digests[2])  # small blobs still go through the cache
    # a rebuild downloads nothing: cached blobs from the cache, the others from the earlier bundle
    for cache in ("c1", "c2"):
        again = build(spec, tmp_path / f"again-{cache}.tar", tmp_path / cache, key=key, hosts=[registry.host])
        assert again["downloadedBytes"] == 0, cache
        assert run_cli(["verify", tmp_path / f"again-{cache}.tar", "--pub", pub]).exit_code == 0
    # ... also when it replaces the earlier bundle under the same name
    assert build(spec, tmp_path / "direct.tar", tmp_path / "c2", key=key, hosts=[registry.host])[
        "downloadedBytes"] == 0
    assert run_cli(["verify", tmp_path / "direct.tar", "--pub", pub]).exit_code == 0


def test_rebuild_downloads_again_what_earlier_bundles_no_longer_hold(
        registry: Registry, tmp_path: Path, file_server: FileServerFactory) -> None:
    """The record of earlier bundles is a hint: a bundle moved away or changed in place is not copied from."""
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, img = _direct_spec(tmp_path, registry, srv, weights)
    cache = tmp_path / "cache"
    build(spec, tmp_path / "one.tar", cache, hosts=[registry.host])
    big = len(img.layers[0]) + len(img.layers[1]) + len(weights) + len(_FILE)  # the blobs downloaded in place
    (tmp_path / "one.tar").rename(tmp_path / "moved.tar")  # e.g. to the USB stick
    assert build(spec, tmp_path / "two.tar", cache, hosts=[registry.host])["downloadedBytes"] == big
    # the same size, other bytes where the weights lie (mtime changes): downloaded again, and the bundle is right
    data = bytearray((tmp_path / "two.tar").read_bytes())
    at = bytes(data).index(weights)
    data[at + 10] ^= 1
    (tmp_path / "two.tar").write_bytes(bytes(data))
    three = build(spec, tmp_path / "three.tar", cache, hosts=[registry.host])
    assert three["downloadedBytes"] == big
    assert blob(tmp_path / "three.tar", digest_of(weights)) == weights
    # changed without a trace in the file's identity: the copy's hash check catches it, nothing is written
    data = bytearray((tmp_path / "three.tar").read_bytes())
    at = bytes(data).index(_FILE)
    data[at + 5] ^= 1
    st = (tmp_path / "three.tar").stat()
    (tmp_path / "three.tar").write_bytes(bytes(data))
    os.utime(tmp_path / "three.tar", ns=(st.st_atime_ns, st.st_mtime_ns))
    outdir = tmp_path / "out"
    outdir.mkdir()
    build(spec, outdir / "four.tar", cache, hosts=[registry.host], expect=1)
    assert "changed since it was written" in _last_error() and digest_of(_FILE) in _last_error()
    assert list(outdir.iterdir()) == []
    assert build(spec, outdir / "four.tar", cache, hosts=[registry.host])["downloadedBytes"] >= len(_FILE)
    assert blob(outdir / "four.tar", digest_of(_FILE)) == _FILE


def test_split_build_downloads_into_the_parts(registry: Registry, tmp_path: Path,
                                              file_server: FileServerFactory) -> None:
    """--split takes the same path: blobs (and segments of blobs cut across parts) are downloaded straight into
    the parts, segment digests computed on the way; every part verifies alone, SHA256SUMS matches, and rebuilds
    (split or not) from those parts download nothing."""
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, _ = _direct_spec(tmp_path, registry, srv, weights)
    key, pub = keypair(tmp_path)
    out = tmp_path / "parts" / "b.tar"
    out.parent.mkdir()
    cache = tmp_path / "cache"
    s = build(spec, out, cache, "--split", "1500000", key=key, hosts=[registry.host])
    parts = [Path(p["path"]) for p in s["parts"]]
    assert len(parts) >= 5 and all(p.stat().st_size <= 1_500_000 for p in parts)
    assert not _has_cache(cache, digest_of(weights))
    sums = (out.parent / "SHA256SUMS").read_text()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out.parent).returncode == 0, sums
    for p in parts:
        assert run_cli(["verify", p, "--pub", pub]).exit_code == 0, p
    res = run_cli(["verify", *parts, "--pub", pub])
    assert res.exit_code == 0, res.stderr
    whole = build(spec, tmp_path / "whole.tar", cache, key=key, hosts=[registry.host])
    assert whole["downloadedBytes"] == 0
    assert blob(tmp_path / "whole.tar", digest_of(weights)) == weights
    again = tmp_path / "again" / "b.tar"
    again.parent.mkdir()
    s2 = build(spec, again, cache, "--split", "1500000", key=key, hosts=[registry.host])
    assert s2["downloadedBytes"] == 0
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=again.parent).returncode == 0
    assert run_cli(["verify", *[Path(p["path"]) for p in s2["parts"]], "--pub", pub]).exit_code == 0


def test_direct_download_resumes_in_place(registry: Registry, tmp_path: Path,
                                          file_server: FileServerFactory) -> None:
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, _ = _direct_spec(tmp_path, registry, srv, weights)
    srv.fail_after("/m/w.bin", 1_100_000)
    out = tmp_path / "b.tar"
    build(spec, out, tmp_path / "cache", hosts=[registry.host])
    gets = [(r.range, r.status) for r in srv.requests if r.path == "/m/w.bin" and r.method == "GET"]
    assert gets == [(None, 200), ("bytes=1100000-", 206)]
    assert blob(out, digest_of(weights)) == weights


def test_direct_refuses_wrong_bytes_and_leaves_nothing(registry: Registry, tmp_path: Path,
                                                       file_server: FileServerFactory) -> None:
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, _ = _direct_spec(tmp_path, registry, srv, weights)
    bad = bytearray(weights)
    bad[2_000_000] ^= 1
    (tmp_path / "www" / "m" / "w.bin").write_bytes(bytes(bad))  # same size, other content
    outdir = tmp_path / "out"
    outdir.mkdir()
    build(spec, outdir / "b.tar", tmp_path / "cache", hosts=[registry.host], expect=1)
    assert f"digest mismatch: expected {digest_of(weights)}, got {digest_of(bytes(bad))}" in _last_error()
    assert "cache" not in _last_error()
    assert list(outdir.iterdir()) == []  # no bundle, no temp file


@pytest.mark.parametrize("direct", [False, True])
def test_delta_never_downloads_what_the_site_has(registry: Registry, tmp_path: Path,
                                                 file_server: FileServerFactory, direct: bool) -> None:
    weights = _weights(tmp_path)
    srv = file_server(tmp_path / "www")
    spec, img = _direct_spec(tmp_path, registry, srv, weights)
    inv = tmp_path / "site.json"
    inv.write_text(json.dumps({"format": "hydra-bundle-inventory/v1", "blobs": [
        {"digest": digest_of(weights), "size": len(weights)},
        {"digest": img.layer_digests[0], "size": len(img.layers[0])}]}))
    out = tmp_path / "b.tar"
    flags = ["--site-inventory", inv, *([] if direct else ["--cache-blobs"])]
    s = build(spec, out, tmp_path / "cache", *flags, hosts=[registry.host])
    assert s["omittedBlobs"] == 2 and s["omittedBytes"] == len(weights) + len(img.layers[0])
    assert not any(r.path == "/m/w.bin" for r in srv.requests)  # never fetched
    assert s["downloadedBytes"] < len(img.layers[1]) + len(_FILE) + 100_000
    assert _has(out, digest_of(weights), img.layer_digests[0], img.layer_digests[1]) == [False, False, True]


# ---------------------------------------------------------------- TLS registry (--tls-ca)


def test_tls_registry_with_site_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry behind a private CA: --tls-ca trusts it (blob bodies on the lean path too); without it the
    build fails naming the certificate problem."""
    from hydra_bundle.httpio import FastBody, fast_get

    with Registry(tls=True) as reg:
        img = make_image([1_500_000, 2000], 95)
        monkeypatch.setenv("SSL_CERT_FILE", str(reg.ca_cert))  # for the test's own push client only
        push_image(reg.url, "tls/app", "1", img)
        monkeypatch.delenv("SSL_CERT_FILE")
        blob_url = f"{reg.url}/v2/tls/app/blobs/{img.layer_digests[0]}"
        body = fast_get(blob_url, {}, str(reg.ca_cert))
        assert isinstance(body, FastBody) and body.status_code == 200
        body.close()
        assert fast_get(blob_url, {}, True) is None  # unknown CA: left to httpx, which reports it

        spec = write_spec(tmp_path / "s.yaml", images=[{"ref": f"{reg.host}/tls/app:1"}])
        for direct in (["--cache-blobs"], []):
            out = tmp_path / f"b{len(direct)}.tar"
            build(spec, out, tmp_path / f"c{len(direct)}", "--tls-ca", reg.ca_cert, *direct)
            assert blob(out, img.layer_digests[0]) == img.layers[0]
        build(spec, tmp_path / "x.tar", tmp_path / "c9", expect=1)
        assert "CERTIFICATE_VERIFY_FAILED" in _last_error() and reg.host in _last_error()
