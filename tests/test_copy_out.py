"""Copying images out of a bundle with skopeo (and podman when installed): which digest lands on the site registry.

The commands and outcomes checked here are the ones docs/bundle-format.md ("Copying images out of a bundle") lists.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.bundles import component, digest_of, read_index, run_cli, write_spec
from tests.support.images import Image, get_manifest, make_image, make_index, push_image, push_index
from tests.support.registry import Registry

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")]


def _repo(name: str) -> str:
    return f"t{uuid.uuid4().hex[:10]}/{name}"


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=300)


def _build(tmp_path: Path, refs: list[str], host: str, images: list[dict] | None = None) -> Path:
    spec = write_spec(tmp_path / "s.yaml", images=images or [{"ref": r} for r in refs])
    out = tmp_path / "b.tar"
    res = run_cli(["build", "--no-agent-kit", "--unsigned", spec, "-o", out, "--cache-dir", tmp_path / "cache",
                   "--insecure-registry", host], env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert res.exit_code == 0, res.stderr
    return out


def _site_digest(site: Registry, repo: str, tag: str) -> str:
    r = get_manifest(site.host, repo, tag)
    assert r.status_code == 200, r.text
    assert r.headers["docker-content-digest"] == digest_of(r.content)
    return str(r.headers["docker-content-digest"])


def _multi(seed: int, docker: bool) -> list[Image]:
    return [make_image([700], seed, "linux/amd64", docker), make_image([700], seed + 1, "linux/arm64/v8", docker)]


def test_skopeo_copy_out_keeps_upstream_digests(registry: Registry, fresh_registry: Registry,
                                                 tmp_path: Path) -> None:
    """Every manifest type, `skopeo copy --all --preserve-digests` and a single-image copy, against upstream."""
    oci_list, docker_list = _multi(301, False), _multi(311, True)
    oci_img, docker_img = make_image([900], 321), make_image([900], 322, docker=True)
    repos = {k: _repo(k) for k in ("oci-index", "docker-list", "oci-manifest", "docker-manifest")}
    upstream = {
        "oci-index": push_index(registry.host, repos["oci-index"], "1", make_index(oci_list), oci_list),
        "docker-list": push_index(registry.host, repos["docker-list"], "1", make_index(docker_list, True),
                                  docker_list),
        "oci-manifest": push_image(registry.host, repos["oci-manifest"], "1", oci_img),
        "docker-manifest": push_image(registry.host, repos["docker-manifest"], "1", docker_img),
    }
    refs = {k: f"{registry.host}/{r}:1" for k, r in repos.items()}
    # multi-arch images carry every platform (a copy with --all needs every child)
    images = [{"ref": r, "allPlatforms": k.endswith(("index", "list"))} for k, r in refs.items()]
    out = _build(tmp_path, list(refs.values()), registry.host, images)
    idx = read_index(out)
    site = fresh_registry

    got: dict[str, str] = {}
    for k, ref in refs.items():
        cp = _run("skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                  f"oci-archive:{out}:{ref}", f"docker://{site.host}/{k}:all")
        assert cp.returncode == 0, (k, cp.stderr)
        got[k] = _site_digest(site, k, "all")
    # OCI-typed images land with their upstream digest (a filtered index keeps its original bytes)
    assert got["oci-index"] == upstream["oci-index"] and got["oci-manifest"] == upstream["oci-manifest"]
    # Docker-typed ones: upstream when skopeo looks up Docker-typed index.json entries, else the small OCI index
    for k in ("docker-list", "docker-manifest"):
        c = component(idx, "images", ref=refs[k])
        assert got[k] in (upstream[k], c["layoutDigest"]), k
    # both lists' children always keep their digests (every platform was carried)
    for k, children in (("oci-index", oci_list), ("docker-list", docker_list)):
        for child in children:
            by_digest = get_manifest(site.host, k, child.digest)
            assert by_digest.status_code == 200 and by_digest.content == child.manifest

    # a single-image copy (no --all) of a Docker v2 manifest keeps its digest with every skopeo
    cp = _run("skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", "--override-arch", "amd64",
              f"oci-archive:{out}:{refs['docker-manifest']}", f"docker://{site.host}/docker-manifest:one")
    assert cp.returncode == 0, cp.stderr
    assert _site_digest(site, "docker-manifest", "one") == upstream["docker-manifest"]
    # …and of a multi-arch image turns it into the chosen platform's child (upstream child digest)
    cp = _run("skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", "--override-arch", "arm64",
              f"oci-archive:{out}:{refs['docker-list']}", f"docker://{site.host}/docker-list:one")
    assert cp.returncode == 0, cp.stderr
    assert _site_digest(site, "docker-list", "one") == docker_list[1].digest

    # the `lock`-pinned reference of an OCI image is pullable from the site after the copy
    assert get_manifest(site.host, "oci-index", upstream["oci-index"]).status_code == 200


def test_copy_all_of_a_platform_filtered_image_fails(registry: Registry, fresh_registry: Registry,
                                                     tmp_path: Path) -> None:
    """The trade-off of the platform filter: the index is upstream's, so `--all` misses the left-out children."""
    imgs = _multi(351, False)
    repo = _repo("filtered")
    push_index(registry.host, repo, "1", make_index(imgs), imgs)
    ref = f"{registry.host}/{repo}:1"
    out = _build(tmp_path, [ref], registry.host)  # linux/amd64 only
    cp = _run("skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
              f"oci-archive:{out}:{ref}", f"docker://{fresh_registry.host}/filtered:1")
    assert cp.returncode != 0
    assert imgs[1].digest.removeprefix("sha256:").encode() in cp.stderr  # the arm64 child is not in the bundle
    cp = _run("skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false", "--override-arch", "amd64",
              f"oci-archive:{out}:{ref}", f"docker://{fresh_registry.host}/filtered:1")
    assert cp.returncode == 0, cp.stderr
    assert _site_digest(fresh_registry, "filtered", "1") == imgs[0].digest


