"""A real kube-apiserver + etcd on loopback for the apply tests (what shared/recipes/kube-apiserver/start.sh does).

Binaries come from ``$KUBEBUILDER_ASSETS`` (controller-runtime's envtest convention: a directory holding
``kube-apiserver`` and ``etcd``; ``setup-envtest`` fills one with modern binaries). Without it we look for the
offline recipe's build (``~/.cache/kube-apiserver-1.20.2-deb12u1-p1/kube-apiserver``, override with
``KUBE_APISERVER_CACHE``) plus ``etcd`` on PATH. The server runs with a static admin token (system:masters), a
self-signed serving certificate and no controller-manager: no namespace deletion, no GC, pods stay Pending.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.registry import free_port

ASSETS_ENV = "KUBEBUILDER_ASSETS"
RECIPE_CACHE = Path.home() / ".cache" / "kube-apiserver-1.20.2-deb12u1-p1"


class KubeError(RuntimeError):
    """The control plane failed to start."""


def find_binaries() -> tuple[Path, Path] | str:
    """(kube-apiserver, etcd), or a sentence saying why none were found."""
    assets = os.environ.get(ASSETS_ENV)
    if assets:
        d = Path(assets)
        api, etcd = d / "kube-apiserver", d / "etcd"
        if api.is_file() and etcd.is_file():
            return api, etcd
        return f"{ASSETS_ENV}={assets} does not hold both kube-apiserver and etcd"
    cache = Path(os.environ.get("KUBE_APISERVER_CACHE", RECIPE_CACHE))
    api = cache / "kube-apiserver"
    etcd = shutil.which("etcd")
    if api.is_file() and etcd:
        return api, Path(etcd)
    return (f"no kube-apiserver: set {ASSETS_ENV} to a directory with kube-apiserver and etcd (envtest), "
            f"or build the offline one with shared/recipes/kube-apiserver/build.sh (expected {api} and etcd "
            f"on PATH)")


def _version(binary: Path) -> tuple[int, int]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"v(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _self_signed(key_path: Path, cert_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class KubeAPIServer:
    """etcd + kube-apiserver on free 127.0.0.1 ports in a private temp dir; ``kubeconfig`` points at it."""

    def __init__(self, apiserver: Path, etcd: Path, *, startup_timeout: float = 90.0, start: bool = True) -> None:
        """With ``start=False`` only the certificates, ports and kubeconfig are prepared; ``start()`` later
        (to test clients that come up before the API server)."""
        self.apiserver, self.etcd = apiserver, etcd
        self.dir = Path(tempfile.mkdtemp(prefix="hydra-kube-"))
        self.kubeconfig = self.dir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.port = 0
        self.timeout = startup_timeout
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            self._prepare()
            if start:
                self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "apiserver.crt"

    def log_tail(self, name: str = "apiserver", lines: int = 30) -> str:
        try:
            return "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.dir / log, "ab") as f:
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=self.dir)
        self._procs.append(p)
        return p

    def _prepare(self) -> None:
        pki = self.dir / "pki"
        pki.mkdir()
        _self_signed(pki / "apiserver.key", pki / "apiserver.crt")
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(sa.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                                      serialization.NoEncryption()))
        (pki / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        self.port = free_port()
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster:\n    server: \"{self.url}\"\n"
            f"    certificate-authority: \"{self.ca_file}\"\n"
            f"users:\n- name: admin\n  user: {{token: \"{self.token}\"}}\n"
            "contexts:\n- name: local\n  context: {cluster: local, user: admin, namespace: default}\n"
            "current-context: local\n")

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def start(self) -> None:
        """Start etcd + kube-apiserver and wait for /readyz."""
        timeout = self.timeout
        pki = self.dir / "pki"
        client, peer = free_port(), free_port()
        self._spawn([str(self.etcd), "--name", "default", "--data-dir", str(self.dir / "etcd-data"),
                     "--listen-client-urls", f"http://127.0.0.1:{client}",
                     "--advertise-client-urls", f"http://127.0.0.1:{client}",
                     "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-cluster", f"default=http://127.0.0.1:{peer}",
                     "--logger", "zap", "--log-level", "warn"], "etcd.log")
        args = [str(self.apiserver), f"--etcd-servers=http://127.0.0.1:{client}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--cert-dir={self.dir / 'certs'}", f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.key'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--api-audiences=https://kubernetes.default.svc", "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none", "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true"]  # as every real cluster: privileged DaemonSets (CSI, GPU) are allowed
        if _version(self.apiserver) < (1, 24):
            args.append("--insecure-port=0")  # removed in 1.24
        api = self._spawn(args, "apiserver.log")
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if api.poll() is not None:
                raise KubeError(f"kube-apiserver exited ({api.returncode}):\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"},
                              verify=ssl.create_default_context(cafile=str(self.ca_file)), timeout=2)
                if r.status_code == 200:
                    return
                last = f"/readyz -> {r.status_code}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.1)
        raise KubeError(f"kube-apiserver not ready after {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop kube-apiserver then etcd (by the PIDs we started) and remove the temp dir. Idempotent."""
        procs, self._procs = self._procs, []
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KubeAPIServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RolloutStandIn(threading.Thread):
    """What a bare kube-apiserver lacks (no kubelet, no controllers): every second, report Deployments,
    DaemonSets and StatefulSets as rolled out, except those whose name contains ``never`` (to test timeouts)."""

    def __init__(self, kubeconfig: Path, skip: str = "never"):
        super().__init__(daemon=True, name="rollout-stand-in")
        from kubernetes import client, config

        self.apps = client.AppsV1Api(config.new_client_from_config(str(kubeconfig)))
        self.skip = skip
        self.stop = threading.Event()

    def tick(self) -> None:
        for d in self.apps.list_deployment_for_all_namespaces().items:
            n = d.spec.replicas if d.spec.replicas is not None else 1
            st = d.status
            if self.skip not in d.metadata.name and (st.observed_generation != d.metadata.generation
                                                     or (st.available_replicas or 0) < n):
                self.apps.patch_namespaced_deployment_status(d.metadata.name, d.metadata.namespace, {"status": {
                    "observedGeneration": d.metadata.generation, "replicas": n, "updatedReplicas": n,
                    "readyReplicas": n, "availableReplicas": n}})
        for ds in self.apps.list_daemon_set_for_all_namespaces().items:
            if self.skip not in ds.metadata.name and ds.status.observed_generation != ds.metadata.generation:
                self.apps.patch_namespaced_daemon_set_status(ds.metadata.name, ds.metadata.namespace, {"status": {
                    "observedGeneration": ds.metadata.generation, "desiredNumberScheduled": 2,
                    "currentNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
                    "numberAvailable": 2, "numberMisscheduled": 0}})
        for ss in self.apps.list_stateful_set_for_all_namespaces().items:
            n = ss.spec.replicas if ss.spec.replicas is not None else 1
            if self.skip not in ss.metadata.name and ss.status.observed_generation != ss.metadata.generation:
                self.apps.patch_namespaced_stateful_set_status(ss.metadata.name, ss.metadata.namespace, {"status": {
                    "observedGeneration": ss.metadata.generation, "replicas": n, "readyReplicas": n,
                    "updatedReplicas": n, "currentReplicas": n}})

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.tick()
            except Exception:
                pass

    def __enter__(self) -> RolloutStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(5)
