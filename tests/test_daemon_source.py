"""docker-daemon: image refs, through podman's Docker-compatible API (a real engine API, no Docker needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from hydra_bundle.builder.build import Builder, BuildOptions
from hydra_bundle.spec import load_spec
from tests.support.images import make_image, push_image

pytestmark = pytest.mark.slow


@pytest.fixture
def podman(tmp_path: Path, registry):  # type: ignore[no-untyped-def]
    if not shutil.which("podman"):
        if os.environ.get("CI") == "true":
            pytest.fail("podman is not installed (scripts/setup.sh installs it)")
        pytest.skip("podman is not installed: apt-get install podman")
    root = tmp_path / "podman"
    (root / "graph").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    (root / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (root / "containers.conf").write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
           "CONTAINERS_CONF": str(root / "containers.conf")}
    sock = root / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.1)
    yield env, f"unix://{sock}"
    proc.terminate()
    proc.wait(10)


def test_docker_daemon_image_is_bundled_as_oci(podman, registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env, host = podman
    img = make_image([2000, 3000], seed=77)
    push_image(registry.host, "daemon/src", "v1", img)
    subprocess.run(["podman", "pull", "-q", f"{registry.host}/daemon/src:v1"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["podman", "tag", f"{registry.host}/daemon/src:v1", "localhost/only-local:1"], env=env, check=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: hydra-bundle/v1\nkind: BundleSpec\nmetadata: {name: d, version: '1', sequence: 1}\n"
                    "images:\n  - ref: docker-daemon:localhost/only-local:1\n")
    os.environ["DOCKER_HOST"] = host
    try:
        opts = BuildOptions(cache_dir=tmp_path / "c", unsigned=True, agent_kit=False)
        res = Builder(load_spec(spec), opts).build(tmp_path / "b.tar")
    finally:
        del os.environ["DOCKER_HOST"]
    (image,) = res.index.components.images
    assert image.ref == "localhost/only-local:1" and image.source == "docker-daemon"
    assert image.platforms == ["linux/amd64"]
    # the layers' uncompressed content matches the image's diff_ids (what the engine stores)
    config = json.loads(img.config)
    with tarfile.open(tmp_path / "b.tar") as tf:
        names = set(tf.getnames())
    assert {f"blobs/sha256/{d.split(':')[1]}" for d in config["rootfs"]["diff_ids"]} <= names
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{tmp_path / 'b.tar'}:localhost/only-local:1"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
