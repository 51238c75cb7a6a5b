"""Install the agent from the kit a bundle carries: the Python half of ``install.sh``, and the agent's own upgrades.

Standard library only, and no import of the rest of the package: ``install.sh`` runs this file with the host's
``python3`` before anything of hydra-bundle is installed (the shell half has already verified the index
signature with ``openssl``). The layout it creates under the prefix (default ``/opt/hydra-bundle``)::

    versions/<version>/      a venv with that version of the agent (created --without-pip: no ensurepip needed)
    current -> versions/<v>  switched atomically (a new symlink renamed over the old one)
    bin/hydra-bundle         the launcher: runs current/bin/hydra-bundle; rolls a failed upgrade back
    upgrade.state            "trying FROM TO N" while a new version proves itself, "done …", "rolled-back …"

The launcher counts the starts of a version that has not said it is healthy (``mark_healthy``); after
``MAX_TRIES`` it switches ``current`` back and records why. Every kit blob is checked against the signed index
(sha256 and size) before pip runs, and pip installs with ``--no-index`` from the kit only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_PREFIX = Path("/opt/hydra-bundle")
STATE_DIR = Path("/var/lib/hydra-bundle")
CONFIG_DIR = Path("/etc/hydra-bundle")
UNIT_PATH = Path("/etc/systemd/system/hydra-bundle-agent.service")
SERVICE_USER = "hydra-bundle"
MAX_TRIES = 3
UPGRADE_EXIT = 100   # the agent exits with this after switching to a new version: systemd restarts it
MACHINES = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64", "arm64": "linux/arm64"}
PACKAGE = "hydra-bundle[site]"


class KitError(Exception):
    """Installing cannot go on; the message says what to do."""


# ---------------------------------------------------------------- the kit in a signed index

def kit_of(index: dict[str, Any]) -> dict[str, Any]:
    kits = (index.get("components") or {}).get("kits") or []
    if not kits:
        raise KitError("this bundle carries no agent kit (it was built with --no-agent-kit, or it is a delta for a "
                       "site that has the kit already): use a full bundle")
    kit: dict[str, Any] = kits[0]
    return kit


def target_of(machine: str | None = None, version: tuple[int, int] | None = None) -> str:
    """This host as a kit target: ``linux/amd64 cp311``."""
    m = (machine or platform.machine()).lower()
    plat = MACHINES.get(m)
    if plat is None or not sys.platform.startswith("linux"):
        raise KitError(f"this host is {sys.platform}/{m}: the agent kit is for Linux on amd64 and arm64")
    major, minor = version or sys.version_info[:2]
    return f"{plat} cp{major}{minor}"


def wheels_for(kit: dict[str, Any], target: str) -> list[dict[str, Any]]:
    chosen = [w for w in kit.get("wheels") or [] if target in (w.get("targets") or [])]
    if not chosen:
        have = sorted({t for w in kit.get("wheels") or [] for t in w.get("targets") or []})
        raise KitError(f"the kit has no wheels for this host ({target}); it has: {', '.join(have) or 'none'}. "
                       "Use a python3 of one of those versions (or rebuild the bundle with --agent-python)")
    return chosen


# ---------------------------------------------------------------- getting the blobs out, verified

def _members(index: dict[str, Any], digest: str) -> list[tuple[int | None, str, int, str]]:
    """Where a blob's bytes are: [(part or None, member, size, member digest)] in order."""
    hexd = digest.split(":", 1)[1]
    if any(b["digest"] == digest and b.get("omitted") for b in index["blobs"]):
        raise KitError("this is a delta bundle for a site that has this agent kit already (its wheels were left "
                       "out): install the agent from a full bundle, or build one with no --site-inventory")
    parts = index.get("parts")
    if not parts:
        size = next(int(b["size"]) for b in index["blobs"] if b["digest"] == digest)
        return [(None, f"blobs/sha256/{hexd}", size, digest)]
    out: list[tuple[int | None, str, int, str]] = []
    for k, p in enumerate(parts["parts"], 1):
        if digest in p.get("blobs") or []:
            size = next(int(b["size"]) for b in index["blobs"] if b["digest"] == digest)
            return [(k, f"blobs/sha256/{hexd}", size, digest)]
        for sg in p.get("segments") or []:
            if sg["blob"] == digest:
                out.append((k, f"segments/sha256/{hexd}/{sg['offset']}", int(sg["size"]), sg["digest"]))
    if not out:
        raise KitError(f"kit blob {digest} is in no part of this bundle")
    return sorted(out, key=lambda t: int(t[1].rsplit("/", 1)[1]) if t[1].startswith("segments/") else 0)


