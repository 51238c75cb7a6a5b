"""The agent kit on the stick: `hydra-bundle build` puts the agent's wheels and install.sh into the bundle;
install.sh installs the agent on a host with no network and a scrubbed environment, from the kit alone; the
installed agent ingests the bundle, and upgrades itself from a newer bundle's kit (and back, from a broken one).

Dependency wheels are downloaded once into the test cache (tests/support/kit.py); builds then run pip with
--no-index from a wheelhouse, so the suite neither waits for nor fails on PyPI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hydra_bundle import __version__
from hydra_bundle.bundle.tarreader import TarReader
from hydra_bundle.kit import installer
from tests.support import supervise
from tests.support.agent import AgentProc, run_cli
from tests.support.bundles import keypair, read_index, sha256_hex, tar_members, write_spec
from tests.support.images import make_image, push_image
from tests.support.kit import HOST_PLATFORM, HOST_PYTHON, HOST_TARGET, wheelhouse
from tests.support.registry import Registry

pytestmark = pytest.mark.slow

SITE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def site_env(home: Path, **extra: str) -> dict[str, str]:
    """A stock host's environment: Debian's PATH, a new HOME, nothing else (no venv, no pip config)."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": SITE_PATH, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def offline(cmd: list[str]) -> list[str]:
    """``cmd`` in a new network namespace with only loopback: nothing can be downloaded."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to cut the network off")
    flags = ["-n"] if os.geteuid() == 0 else ["-rn"]
    return ["unshare", *flags, "sh", "-c", 'ip link set lo up 2>/dev/null || true; exec "$@"', "sh", *cmd]


@dataclass
class Env:
    work: Path
    key: Path
    pub: Path
    other_pub: Path
    registry: Registry
    cache: Path

    def spec(self, version: str, sequence: int) -> Path:
        return write_spec(self.work / f"kit-{version}.yaml", name="kit-demo", version=version, sequence=sequence,
                          platforms=["linux/amd64"],
                          images=[{"ref": f"{self.registry.host}/kit/app:1.0"}])

    def build(self, version: str, sequence: int, house: Path, *extra: str, out: Path | None = None) -> Path:
        out = out or self.work / f"kit-demo-{version}.tar"
        res = run_cli("build", str(self.spec(version, sequence)), "-o", str(out), "--key", str(self.key),
                      "--cache-dir", str(self.cache), "--insecure-registry", self.registry.host,
                      "--agent-python", HOST_PYTHON, "--agent-wheelhouse", str(house), *extra, timeout=600)
        assert res.returncode == 0, res.stderr + res.stdout
        return out


@pytest.fixture(scope="module")
def env(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Env:
    if HOST_PLATFORM != "linux/amd64":
        pytest.skip("the kit tests build for linux/amd64 hosts")
    work = tmp_path_factory.mktemp("kit")
    key, pub = keypair(work, "release")
    _, other = keypair(work, "other")
    push_image(registry.host, "kit/app", "1.0", make_image([4_000], seed=901))
    return Env(work, key, pub, other, registry, work / "cache")


@pytest.fixture(scope="module")
def bundle(env: Env) -> Path:
    """A bundle whose kit is this tree's agent (version ``__version__``) for this host's Python."""
    return env.build("1.0.0", 1, wheelhouse(env.work / "house-own"))


def extract_install_sh(bundle: Path, dest: Path) -> Path:
    """What the README tells the operator: ``tar -xf BUNDLE install.sh``."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(bundle), "install.sh"], cwd=dest, check=True)
    return dest / "install.sh"


def install(script: Path, pub: Path, bundle: Path, home: Path, *args: str, **extra_env: str
            ) -> subprocess.CompletedProcess[str]:
    """``sh install.sh --pub KEY.pub BUNDLE …`` offline, in a scrubbed environment."""
    return subprocess.run(offline(["sh", str(script), "--pub", str(pub), str(bundle), *args]),
                          capture_output=True, text=True, timeout=600, env=site_env(home, **extra_env))


