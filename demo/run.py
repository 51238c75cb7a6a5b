"""``make demo``: the whole journey on one machine, offline.

  internet stand-ins → hydra-bundle build (through --mirror; the agent kit for this host's Python) → "USB" copy →
  the agent installed from the bundle's own kit (install.sh, with the network cut off where we can) → the agent
  verifies, ingests, serves → applies to a local kube-apiserver and MariaDB (when available) →
  final `agent status` and how to pull from the embedded registry. Everything runs in a temp dir and is
  stopped and removed at the end (--keep leaves it for a look around).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from demo import internet  # noqa: E402
from hydra_bundle.spec import load_spec  # noqa: E402
from tests.support.registry import free_port  # noqa: E402

HB = [sys.executable, "-m", "hydra_bundle.cli.main"]


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m" if sys.stdout.isatty() else f"==> {msg}", flush=True)


def info(msg: str) -> None:
    print(f"    {msg}", flush=True)


def hb(*args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HB, *args], check=check, text=True, capture_output=capture)


def find_fixtures(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("HYDRA_BUNDLE_FIXTURES"), str(ROOT.parent / "shared" / "fixtures")):
        if cand and Path(cand, "SOURCES.md").exists():
            return Path(cand)
    raise SystemExit("demo: the upstream fixtures (Gateway API CRDs, charts) were not found: set "
                     "HYDRA_BUNDLE_FIXTURES=/path/to/shared/fixtures")


def overlay_spec(work: Path, net: internet.Internet) -> Path:
    """The repo's bundle-spec.yaml, with the model files' pins replaced by those of the generated stand-ins
    (the real weights are 1.5 GB) — everything else is used exactly as written."""
    data = yaml.safe_load((ROOT / "bundle-spec.yaml").read_text())
    for m in data.get("models", []):
        for f in m["files"]:
            f["sha256"] = net.model_pins[f["path"]]
            f.pop("size", None)
            base = m["base_url"].split("://", 1)[1]
            dest = net.root / base / f["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            assert net.model_dir is not None
            shutil.copy(net.model_dir / f["path"], dest)
    spec_dir = work / "spec"
    shutil.copytree(ROOT / "manifests", spec_dir / "manifests")
    path = spec_dir / "bundle-spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


class Controllers(threading.Thread):
    """Stands in for what a bare kube-apiserver lacks (no kubelet, no controllers): marks Deployments,
    DaemonSets and StatefulSets as rolled out, and plays the BaizeAI dataset controller — for each Dataset it
    downloads the model from the URI (with rclone's http backend when installed, as the real data loader
    does) and then reports READY."""

    def __init__(self, kubeconfig: Path, work: Path):
        super().__init__(daemon=True)
        from kubernetes import client, config

        api = config.new_client_from_config(str(kubeconfig))
        self.api = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        from tests.support.kube import RolloutStandIn

        self.rollouts = RolloutStandIn(kubeconfig)
        self.work = work
        self.stop = threading.Event()
        self.done: set[str] = set()

    def webhooks(self) -> None:
        """No pod runs here, so no admission webhook can answer: remove webhook configurations before the
        API server tries to call them (MetalLB's fail closed and would block its IPAddressPool)."""
        for w in self.admission.list_validating_webhook_configuration().items:
            self.admission.delete_validating_webhook_configuration(w.metadata.name)
            info(f"stand-in: removed ValidatingWebhookConfiguration {w.metadata.name} (no pods to serve it)")
        for w in self.admission.list_mutating_webhook_configuration().items:
            self.admission.delete_mutating_webhook_configuration(w.metadata.name)
            info(f"stand-in: removed MutatingWebhookConfiguration {w.metadata.name} (no pods to serve it)")

    def workloads(self) -> None:
        self.rollouts.tick()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.webhooks()
                self.workloads()
            except Exception:
                pass
            try:
                items = self.api.list_namespaced_custom_object("dataset.baizeai.io", "v1alpha1", "public",
                                                               "datasets")["items"]
            except Exception:
                continue
            for ds in items:
                name = ds["metadata"]["name"]
                if name in self.done:
                    continue
                uri = ds["spec"]["source"]["uri"]
                dest = self.work / "dataset" / name
                if shutil.which("rclone"):
                    ok = subprocess.run(["rclone", "copy", "--http-url", uri, ":http:", str(dest)],
                                        capture_output=True).returncode == 0
                else:
                    import httpx

                    ok = httpx.get(uri).status_code == 200
                if not ok:
                    continue
                files = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
                info(f"dataset controller stand-in: {name} loaded {len(files)} files from {uri}")
                self.api.patch_namespaced_custom_object_status(
                    "dataset.baizeai.io", "v1alpha1", "public", "datasets", name,
                    {"status": {"phase": "READY", "lastSucceedRound": 1}})
                self.done.add(name)


def start_site(work: Path, fixtures: Path, log: Callable[[str], None]) -> tuple[dict[str, Any], list[Any], list[str]]:
    """A local kube-apiserver and MariaDB when available. Returns (site config, things to stop, skipped)."""
    from tests.support import kube, mariadb

    site: dict[str, Any] = {}
    stops: list[Any] = []
    skipped: list[str] = []
    bins = kube.find_binaries()
    if isinstance(bins, str):
        skipped.append(f"Kubernetes steps: {bins}")
        return site, stops, skipped
    api = kube.KubeAPIServer(*bins)
    stops.append(api)
    log(f"kube-apiserver {api.url} ({bins[0]})")
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(str(api.kubeconfig)))
    for n in ("worker-1", "worker-2"):
        core.create_node({"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}})
    log("nodes worker-1, worker-2 (no GPU: nothing advertises nvidia.com/gpu); no kubelet or controllers: a "
        "stand-in marks workloads rolled out and plays the dataset controller")
    site.update(kubeconfig=str(api.kubeconfig))
    ctl = Controllers(api.kubeconfig, work)
    ctl.start()
    stops.append(ctl)
    if mariadb.missing_binaries() is None:
        db = mariadb.MariaDB()
        stops.append(db)
        db.execute("CREATE DATABASE hydra CHARACTER SET utf8mb4")
        db.execute("CREATE TABLE vendor (name VARCHAR(64) PRIMARY KEY, display_name JSON)", database="hydra")
        db.create_user("hydra", "demo-pw", "hydra")
        (work / "mysql.pw").write_text("demo-pw\n")
        site["mysql"] = {"dsn": f"mysql://hydra@127.0.0.1:{db.port}/hydra", "password_file": str(work / "mysql.pw")}
        log(f"MariaDB 127.0.0.1:{db.port}, database hydra, table vendor")
    else:
        skipped.append(f"MySQL step: {mariadb.missing_binaries()}")
    return site, stops, skipped


def kit_wheelhouse() -> Path:
    """The agent kit's dependency wheels for this host's Python, downloaded once and shared with the tests
    (``tests/support/kit.py``): the build takes them with ``--agent-wheelhouse`` (pip ``--no-index``) instead of
    asking PyPI for six targets on every run. A real build (no --agent-python) covers amd64 and arm64 × CPython
    3.11–3.13."""
    from tests.support.kit import dependency_wheels

    return dependency_wheels()[0].parent


def install_agent(bundle: Path, pub: Path, prefix: Path) -> Path:
    """What an operator runs on site: ``tar -xf BUNDLE install.sh`` and ``sh install.sh --pub KEY BUNDLE``.
    Here ``--no-systemd`` (the demo starts the agent itself) and, as root, with no network at all (``unshare -n``)."""
    site = prefix.parent
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(site), "install.sh"], check=True)
    cmd = ["sh", str(site / "install.sh"), "--pub", str(pub), str(bundle), "--prefix", str(prefix), "--no-systemd"]
    offline = os.geteuid() == 0 and shutil.which("unshare") is not None
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(site), "LANG": "C.UTF-8",
           "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    p = subprocess.run(["unshare", "-n", *cmd] if offline else cmd, env=env, capture_output=True, text=True)
    for line in p.stdout.splitlines():
        info(line)
    if p.returncode != 0:
        raise SystemExit(f"demo: install.sh failed (exit {p.returncode}):\n{p.stderr.strip()}")
    info("installed with no network (unshare -n), pip --no-index, from the bundle's kit alone" if offline else
         "installed from the bundle's kit alone (pip --no-index)")
    return prefix / "bin" / "hydra-bundle"