def part_files(bundle: Path, count: int) -> dict[int, Path]:
    """The parts of a split bundle, found next to the one given (``NAME.part-KK-of-NN.tar``)."""
    m = re.match(r"^(.*)\.part-(\d+)-of-(\d+)\.tar$", bundle.name)
    if not m:
        raise KitError(f"{bundle} is part of a split bundle but not named NAME.part-KK-of-NN.tar")
    width = len(m.group(2))
    out = {}
    for k in range(1, count + 1):
        p = bundle.with_name(f"{m.group(1)}.part-{k:0{width}d}-of-{count:0{width}d}.tar")
        if p.is_file():
            out[k] = p
    return out


def extract_wheels(bundle: Path, index: dict[str, Any], wheels: list[dict[str, Any]], dest: Path) -> list[Path]:
    """Copy each wheel out of the bundle with ``tar`` and check its sha256 and size against the signed index
    before anything uses it. Returns the wheel files (named as in the kit)."""
    parts = index.get("parts")
    files = part_files(bundle, int(parts["count"])) if parts else {}
    out = []
    for w in wheels:
        name = w["file"]
        if "/" in name or not name.endswith(".whl"):
            raise KitError(f"kit wheel name {name!r} is not a plain wheel file name")
        target = dest / name
        h = hashlib.sha256()
        size = 0
        with open(target, "wb") as f:
            for part, member, msize, mdigest in _members(index, w["digest"]):
                src = bundle if part is None else files.get(part)
                if src is None:
                    raise KitError(f"{name} is (partly) in part {part}, which is not next to {bundle}: copy every "
                                   "part into the same directory")
                mh = hashlib.sha256() if part is not None else h
                n = _tar_member(src, member, f, {mh, h})
                if part is not None and (n != msize or "sha256:" + mh.hexdigest() != mdigest):
                    raise KitError(f"kit blob {member} of {src.name} is damaged or was tampered with (sha256 "
                                   f"{mh.hexdigest()}, {n} bytes; the signed index says {mdigest}, {msize} bytes): "
                                   "nothing was installed")
                size += n
        got = "sha256:" + h.hexdigest()
        if got != w["digest"] or size != int(w["size"]):
            raise KitError(f"kit wheel {name} is damaged or was tampered with (got {got}, {size} bytes; the signed "
                           f"index says {w['digest']}, {w['size']} bytes): nothing was installed")
        out.append(target)
    return out


def _tar_member(tarball: Path, member: str, out: Any, hashers: set[Any]) -> int:
    """Stream one member to ``out`` through ``tar``, feeding every hasher (each byte is read once)."""
    p = subprocess.Popen(["tar", "-xOf", str(tarball), member], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    n = 0
    while chunk := p.stdout.read(1 << 20):
        for h in hashers:
            h.update(chunk)
        out.write(chunk)
        n += len(chunk)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if p.wait() != 0:
        raise KitError(f"tar could not read {member} from {tarball}: {err.strip()}")
    return n


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- installing a version

def install_version(prefix: Path, version: str, wheel_dir: Path, python: str | None = None) -> Path:
    """``prefix/versions/<version>``: a venv with the agent installed from ``wheel_dir`` only (``--no-index``).
    An existing, working one is kept. Returns its directory."""
    vdir = prefix / "versions" / version
    exe = vdir / "bin" / "hydra-bundle"
    if exe.is_file() and _version_of(exe) == version:
        return vdir
    pip_wheel = next(iter(sorted(wheel_dir.glob("pip-*.whl"))), None)
    if pip_wheel is None:
        raise KitError("the kit has no pip wheel: it cannot install anything")
    shutil.rmtree(vdir, ignore_errors=True)  # a half-made one from an interrupted run
    vdir.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run([python or sys.executable, "-m", "venv", "--without-pip", str(vdir)], "create the venv")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        _run([str(vdir / "bin" / "python"), str(pip_wheel / "pip"), "install", "--no-index", "--no-cache-dir",
              "--disable-pip-version-check", "--quiet", "--find-links", str(wheel_dir), f"{PACKAGE}=={version}"],
             "install the agent from the kit (pip --no-index)", env)
        dedupe_native_libraries(vdir)
    except BaseException:
        shutil.rmtree(vdir, ignore_errors=True)
        raise
    if _version_of(exe) != version:
        raise KitError(f"{exe} does not report version {version} after installing")
    return vdir


def dedupe_native_libraries(venv: Path) -> int:
    """helm-python-sdk's wheel holds its 85 MB ``libhelm_c.so`` three times (``.so``, ``.so.0``, ``.so.0.x.y``);
    keep the fully versioned file (the one the binding loads first) and make the others symlinks to it.
    Returns the bytes saved."""
    saved = 0
    for lib in venv.glob("lib/python3*/site-packages/helm_python/lib"):
        files = sorted((p for p in lib.glob("libhelm_c.so*") if p.is_file() and not p.is_symlink()),
                       key=lambda p: len(p.name))
        if len(files) < 2:
            continue
        keep = files[-1]
        for p in files[:-1]:
            if p.stat().st_size == keep.stat().st_size and _sha256_file(p) == _sha256_file(keep):
                saved += p.stat().st_size
                p.unlink()
                p.symlink_to(keep.name)
    return saved


def _version_of(exe: Path) -> str | None:
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else None


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-6:])
        raise KitError(f"could not {what} (exit {p.returncode}): {tail}")