def test_all_platforms_carries_every_child(registry: Registry, tmp_path: Path) -> None:
    imgs = [*_multi(331, False), make_image([500], 333, "linux/s390x")]
    repo = _repo("every")
    idig = push_index(registry.host, repo, "1", make_index(imgs), imgs)
    ref = f"{registry.host}/{repo}:1"
    out = _build(tmp_path, [ref], registry.host, [{"ref": ref, "allPlatforms": True}])
    c = component(read_index(out), "images", ref=ref)
    assert c["digest"] == idig
    assert c["platforms"] == ["linux/amd64", "linux/arm64/v8", "linux/s390x"]
    assert {i.digest for i in imgs} | {d for i in imgs for d in i.layer_digests} <= set(c["blobs"])


def test_all_platforms_with_platforms_is_refused(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", images=[{"ref": "example.com/a:1", "allPlatforms": True,
                                                    "platforms": ["linux/amd64"]}])
    res = run_cli(["lint", spec])
    assert res.exit_code != 0
    assert "give either platforms or allPlatforms: true, not both" in res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
@pytest.mark.parametrize("docker", [False, True], ids=["oci-manifest", "docker-manifest"])
def test_podman_pull_records_which_digest(registry: Registry, tmp_path: Path, docker: bool) -> None:
    """`podman pull oci-archive:`: the digest podman records (see bundle-format.md)."""
    img = make_image([600], 341 + docker, docker=docker)
    repo = _repo("podman")
    push_image(registry.host, repo, "1", img)
    ref = f"{registry.host}/{repo}:1"
    out = _build(tmp_path, [ref], registry.host)
    wrapper = component(read_index(out), "images", ref=ref).get("layoutDigest")
    run_root = tempfile.mkdtemp(prefix="hb-podman-")  # podman wants a runroot under 50 characters
    podman = ["podman", "--root", str(tmp_path / "proot"), "--runroot", run_root, "--storage-driver", "vfs"]
    try:
        pulled = _run(*podman, "pull", f"oci-archive:{out}:{ref}")
        if pulled.returncode != 0 and b"newuidmap" in pulled.stderr + pulled.stdout:
            pytest.skip(f"podman cannot run here: {pulled.stderr.decode()[-200:]}")
        assert pulled.returncode == 0, pulled.stderr
        image_id = pulled.stdout.decode().split()[-1]
        seen = _run(*podman, "image", "inspect", "--format", "{{.Digest}}", image_id)
        assert seen.returncode == 0, seen.stderr
        # OCI: upstream; Docker: upstream where podman looks up Docker-typed entries, else the small OCI index
        assert seen.stdout.decode().strip() in ((img.digest, wrapper) if docker else (img.digest,))
    finally:
        _run(*podman, "system", "reset", "--force")
        shutil.rmtree(run_root, ignore_errors=True)
