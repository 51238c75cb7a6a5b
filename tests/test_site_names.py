"""Image names keep their registry on the site: two registries' images with one path stay apart, every spelling
of an image gets one name, and a real containerd pulling by upstream names through the hosts.toml that
`agent mirror-config` writes gets exactly the bundle's image — or nothing, never another registry's image."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from hydra_bundle.apply.rewrite import rewrite_image
from hydra_bundle.builder.build import Builder, BuildOptions
from hydra_bundle.oci.sitename import site_name
from hydra_bundle.spec import load_spec
from tests.support import agent_fixtures
from tests.support.agent import AgentProc, run_cli
from tests.support.agent_fixtures import Keys
from tests.support.images import Image, make_image, push_image
from tests.support.registry import Registry

agent_keys = agent_fixtures.agent_keys  # fixture

pytestmark = pytest.mark.slow

# upstream name → (path on the local stand-in registry, seed): the same path on two registries, different bytes
UPSTREAM = {
    "ghcr.io/example/app:1.0": ("ghcr/example/app", 701),
    "quay.io/example/app:1.0": ("quay/example/app", 702),
    "registry.k8s.io/pause:3.9": ("k8s/pause", 703),
    "docker.io/library/ubuntu:24.04": ("dockerhub/library/ubuntu", 704),
}
MIRRORS = {"ghcr.io": "ghcr", "quay.io": "quay", "registry.k8s.io": "k8s", "docker.io": "dockerhub"}


class Containerd:
    """A private containerd: its own root, state and socket in a temp dir, no CRI plugin."""

    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "containerd.sock"
        cfg = root / "config.toml"
        disabled = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper"]
        cfg.write_text(f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
                       f"disabled_plugins = {json.dumps(disabled)}\n"
                       f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
                       '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
        self.log = open(root / "containerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["containerd", "--config", str(cfg)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError((root / "containerd.log").read_text()[-2000:])
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["ctr", "--address", str(self.sock), "--namespace", "hydra-test", *args],
                           capture_output=True, text=True, timeout=timeout)
        assert not check or p.returncode == 0, f"ctr {' '.join(args)}: {p.stderr}"
        return p

    def image_digest(self, ref: str) -> str | None:
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == ref:
                return next(c for c in cols if c.startswith("sha256:"))
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Containerd]:
    if shutil.which("containerd") is None or shutil.which("ctr") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("containerd is missing (scripts/setup.sh installs it)")
        pytest.skip("needs containerd and root")
    root = tmp_path / "ctrd"
    root.mkdir()
    c = Containerd(root)
    try:
        yield c
    finally:
        c.stop()


def test_names_keep_their_registry_through_publish_rewrite_and_a_containerd_mirror(
        tmp_path: Path, agent_keys: Keys, containerd: Containerd) -> None:
    images: dict[str, Image] = {}
    with Registry() as upstream:
        for ref, (path, seed) in UPSTREAM.items():
            images[ref] = make_image([3_000 + seed, 2_000], seed=seed)
            push_image(upstream.host, path, ref.rsplit(":", 1)[1], images[ref])
        # the spec names the upstream images (ubuntu spelt two ways); the build pulls them through mirrors
        spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
                "metadata": {"name": "names", "version": "1.0.0", "sequence": 1},
                "images": [{"ref": "ghcr.io/example/app:1.0"}, {"ref": "quay.io/example/app:1.0"},
                           {"ref": "registry.k8s.io/pause:3.9"}, {"ref": "ubuntu:24.04"}]}
        (tmp_path / "spec.yaml").write_text(json.dumps(spec))
        bundle = tmp_path / "names.tar"
        opts = BuildOptions(cache_dir=tmp_path / "cache", key_path=agent_keys.release_key, insecure={upstream.host},
                            mirrors={src: f"{upstream.host}/{dst}" for src, dst in MIRRORS.items()},
                            agent_kit=False)
        Builder(load_spec(tmp_path / "spec.yaml"), opts).build(bundle)
    # the upstream stand-ins are gone: whatever containerd gets now comes from the agent

    with AgentProc(tmp_path / "agent", [agent_keys.release_pub]) as agent:
        site = {"cluster_name": "c", "domain": "d", "registry": f"127.0.0.1:{agent.registry_port}",
                "file_server": f"http://127.0.0.1:{agent.files_port}"}
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["site"] = site
        agent.config.write_text(yaml.safe_dump(cfg))
        agent.start()
        agent.drop_file(bundle)
        agent.wait_state("names", "1.0.0", "complete")

        # published: one repository per registry, the host in the name
        repos = httpx.get(f"http://{agent.registry}/v2/_catalog").json()["repositories"]
        assert repos == ["docker.io/library/ubuntu", "ghcr.io/example/app", "quay.io/example/app",
                         "registry.k8s.io/pause"]
        for ref, img in images.items():
            name = site_name(ref)
            r = httpx.get(f"http://{agent.registry}/v2/{name.repository}/manifests/{name.tag}",
                          headers={"Accept": img.media_type})
            assert r.status_code == 200 and r.headers["docker-content-digest"] == img.digest, ref

        # containerd, pulling by upstream names through the hosts.toml files `agent mirror-config` writes
        hosts = tmp_path / "hosts"
        res = run_cli("agent", "mirror-config", "--config", str(agent.config), "--format", "containerd",
                      "-o", str(hosts))
        assert res.returncode == 0, res.stderr
        certs = hosts / "etc/containerd/certs.d"
        assert sorted(p.name for p in certs.iterdir()) == ["docker.io", "ghcr.io", "quay.io", "registry.k8s.io"]
        for ref, img in images.items():
            containerd.ctr("content", "fetch", "--hosts-dir", str(certs), ref, timeout=120)
            assert containerd.image_digest(ref) == img.digest, ref
        # Docker Hub's other spellings reach the same image
        containerd.ctr("content", "fetch", "--hosts-dir", str(certs), "docker.io/ubuntu:24.04", timeout=120)
        assert containerd.image_digest("docker.io/ubuntu:24.04") == images["docker.io/library/ubuntu:24.04"].digest

        # an image the bundle does not carry is never answered with another registry's image of that name
        miss = containerd.ctr("content", "fetch", "--hosts-dir", str(certs), "quay.io/pause:3.9", check=False,
                              timeout=120)
        assert miss.returncode != 0
        assert containerd.image_digest("quay.io/pause:3.9") is None
        asked = httpx.get(f"http://{agent.registry}/v2/quay.io/pause/manifests/3.9", params={"ns": "quay.io"})
        assert asked.status_code == 404

        # containers/image (CRI-O, podman, skopeo) through the registries.conf drop-in `mirror-config` writes
        res = run_cli("agent", "mirror-config", "--config", str(agent.config), "--format", "crio",
                      "-o", str(tmp_path / "crio"))
        assert res.returncode == 0, res.stderr
        conf = next((tmp_path / "crio").rglob("50-hydra-bundle.conf"))
        for ref, img in images.items():
            p = subprocess.run(["skopeo", "--registries-conf", str(conf), "inspect", "--raw", f"docker://{ref}"],
                               capture_output=True, timeout=60)
            assert p.returncode == 0, (ref, p.stderr)
            assert "sha256:" + hashlib.sha256(p.stdout).hexdigest() == img.digest, ref
        p = subprocess.run(["skopeo", "--registries-conf", str(conf), "inspect", "--raw", "--retry-times", "0",
                            "docker://quay.io/pause:3.9"], capture_output=True, timeout=120)
        assert p.returncode != 0 and hashlib.sha256(p.stdout).hexdigest() not in {
            d.digest.split(":")[1] for d in images.values()}

        # the name the apply steps rewrite manifests to is the one served (kubelet pulls it directly)
        for ref, img in images.items():
            direct = rewrite_image(ref, site["registry"])
            assert direct == f"{site['registry']}/{site_name(ref).repository}:{site_name(ref).tag}"
            p = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{direct}"],
                               capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
            assert "sha256:" + hashlib.sha256(p.stdout).hexdigest() == img.digest, ref