# ---------------------------------------------------------------- switching, the launcher, upgrade state

def current_version(prefix: Path) -> str | None:
    link = prefix / "current"
    return Path(os.readlink(link)).name if link.is_symlink() else None


def switch(prefix: Path, version: str) -> None:
    """Point ``prefix/current`` at ``versions/<version>`` atomically."""
    tmp = prefix / ".current.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("versions") / version)
    os.replace(tmp, prefix / "current")


def read_state(prefix: Path) -> list[str]:
    """The upgrade state as words: [] (none), ["trying", FROM, TO, N], ["done", FROM, TO], ["rolled-back", FROM,
    TO, N]."""
    try:
        return (prefix / "upgrade.state").read_text().split()
    except OSError:
        return []


def write_state(prefix: Path, *words: str) -> None:
    tmp = prefix / ".upgrade.state.new"
    tmp.write_text(" ".join(words) + "\n")
    os.replace(tmp, prefix / "upgrade.state")


def mark_healthy(prefix: Path, version: str) -> bool:
    """Called by a freshly started agent once it serves: a pending upgrade to ``version`` succeeded."""
    s = read_state(prefix)
    if len(s) >= 3 and s[0] == "trying" and s[2] == version:
        write_state(prefix, "done", s[1], s[2])
        return True
    return False


def prune_versions(prefix: Path, keep: set[str]) -> list[str]:
    """Remove installed versions other than ``keep`` (a site upgraded for years keeps two, not all)."""
    gone = []
    for v in sorted((prefix / "versions").glob("*")):
        if v.is_dir() and v.name not in keep:
            shutil.rmtree(v, ignore_errors=True)
            gone.append(v.name)
    return gone


LAUNCHER = """#!/bin/sh
# hydra-bundle launcher (written by install.sh): runs the current version of the agent. While an upgrade proves
# itself (upgrade.state: trying FROM TO N), every start of `agent run` counts; after {max_tries} starts without the
# new version saying it is healthy, current goes back to FROM (upgrade.state: rolled-back FROM TO N).
prefix={prefix}
state="$prefix/upgrade.state"
if [ "${{1:-}}" = agent ] && [ "${{2:-}}" = run ] && [ -f "$state" ]; then
  read -r what from to tries < "$state" || true
  if [ "$what" = trying ]; then
    tries=$((tries + 1))
    if [ "$tries" -gt {max_tries} ]; then
      ln -sfn "versions/$from" "$prefix/.current.new" && mv -T "$prefix/.current.new" "$prefix/current"
      echo "rolled-back $from $to $tries" > "$state.new" && mv "$state.new" "$state"
      echo "hydra-bundle: $to did not become healthy in $((tries - 1)) starts: back to $from" >&2
    else
      echo "trying $from $to $tries" > "$state.new" && mv "$state.new" "$state"
    fi
  fi
fi
exec "$prefix/current/bin/hydra-bundle" "$@"
"""


def write_launcher(prefix: Path) -> Path:
    path = prefix / "bin" / "hydra-bundle"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".hydra-bundle.new")
    tmp.write_text(LAUNCHER.format(prefix=_sh_quote(str(prefix)), max_tries=MAX_TRIES))
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