def flip_byte(path: Path, member: str) -> None:
    with open(path, "rb") as f:
        entry = next(e for e in TarReader(f) if e.name == member)
    with open(path, "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        b = f.read(1)
        f.seek(entry.offset + entry.size // 2)
        f.write(bytes([b[0] ^ 0xFF]))


# ---------------------------------------------------------------- the kit in the bundle

def test_the_bundle_carries_a_kit_and_install_sh_right_after_the_signed_index(env: Env, bundle: Path,
                                                                             tmp_path: Path) -> None:
    names = [m.name for m in tar_members(bundle)]
    assert names[:3] == ["hydra-bundle.json", "hydra-bundle.json.sig", "install.sh"]

    index = read_index(bundle)
    script = extract_install_sh(bundle, tmp_path)
    data = script.read_bytes()
    assert index["installer"]["digest"] == "sha256:" + sha256_hex(data)
    assert index["installer"]["size"] == len(data)
    assert data.startswith(b"#!/bin/sh")

    # the operator's check before running it (README "Installing the agent"): signature, then the script's sha256
    sig = tmp_path / "index.sig"
    subprocess.run(["sh", "-c", f'tar -xOf "{bundle}" hydra-bundle.json.sig | openssl base64 -d -A > "{sig}"'],
                   check=True)
    subprocess.run(["sh", "-c", f'tar -xOf "{bundle}" hydra-bundle.json > "{tmp_path}/index.json"'], check=True)
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(env.pub), "-signature", str(sig),
                         str(tmp_path / "index.json")], capture_output=True, text=True)
    assert ok.stdout.strip() == "Verified OK"
    summed = subprocess.run(["sha256sum", "install.sh"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert summed.stdout.split()[0] == index["installer"]["digest"].split(":")[1]

    [kit] = index["components"]["kits"]
    assert kit["version"] == __version__
    assert kit["pythons"] == [HOST_PYTHON] and kit["platforms"] == ["linux/amd64"]
    files = {w["file"] for w in kit["wheels"]}
    assert f"hydra_bundle-{__version__}-py3-none-any.whl" in files
    assert any(f.startswith("helm_python_sdk-") for f in files)          # the [site] extra: Helm in-process
    assert any(f.startswith("cryptography-") for f in files) and any(f.startswith("pip-") for f in files)
    assert all(w["targets"] == [HOST_TARGET] for w in kit["wheels"])
    carried = {b["digest"] for b in index["blobs"]}
    assert {w["digest"] for w in kit["wheels"]} <= carried

    assert run_cli("verify", str(bundle), "--pub", str(env.pub)).returncode == 0
    shown = run_cli("inspect", str(bundle))
    assert "kits:" in shown.stdout and f"agent {__version__}" in shown.stdout and "install.sh" in shown.stdout

    # the same code builds the same kit: a rebuild from the cache is byte-identical in its kit
    again = env.build("1.0.0", 1, wheelhouse(env.work / "house-own"), out=tmp_path / "again.tar")
    assert read_index(again)["components"]["kits"] == index["components"]["kits"]


def test_no_agent_kit_leaves_it_out_and_a_delta_leaves_out_a_kit_the_site_has(env: Env, bundle: Path,
                                                                              tmp_path: Path) -> None:
    bare = env.build("1.0.0", 1, wheelhouse(tmp_path / "house"), "--no-agent-kit",
                     out=tmp_path / "bare.tar")
    index = read_index(bare)
    assert not index["components"].get("kits") and index.get("installer") is None
    assert "install.sh" not in [m.name for m in tar_members(bare)]

    full = read_index(bundle)
    inventory = tmp_path / "site.json"   # what `agent inventory -o` writes for a site that holds this kit
    inventory.write_text(json.dumps({"format": "hydra-bundle-inventory/v1", "blobs": [
        {"digest": w["digest"], "size": w["size"]} for w in full["components"]["kits"][0]["wheels"]]}))
    delta = env.build("1.0.1", 2, wheelhouse(tmp_path / "house2"), "--site-inventory", str(inventory),
                      out=tmp_path / "delta.tar")
    members = {m.name for m in tar_members(delta)}
    wheels = full["components"]["kits"][0]["wheels"]
    assert not any(f"blobs/sha256/{w['digest'].split(':')[1]}" in members for w in wheels)
    assert os.path.getsize(delta) < os.path.getsize(bundle) / 10

    # install.sh from a delta says what to do instead of failing half-way
    script = extract_install_sh(delta, tmp_path / "site")
    res = install(script, env.pub, delta, tmp_path / "home", "--prefix", str(tmp_path / "opt"), "--no-systemd")
    assert res.returncode == 1
    assert "delta bundle" in res.stderr and "full bundle" in res.stderr
    assert not (tmp_path / "opt" / "versions").exists()


# ---------------------------------------------------------------- install.sh on a stock, offline host

def test_install_sh_installs_the_agent_offline_and_the_installed_agent_ingests_the_bundle(
        env: Env, bundle: Path, tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    stick = usb / bundle.name
    shutil.copyfile(bundle, stick)
    shutil.copyfile(env.pub, usb / "release.pub")
    script = extract_install_sh(stick, usb)
    prefix, root = tmp_path / "opt" / "hydra-bundle", tmp_path / "root"

    res = install(script, usb / "release.pub", stick, tmp_path / "home", "--prefix", str(prefix),
                  "--root", str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "signature verifies" in res.stdout
    assert "kit wheels match the signed index" in res.stdout

    exe = prefix / "bin" / "hydra-bundle"
    assert os.readlink(prefix / "current") == f"versions/{__version__}"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=site_env(tmp_path / "h"))
    assert version.returncode == 0 and __version__ in version.stdout
    libs = list(prefix.glob("versions/*/lib/python3*/site-packages/helm_python/lib/libhelm_c.so*"))
    assert len([p for p in libs if not p.is_symlink()]) == 1 and len(libs) >= 2   # one copy of the 85 MB .so

    # the service as install.sh sets it up (staged under --root: no systemd is started here)
    unit = (root / "etc/systemd/system/hydra-bundle-agent.service").read_text()
    assert f"ExecStart={prefix}/bin/hydra-bundle agent run --config /etc/hydra-bundle/agent.yaml" in unit
    assert "RestartForceExitStatus=100" in unit and str(prefix) in unit.split("ReadWritePaths=")[1]
    assert (root / "etc/hydra-bundle/keys/release.pub").read_bytes() == env.pub.read_bytes()
    config = (root / "etc/hydra-bundle/agent.yaml").read_text()
    assert "trusted_keys: [/etc/hydra-bundle/keys/release.pub]" in config
    assert (root / "var/lib/hydra-bundle/drop" / stick.name).read_bytes()[:512] == stick.read_bytes()[:512]
    if shutil.which("systemd-analyze"):
        unit_file = root / "etc/systemd/system/hydra-bundle-agent.service"
        check = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and check.stderr.strip() == "", check.stderr

    # the installed agent, still offline, ingests and serves the bundle
    with AgentProc(tmp_path / "agent", [usb / "release.pub"]) as agent:
        agent.cmd = [str(exe)]
        agent.wrap = offline([])
        agent.env = {"PATH": SITE_PATH, "HOME": str(tmp_path / "home")}
        agent.start(wait=False)
        agent.drop_file(root / "var/lib/hydra-bundle/drop" / stick.name)
        done = agent.wait_state("kit-demo", "1.0.0", "complete", timeout=120)
        assert {s["name"]: s["state"] for s in done["steps"]}.get("ingest") == "done"
        me = json.loads(agent.cli("status", "--json").stdout)["agent"]
        assert me["version"] == __version__ and me["kit"] == str(prefix)


def test_install_sh_refuses_before_installing_anything(env: Env, bundle: Path, tmp_path: Path) -> None:
    script = extract_install_sh(bundle, tmp_path / "site")
    prefix = tmp_path / "opt"

    def refused(*args: str, bundle_path: Path = bundle, script_path: Path = script, pub: Path = env.pub,
                **extra: str) -> str:
        res = install(script_path, pub, bundle_path, tmp_path / "home", "--prefix", str(prefix), "--no-systemd",
                      *args, **extra)
        assert res.returncode == 1, res.stdout + res.stderr
        assert not (prefix / "versions").exists()
        return res.stderr.strip().splitlines()[-1]

    # not signed by the given key
    assert "does not verify against" in refused(pub=env.other_pub)

    # an install.sh that is not the one the signed index lists
    changed = tmp_path / "changed.sh"
    changed.write_bytes(script.read_bytes() + b"# added\n")
    assert "is not the install.sh this bundle's signed index lists" in refused(script_path=changed)

    # a kit wheel changed on the stick (the signature still verifies: the index is untouched)
    tampered = tmp_path / "tampered.tar"
    shutil.copyfile(bundle, tampered)
    own = next(w for w in read_index(bundle)["components"]["kits"][0]["wheels"]
               if w["file"].startswith("hydra_bundle-"))
    flip_byte(tampered, f"blobs/sha256/{own['digest'].split(':')[1]}")
    msg = refused(bundle_path=tampered)
    assert "damaged or was tampered with" in msg and "nothing was installed" in msg

    # a python3 that is too old
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = -V ] && { echo "Python 3.9.2"; exit 0; }\nexit 1\n')
    old.chmod(0o755)
    msg = refused(PYTHON=str(old))
    assert "Python 3.9.2 is too old" in msg and "PYTHON=" in msg

    # unknown options and missing arguments name the usage
    assert "unknown option --frobnicate" in refused("--frobnicate")


def test_a_host_the_kit_does_not_cover_is_told_which_python_to_use(bundle: Path) -> None:
    kit = installer.kit_of(read_index(bundle))
    with pytest.raises(installer.KitError, match=rf"linux/amd64 cp313.*it has: {HOST_TARGET}.*--agent-python"):
        installer.wheels_for(kit, "linux/amd64 cp313")
    with pytest.raises(installer.KitError, match="Linux on amd64 and arm64"):
        installer.target_of("riscv64")
    assert installer.target_of("x86_64", (3, 12)) == "linux/amd64 cp312"
    with pytest.raises(installer.KitError, match="no agent kit"):
        installer.kit_of({"components": {"kits": []}})


# ---------------------------------------------------------------- the agent upgrades itself

def _versions(prefix: Path) -> list[str]:
    return sorted(p.name for p in (prefix / "versions").iterdir())


def test_the_agent_upgrades_itself_from_a_newer_kit_and_rolls_a_broken_one_back(
        env: Env, bundle: Path, tmp_path: Path) -> None:
    v1, v2, v3 = __version__, bump(__version__, 1), bump(__version__, 2)
    prefix = tmp_path / "opt"
    script = extract_install_sh(bundle, tmp_path / "site")
    res = install(script, env.pub, bundle, tmp_path / "home", "--prefix", str(prefix), "--no-systemd")
    assert res.returncode == 0, res.stdout + res.stderr

    b2 = env.build("1.0.1", 2, wheelhouse(tmp_path / "house2", v2))
    b3 = env.build("1.0.2", 3, wheelhouse(tmp_path / "house3", v3, broken=True))
    assert read_index(b2)["components"]["kits"][0]["version"] == v2

    with AgentProc(tmp_path / "agent", [env.pub]) as agent:
        agent.cmd = [str(prefix / "bin" / "hydra-bundle")]
        # what systemd does with the unit: start it again when it exits (RestartForceExitStatus=100, on-failure)
        agent.wrap = [sys.executable, supervise.__file__, "--restart-sec", "0.2", "--max-starts", "10", "--"]
        agent.start()

        agent.drop_file(bundle)
        first = agent.wait_state("kit-demo", "1.0.0", "complete")
        assert step(first, "upgrade")["state"] == "skipped"
        assert me(agent)["version"] == v1

        agent.drop_file(b2)
        second = agent.wait_state("kit-demo", "1.0.1", "complete", timeout=240)
        assert step(second, "upgrade")["state"] == "done"
        now = me(agent)
        assert now["version"] == v2 and now["upgrade"] == {"state": "done", "from": v1, "to": v2}
        assert os.readlink(prefix / "current") == f"versions/{v2}"
        # the journal is intact: the first bundle is still there, complete, and the second finished on v2
        assert agent.bundle("kit-demo", "1.0.0")["state"] == "complete"  # type: ignore[index]
        events = [e["event"] for e in json.loads(agent.cli("history", "--json").stdout)["events"]]
        assert "agent-upgrade" in events and "agent-upgraded" in events
        assert f'"version": "{v2}"' in agent.log.read_text() or f"version={v2}" in agent.log.read_text()

        agent.drop_file(b3)
        third = agent.wait_state("kit-demo", "1.0.2", "complete", timeout=300)
        assert step(third, "upgrade")["state"] == "done"
        back = me(agent)
        assert back["version"] == v2
        assert back["upgrade"]["state"] == "rolled-back" and back["upgrade"]["to"] == v3
        assert f"{v3} did not become healthy in {installer.MAX_TRIES} starts; back to {v2}" in \
            back["upgrade"]["reason"]
        assert os.readlink(prefix / "current") == f"versions/{v2}"
        text = agent.cli("status").stdout
        assert f"agent {v2}" in text and f"upgrade to {v3} rolled back" in text
        events = [e["event"] for e in json.loads(agent.cli("history", "--json").stdout)["events"]]
        assert "agent-rolled-back" in events
        assert [b["state"] for b in agent.status()] == ["complete"] * 3
        assert v1 in _versions(prefix) and v2 in _versions(prefix)

        # the same broken kit dropped again is not tried again
        again = agent.drop_file(b3, "kit-demo-1.0.2-again.tar")
        assert again.exists()
        agent.wait_state("kit-demo", "1.0.2", "complete")
        assert me(agent)["version"] == v2


def bump(version: str, n: int) -> str:
    major, minor, patch = version.split(".")[:3]
    return f"{major}.{minor}.{int(patch) + n}"


def step(bundle_status: dict[str, object], name: str) -> dict[str, object]:
    steps = bundle_status["steps"]
    assert isinstance(steps, list)
    return next(s for s in steps if s["name"] == name)


def me(agent: AgentProc) -> dict[str, object]:
    out: dict[str, object] = json.loads(agent.cli("status", "--json").stdout)["agent"]
    return out
