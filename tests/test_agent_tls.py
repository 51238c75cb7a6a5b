"""TLS is the default on the site network: the embedded registry serves HTTPS with a leaf from the site CA, real
clients (skopeo, containerd through `mirror-config`) verify it with that CA, and plain HTTP happens only when the
config says so, with a warning."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from hydra_bundle.oci.sitename import site_name
from tests.support.agent import AgentProc
from tests.support.bundles import keypair, run_cli
from tests.support.images import make_image, push_image
from tests.support.registry import Registry
from tests.test_site_names import Containerd

pytestmark = pytest.mark.slow


def _bundle(tmp_path: Path, key: Path, upstream: Registry) -> tuple[Path, str, str]:
    img = make_image([4_000, 1_000], seed=random.Random(3).randint(1, 10_000))
    push_image(upstream.host, "tls/app", "1.0", img)
    ref = f"{upstream.host}/tls/app:1.0"
    spec = {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": "tls", "version": "1.0.0", "sequence": 1}, "images": [{"ref": ref}]}
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    out = tmp_path / "tls.tar"
    res = run_cli(["build", "--no-agent-kit", tmp_path / "spec.yaml", "-o", out, "--key", key, "--cache-dir",
                   tmp_path / "c", "--insecure-registry", upstream.host, "-q"])
    assert res.exit_code == 0, res.output
    return out, ref, img.digest


def _tls_agent(root: Path, pub: Path, **registry: object) -> AgentProc:
    agent = AgentProc(root, [pub])
    cfg = yaml.safe_load(agent.config.read_text())
    cfg["registry"] = {"listen": f"127.0.0.1:{agent.registry_port}", **registry}
    cfg["site"] = {"cluster_name": "c", "domain": "d", "registry": f"127.0.0.1:{agent.registry_port}",
                   "file_server": f"http://127.0.0.1:{agent.files_port}"}
    agent.config.write_text(yaml.safe_dump(cfg))
    return agent


def test_the_registry_serves_https_by_default_and_clients_verify_it(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, "k")
    with Registry() as upstream:
        bundle, ref, digest = _bundle(tmp_path, key, upstream)
    with _tls_agent(tmp_path / "a", pub) as agent:
        agent.start()
        agent.drop_file(bundle)
        agent.wait_state("tls", "1.0.0", "complete")
        assert "plain HTTP" not in agent.log.read_text()
        ca = tmp_path / "ca.crt"
        assert agent.cli("ca", "-o", str(ca)).returncode == 0
        base = f"https://{agent.registry}"
        r = httpx.get(f"{base}/v2/", verify=ssl.create_default_context(cafile=str(ca)))
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):                       # no plain HTTP on the TLS port
            httpx.get(f"http://{agent.registry}/v2/", timeout=5)
        with pytest.raises(httpx.ConnectError):                    # and the certificate is not trusted blindly
            httpx.get(f"{base}/v2/", timeout=5)
        # skopeo verifying with the site CA (no --tls-verify=false)
        certs = tmp_path / "certs.d"
        certs.mkdir()
        shutil.copyfile(ca, certs / "ca.crt")
        name = f"{site_name(ref).repository}:1.0"
        p = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(certs), f"docker://{agent.registry}/{name}"],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "sha256:" + hashlib.sha256(p.stdout).hexdigest() == digest

        # mirror-config: https, and the CA beside each hosts.toml and for CRI-O/podman
        out = tmp_path / "mirrors"
        res = run_cli(["agent", "mirror-config", "--config", agent.config, "-o", out])
        assert res.exit_code == 0, res.output
        up = ref.split("/", 1)[0]
        hosts = (out / f"etc/containerd/certs.d/{up}/hosts.toml").read_text()
        assert f'[host."https://{agent.registry}/v2/' in hosts
        assert f'ca = "/etc/containerd/certs.d/{up}/hydra-bundle-ca.crt"' in hosts
        assert (out / f"etc/containerd/certs.d/{up}/hydra-bundle-ca.crt").read_bytes() == ca.read_bytes()
        assert (out / f"etc/containers/certs.d/{agent.registry}/ca.crt").read_bytes() == ca.read_bytes()

        # a real containerd pulls by the upstream name through those files, verifying the certificate
        if shutil.which("containerd") and os.geteuid() == 0:
            root = tmp_path / "ctrd"
            root.mkdir()
            ctrd = Containerd(root)
            try:
                certs_dir = out / "etc/containerd/certs.d"
                text = hosts.replace(f"/etc/containerd/certs.d/{up}/hydra-bundle-ca.crt",
                                     str(certs_dir / up / "hydra-bundle-ca.crt"))
                (certs_dir / up / "hosts.toml").write_text(text)
                ctrd.ctr("content", "fetch", "--hosts-dir", str(certs_dir), ref, timeout=120)
                assert ctrd.image_digest(ref) == digest
            finally:
                ctrd.stop()


def test_plain_http_only_when_the_config_says_so_with_a_warning(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path, "k")
    with _tls_agent(tmp_path / "a", pub, tls=False) as agent:
        agent.start()
        assert httpx.get(f"http://{agent.registry}/v2/").status_code == 200
        log = agent.log.read_text()
        assert "level=warning" in log and "registry serves plain HTTP (registry.tls: false)" in log


def test_read_only_basic_auth_with_htpasswd(tmp_path: Path) -> None:
    import bcrypt

    key, pub = keypair(tmp_path, "k")
    with Registry() as upstream:
        bundle, ref, digest = _bundle(tmp_path, key, upstream)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("puller:" + bcrypt.hashpw(b"pull pw", bcrypt.gensalt(rounds=8)).decode() + "\n")
    pw = tmp_path / "pull.pw"
    pw.write_text("pull pw\n")
    with _tls_agent(tmp_path / "a", pub, htpasswd=str(htpasswd)) as agent:
        cfg = yaml.safe_load(agent.config.read_text())
        cfg["site"]["registry_auth"] = {"username": "puller", "password_file": str(pw)}
        agent.config.write_text(yaml.safe_dump(cfg))
        agent.start()
        agent.drop_file(bundle)
        agent.wait_state("tls", "1.0.0", "complete")
        ca = tmp_path / "ca.crt"
        agent.cli("ca", "-o", str(ca))
        verify = ssl.create_default_context(cafile=str(ca))
        base = f"https://{agent.registry}/v2/"
        r = httpx.get(base, verify=verify)
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm="hydra-bundle"'
        assert httpx.get(base, verify=verify, auth=("puller", "wrong")).status_code == 401
        assert httpx.get(base, verify=verify, auth=("nobody", "pull pw")).status_code == 401
        assert httpx.get(base, verify=verify, auth=("puller", "pull pw")).status_code == 200
        assert "pull pw" not in agent.log.read_text()
        certs = tmp_path / "certs.d"
        certs.mkdir()
        shutil.copyfile(ca, certs / "ca.crt")
        name = f"{site_name(ref).repository}:1.0"
        args = ["skopeo", "inspect", "--raw", "--cert-dir", str(certs)]
        assert subprocess.run([*args, f"docker://{agent.registry}/{name}"], capture_output=True,
                              timeout=60).returncode != 0
        p = subprocess.run([*args, "--creds", "puller:pull pw", f"docker://{agent.registry}/{name}"],
                           capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "sha256:" + hashlib.sha256(p.stdout).hexdigest() == digest
        # containerd pulls with the header mirror-config writes
        out = tmp_path / "mirrors"
        assert run_cli(["agent", "mirror-config", "--config", agent.config, "-o", out]).exit_code == 0
        up = ref.split("/", 1)[0]
        certs_dir = out / "etc/containerd/certs.d"
        hosts = (certs_dir / up / "hosts.toml").read_text()
        assert "authorization = \"Basic " in hosts
        if shutil.which("containerd") and os.geteuid() == 0:
            (certs_dir / up / "hosts.toml").write_text(
                hosts.replace(f"/etc/containerd/certs.d/{up}/hydra-bundle-ca.crt",
                              str(certs_dir / up / "hydra-bundle-ca.crt")))
            root = tmp_path / "ctrd"
            root.mkdir()
            ctrd = Containerd(root)
            try:
                ctrd.ctr("content", "fetch", "--hosts-dir", str(certs_dir), ref, timeout=120)
                assert ctrd.image_digest(ref) == digest
            finally:
                ctrd.stop()