# ---------------------------------------------------------------- the service (install.sh without --no-systemd)

UNIT = """# hydra-bundle on-site agent: drop-dir daemon, embedded read-only OCI registry and HTTP file server.
# Written by install.sh (the agent kit of a bundle); `systemctl daemon-reload` after editing.
[Unit]
Description=hydra-bundle on-site agent (verify, ingest and serve signed bundles)
Wants=network-online.target
After=network-online.target local-fs.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={prefix}/bin/hydra-bundle agent run --config /etc/hydra-bundle/agent.yaml
# The agent pings the watchdog while its loop (or a running step: ingest, apply) makes progress.
WatchdogSec=60s
Restart=on-failure
RestartSec=5s
# Exit {upgrade_exit}: the agent switched to a newer version from a bundle's kit; start it (the launcher rolls back
# a version that does not become healthy).
RestartForceExitStatus={upgrade_exit}
TimeoutStopSec=60s
# A broken config (exit 2) will not fix itself by restarting.
RestartPreventExitStatus=2
LimitNOFILE=65536

User=hydra-bundle
Group=hydra-bundle
# Creates /var/lib/hydra-bundle/{{state,drop}} owned by the service user before the sandbox is set up.
StateDirectory=hydra-bundle hydra-bundle/state hydra-bundle/drop
StateDirectoryMode=0750
UMask=0027

# Hardening: read-only system, writable only where bundles are dropped, state is kept and the agent installs its
# own upgrades.
ProtectSystem=strict
ReadWritePaths=/var/lib/hydra-bundle/state /var/lib/hydra-bundle/drop {prefix}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
# Not set on purpose: MemoryDenyWriteExecute (libffi closures in Python extensions and the Go runtime of the Helm
# library need W+X pages).
CapabilityBoundingSet=CAP_NET_BIND_SERVICE

# Only needed when a listen port is below 1024 (the default file server port 81 is): lets the unprivileged
# user bind it. Remove both this line and CAP_NET_BIND_SERVICE above when every port is >= 1024.
AmbientCapabilities=CAP_NET_BIND_SERVICE

[Install]
WantedBy=multi-user.target
"""

CONFIG = """# hydra-bundle agent configuration, written by install.sh (every key: systemd/agent.example.yaml)
drop_dir: /var/lib/hydra-bundle/drop
state_dir: /var/lib/hydra-bundle/state
trusted_keys: [{key}]
registry: {{listen: "0.0.0.0:5000"}}      # embedded read-only OCI registry, HTTPS from the site CA (`agent ca`)
files: {{listen: "0.0.0.0:81"}}           # embedded HTTP file server: /model/<name>/…, /files/<name>/…
metrics: {{listen: "127.0.0.1:9480"}}     # /metrics and /healthz
# site:                                 # where things are on this site: the deploy steps need it (add, then
#   cluster_name: …                     # `systemctl restart hydra-bundle-agent`)
"""


def unit_text(prefix: Path) -> str:
    return UNIT.format(prefix=prefix, upgrade_exit=UPGRADE_EXIT)


def setup_service(prefix: Path, pub: Path, root: Path, start: bool, log: Any) -> None:
    """The service user, the pinned key, a config (kept when one exists), the unit; enable and maybe start it."""
    etc = root / CONFIG_DIR.relative_to("/")
    if shutil.which("useradd") and not _user_exists(SERVICE_USER) and root == Path("/"):
        _run(["useradd", "--system", "--home-dir", str(STATE_DIR), "--shell", "/usr/sbin/nologin", SERVICE_USER],
             f"create the {SERVICE_USER} user")
    keys = etc / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    key = keys / pub.name
    if not key.exists() or key.read_bytes() != pub.read_bytes():
        shutil.copyfile(pub, key)
        key.chmod(0o644)
    cfg = etc / "agent.yaml"
    if not cfg.exists():
        cfg.write_text(CONFIG.format(key=CONFIG_DIR / "keys" / pub.name))
        cfg.chmod(0o640)
        _chown(cfg, "root", SERVICE_USER)
    unit = root / UNIT_PATH.relative_to("/")
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text(prefix))
    _chown(prefix, SERVICE_USER, SERVICE_USER, recursive=True)  # the agent installs its own upgrades here
    for d in (STATE_DIR, STATE_DIR / "state", STATE_DIR / "drop"):
        (root / d.relative_to("/")).mkdir(parents=True, exist_ok=True)
        _chown(root / d.relative_to("/"), SERVICE_USER, SERVICE_USER)
    systemctl = shutil.which("systemctl")
    if systemctl is None or root != Path("/"):
        log(f"wrote {unit}; no systemd here: start the agent with `{prefix}/bin/hydra-bundle agent run --config "
            f"{CONFIG_DIR / 'agent.yaml'}`")
        return
    _run([systemctl, "daemon-reload"], "reload systemd")
    _run([systemctl, "enable", *(["--now"] if start else []), "hydra-bundle-agent.service"],
         "enable the hydra-bundle-agent service")
    log("hydra-bundle-agent.service enabled" + (" and started" if start else ""))