def helm_releases(kubeconfig: Path) -> list[str]:
    """``namespace/name revision N`` of every deployed release, from Helm's own records (Secrets owner=helm)."""
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    items = core.list_secret_for_all_namespaces(label_selector="owner=helm,status=deployed").items
    return sorted(f"{s.metadata.namespace}/{s.metadata.labels['name']} revision {s.metadata.labels['version']}"
                  for s in items)


def stop_all(things: list[Any]) -> None:
    for t in reversed(things):
        try:
            if isinstance(t, subprocess.Popen):
                t.send_signal(signal.SIGTERM)
                t.wait(20)
            elif isinstance(t, threading.Thread):
                t.stop.set()  # type: ignore[attr-defined]
            else:
                getattr(t, "remove", t.stop)()  # stop, and remove what it kept on disk (MariaDB's data dir)
        except Exception as e:
            print(f"    (cleanup: {e})", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--fixtures", default=None)
    ap.add_argument("--keep", action="store_true", help="leave the temp dir (and print where)")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    for tool in ("docker-registry",):
        if not shutil.which(tool):
            raise SystemExit(f"demo: {tool} is missing: run `make setup` (or apt-get install docker-registry)")
    fixtures = find_fixtures(args.fixtures)
    work = Path(tempfile.mkdtemp(prefix="hydra-demo-"))
    stops: list[Any] = []
    try:
        spec = load_spec(ROOT / "bundle-spec.yaml", use_examples=True)
        say("1/6 starting stand-ins for the internet")
        net = internet.start(spec, fixtures, work, info)
        stops.append(net)

        say("2/6 hydra-bundle build (through --mirror, as behind a proxy cache)")
        spec_path = overlay_spec(work, net)
        info("model weights: generated stand-ins (the real qwen3-0.6b files are 1.5 GB; their pins are in "
             "bundle-spec.yaml)")
        hb("keygen", str(work / "release"))
        mirrors = [a for m in net.mirrors for a in ("--mirror", m)]
        sets = [a for k, v in net.sets.items() for a in ("--set", f"{k}={v}")]
        bundle = work / "hydra-ws-1.0.0.tar"
        house = kit_wheelhouse()
        py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        hb("build", str(spec_path), "-o", str(bundle), "--key", str(work / "release.key"), "--cache-dir",
           str(work / "cache"), "--insecure-registry", net.registry.host, *mirrors, *sets,
           "--agent-python", py, "--agent-wheelhouse", str(house))
        hb("verify", str(bundle), "--pub", str(work / "release.pub"))

        say("3/6 carrying the bundle to the site (copy as .part, then rename: the USB convention)")
        drop, state = work / "site" / "drop", work / "site" / "state"
        drop.mkdir(parents=True)
        shutil.copy(bundle, drop / (bundle.name + ".part"))
        os.replace(drop / (bundle.name + ".part"), drop / bundle.name)
        info(f"{drop / bundle.name}")

        say("4/6 starting the site: kube-apiserver, MariaDB (when installed)")
        site, site_stops, skipped = start_site(work, fixtures, info)
        stops += site_stops
        for s in skipped:
            info(f"skipped: {s}")

        say("5/6 installing the agent from the bundle (install.sh), then starting it")
        agent_exe = install_agent(drop / bundle.name, work / "release.pub", work / "site" / "opt")
        reg_port, files_port = free_port(), free_port()
        cfg: dict[str, Any] = {
            "drop_dir": str(drop), "state_dir": str(state), "trusted_keys": [str(work / "release.pub")],
            "registry": {"listen": f"127.0.0.1:{reg_port}"}, "files": {"listen": f"127.0.0.1:{files_port}"},
            "poll_interval": 2, "settle_seconds": 1, "retry_interval": 5,
        }
        if site.get("kubeconfig"):
            cfg["site"] = {"cluster_name": "demo", "domain": "cn-sh-a1", "registry": f"127.0.0.1:{reg_port}",
                           "file_server": f"http://127.0.0.1:{files_port}",
                           "metallb": {"addresses": ["192.0.2.240/28"]}, "timeout": "2m",
                           "vars": {"nfs_server": "192.0.2.10", "nfs_share": "/exports/hydra"}, **site}
        cfg_path = work / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        agent = subprocess.Popen([str(agent_exe), "agent", "run", "--config", str(cfg_path)],
                                 stdout=subprocess.DEVNULL, stderr=open(work / "agent.log", "w"))  # noqa: SIM115
        stops.append(agent)
        info(f"registry https://127.0.0.1:{reg_port} (a certificate from the site CA)  files "
             f"http://127.0.0.1:{files_port}  log {work / 'agent.log'}")

        say("6/6 waiting for the agent: verify → ingest → publish → apply")
        deadline = time.monotonic() + args.timeout
        seen: set[str] = set()
        state_now = ""
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                tail = (work / "agent.log").read_text(errors="replace").splitlines()[-15:]
                raise SystemExit(f"demo: the agent exited ({agent.returncode}):\n" + "\n".join(tail))
            out = subprocess.run([str(agent_exe), "agent", "status", "--json", "--config", str(cfg_path)],
                                 capture_output=True, text=True).stdout
            bundles = json.loads(out or '{"bundles": []}')["bundles"]
            if bundles:
                b = bundles[0]
                state_now = b["state"]
                for st in b["steps"]:
                    key = f"{st['name']} {st['state']}"
                    if st["state"] in ("done", "skipped", "pending", "failed") and key not in seen and \
                            not (st["state"] == "pending" and not st.get("detail")):
                        seen.add(key)
                        info(f"{st['name']:<34} {st['state']:<8} {(st.get('detail') or '')[:110]}")
                if state_now in ("complete", "waiting", "quarantined"):
                    break
            time.sleep(1)
        print()
        subprocess.run([str(agent_exe), "agent", "status", "--config", str(cfg_path)], check=False)
        print()
        ref = f"127.0.0.1:{reg_port}/release.daocloud.io/hydra/vllm-openai:0.8.5.dev940-cpu"  # the host stays in it
        certs = work / "certs.d"
        certs.mkdir()
        subprocess.run([str(agent_exe), "agent", "ca", "--config", str(cfg_path), "-o", str(certs / "ca.crt")],
                       check=True, capture_output=True)
        if shutil.which("skopeo"):  # verifying the registry's certificate with the site CA
            p = subprocess.run(["skopeo", "inspect", "--cert-dir", str(certs), f"docker://{ref}"],
                               capture_output=True, text=True)
            digest = json.loads(p.stdout)["Digest"] if p.returncode == 0 else p.stderr.strip()
            info(f"skopeo inspect --cert-dir {certs} docker://{ref} → {digest}")
        info(f"pull from the embedded registry: skopeo copy --src-cert-dir DIR-WITH-THE-SITE-CA docker://{ref} "
             "oci:/tmp/vllm:cpu  (the CA: hydra-bundle agent ca)")
        info("containerd on the nodes: hydra-bundle agent mirror-config --config AGENT.yaml (hosts.toml snippets)")
        info(f"model files: rclone copy --http-url http://127.0.0.1:{files_port}/model/qwen3-0.6b/ :http: /tmp/m")
        releases = helm_releases(Path(site["kubeconfig"])) if site.get("kubeconfig") else []
        for r in releases:
            info(f"Helm release {r} (its release record is in the cluster)")
        if args.keep:
            info(f"kept: {work} (the servers are stopped)")
        ok = state_now == "complete" or (state_now == "waiting" and not site.get("kubeconfig"))  # no cluster here
        say(f"demo finished: {state_now or 'unseen'}" + (f": every deploy step done, {len(releases)} Helm releases "
                                                          "deployed" if ok else ""))
        return 0 if ok else 1
    finally:
        stop_all(stops)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        sys.exit(f"demo: `hydra-bundle {' '.join(e.cmd[3:5])} …` failed (exit {e.returncode}); see its message above")