def _user_exists(name: str) -> bool:
    try:
        import pwd

        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _chown(path: Path, user: str, group: str, recursive: bool = False) -> None:
    if os.geteuid() != 0 or not _user_exists(user):
        return
    try:
        shutil.chown(path, user, group)
        if recursive:
            for dirpath, dirnames, filenames in os.walk(path):
                for n in dirnames + filenames:
                    os.lchown(os.path.join(dirpath, n), *_ids(user, group))
    except (OSError, LookupError):
        pass


def _ids(user: str, group: str) -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def drop_bundle(bundle: Path, index: dict[str, Any], drop: Path) -> list[Path]:
    """Copy the bundle (every part of a split one) into the drop dir as NAME.part, then rename: the agent never
    reads a file that is still being copied."""
    parts = index.get("parts")
    files = list(part_files(bundle, int(parts["count"])).values()) if parts else [bundle]
    out = []
    for f in files:
        tmp = drop / (f.name + ".part")
        shutil.copyfile(f, tmp)
        os.replace(tmp, drop / f.name)
        _chown(drop / f.name, SERVICE_USER, SERVICE_USER)
        out.append(drop / f.name)
    return out


# ---------------------------------------------------------------- install.sh's main

def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="install.sh", description="Install the hydra-bundle agent from a bundle.")
    ap.add_argument("--pub", required=True, type=Path)
    ap.add_argument("--prefix", type=Path, default=DEFAULT_PREFIX)
    ap.add_argument("--no-systemd", action="store_true")
    ap.add_argument("--no-start", action="store_true")
    ap.add_argument("--index-file", required=True, type=Path)   # the verified index (from the shell half)
    ap.add_argument("--script", required=True, type=Path)       # install.sh itself
    ap.add_argument("--root", type=Path, default=Path("/"))     # tests: where /etc and /var/lib are
    ap.add_argument("bundle", type=Path)
    a = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(f"install.sh: {msg}", flush=True)

    try:
        index = json.loads(a.index_file.read_bytes())
        installer = index.get("installer") or {}
        if "sha256:" + _sha256_file(a.script) != installer.get("digest"):
            raise KitError(f"{a.script} is not the install.sh this bundle's signed index lists: take it from the "
                           f"bundle itself (`tar -xf {a.bundle} install.sh`)")
        kit = kit_of(index)
        version = str(kit["version"])
        target = target_of()
        wheels = wheels_for(kit, target)
        prefix = a.prefix.resolve()
        log(f"bundle {index.get('name')} {index.get('version')}: agent {version} for {target}, "
            f"{len(wheels)} wheels")
        with tempfile.TemporaryDirectory(prefix="hydra-kit-") as tmp:
            files = extract_wheels(a.bundle, index, wheels, Path(tmp))
            log(f"{len(files)} kit wheels match the signed index (sha256 and size)")
            vdir = install_version(prefix, version, Path(tmp))
        switch(prefix, version)
        write_launcher(prefix)
        write_state(prefix, "done", version, version)
        log(f"installed {vdir}; {prefix / 'bin' / 'hydra-bundle'} runs it")
        if not a.no_systemd:
            setup_service(prefix, a.pub.resolve(), a.root, not a.no_start, log)
            if not a.no_start:
                dropped = drop_bundle(a.bundle, index, a.root / STATE_DIR.relative_to("/") / "drop")
                log(f"dropped {', '.join(p.name for p in dropped)} into the agent's drop dir: "
                    f"`{prefix}/bin/hydra-bundle agent status` shows it arrive")
    except KitError as e:
        print(f"install.sh: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
