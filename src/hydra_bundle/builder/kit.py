"""The agent kit a build puts into every bundle (unless ``--no-agent-kit``): wheels of hydra-bundle and of every
runtime dependency (with the ``site`` extra: the Helm library) for each of the bundle's platforms and each
supported CPython, plus ``install.sh`` (``kit/script.py``).

hydra-bundle's own wheel is rebuilt from the running installation — the package files that are executing this
build, and the distribution's own ``METADATA`` and entry points — so a plain ``pip install hydra-bundle`` (or an
editable checkout) is all a build host needs: no source tree, no build backend, and the kit is exactly the code
that built the bundle. A wheel of hydra-bundle in ``--agent-wheelhouse DIR`` is used instead when present (a
release wheel, or another version). Dependency wheels come from ``pip download`` for each target (the index pip is
configured with, or ``--agent-index URL``; ``--agent-wheelhouse DIR`` alone means that directory and no index,
with both it adds find-links), with the versions
installed here as constraints, so the site runs what this host runs. Each target's resolution is remembered in
the build cache: a rebuild with the same inputs does not run pip.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from ..bundle import index as ix
from ..digest import canonical_json, sha256_bytes
from ..errors import SourceError, UsageError
from ..kit.script import install_script
from ..oci import mediatypes as mt
from .cache import BlobCache
from .context import Descriptor, Finished

SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
PLATFORMS: dict[str, tuple[str, tuple[str, ...]]] = {   # platform → (machine, pip platform tags, best first)
    "linux/amd64": ("x86_64", ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                               "manylinux_2_5_x86_64", "manylinux1_x86_64")),
    "linux/arm64": ("aarch64", ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")),
}
EXTRA = "site"
WHEEL_LAYER = "application/vnd.hydra-bundle.wheel"
KIT_ARTIFACT = "application/vnd.hydra-bundle.agent-kit.v1"
KIT_CONFIG = "application/vnd.hydra-bundle.agent-kit.config.v1+json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class KitOptions:
    pythons: list[str] | None = None       # default SUPPORTED_PYTHONS
    index_url: str | None = None           # --agent-index
    wheelhouse: Path | None = None         # --agent-wheelhouse


@dataclass
class KitBuild:
    finished: Finished
    installer: bytes                       # install.sh
    targets: dict[str, list[str]] = field(default_factory=dict)


def target_name(platform: str, python: str) -> str:
    return f"{platform} cp{python.replace('.', '')}"


# ---------------------------------------------------------------- hydra-bundle's own wheel

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def own_wheel(dest: Path) -> Path:
    """A wheel of the hydra-bundle that is running, rebuilt from its installed files (deterministic bytes)."""
    dist = importlib.metadata.distribution("hydra-bundle")
    version = dist.version
    metadata = dist.read_text("METADATA")
    if metadata is None:
        raise UsageError("the installed hydra-bundle has no METADATA: reinstall it (pip install hydra-bundle)")
    package = Path(__file__).resolve().parent.parent
    files: dict[str, bytes] = {}
    for p in sorted(package.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            files[f"hydra_bundle/{p.relative_to(package).as_posix()}"] = p.read_bytes()
    info = f"hydra_bundle-{version}.dist-info"
    files[f"{info}/METADATA"] = metadata.encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: hydra-bundle (rebuilt from the installed files)\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in sorted(files.items()))
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"hydra_bundle-{version}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():  # RECORD last, as wheels have it
            zi = zipfile.ZipInfo(name, _ZIP_DATE)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    out.write_bytes(buf.getvalue())
    return out


def _wheel_metadata(wheel: Path) -> tuple[str, str]:
    """(version, METADATA text) of a hydra-bundle wheel."""
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            raise UsageError(f"{wheel}: not a wheel (no .dist-info/METADATA)")
        text = z.read(name).decode()
    m = re.search(r"^Version: (\S+)", text, re.M)
    if not m:
        raise UsageError(f"{wheel}: METADATA has no Version")
    return m.group(1), text


def requirements(metadata: str, python: str, machine: str) -> list[str]:
    """The agent's runtime requirements (with the ``site`` extra) for one target, markers evaluated for it."""
    env = {"extra": EXTRA, "python_version": python, "python_full_version": f"{python}.0", "os_name": "posix",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": machine,
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement as e:
            raise UsageError(f"hydra-bundle METADATA: bad requirement {line!r}: {e}") from None
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}{req.specifier}")
    return out


def constraints() -> str:
    """``name==version`` for every distribution installed here (what pip may pick for the site)."""
    pins = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata["Name"] or "").strip()
        if name and name.lower() not in ("hydra-bundle", "hydra_bundle"):
            pins[name.lower()] = f"{name}=={d.version}"
    return "".join(f"{v}\n" for _, v in sorted(pins.items()))


# ---------------------------------------------------------------- resolving one target

def resolve_wheels(target_dir: Path, platform: str, python: str, reqs: list[str], cons: str, opts: KitOptions,
             log: Callable[[str], None]) -> list[Path]:
    """The wheels of one target (``pip download``), remembered by a key of every input."""
    tags = PLATFORMS[platform][1]
    key = sha256_bytes(canonical_json({"reqs": reqs, "cons": cons, "index": opts.index_url,
                                       "wheelhouse": str(opts.wheelhouse or ""), "tags": tags}))
    marker = target_dir / "resolved.json"
    try:
        rec = json.loads(marker.read_text())
        if rec.get("key") == key and all((target_dir / f).is_file() for f in rec["files"]):
            return [target_dir / f for f in rec["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    target_dir.mkdir(parents=True, exist_ok=True)
    for old in target_dir.glob("*.whl"):
        old.unlink()
    (target_dir / "constraints.txt").write_text(cons)
    nodot = python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--quiet",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
           "--abi", f"cp{nodot}", "--abi", "abi3", "--abi", "none", *[a for t in tags for a in ("--platform", t)],
           "--dest", str(target_dir), "-c", str(target_dir / "constraints.txt")]
    if opts.index_url:
        cmd += ["--index-url", opts.index_url]
    elif opts.wheelhouse:
        cmd += ["--no-index"]   # a wheelhouse alone: nothing but it (a connected host behind a proxy, or offline)
    if opts.wheelhouse:
        cmd += ["--find-links", str(opts.wheelhouse)]
    log(f"agent kit: resolving wheels for {target_name(platform, python)}")
    p = subprocess.run([*cmd, *reqs, "pip"], capture_output=True, text=True)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
        raise SourceError(f"agent kit: pip could not get wheels for {target_name(platform, python)} (exit "
                          f"{p.returncode}): {tail}\n(--agent-index URL or --agent-wheelhouse DIR give another source; "
                          f"--agent-python narrows the Python versions; --no-agent-kit leaves the kit out)")
    files = sorted(f.name for f in target_dir.glob("*.whl"))
    marker.write_text(json.dumps({"key": key, "files": files}))
    return [target_dir / f for f in files]


# ---------------------------------------------------------------- the kit component

def build_kit(platforms: list[str], opts: KitOptions, cache: BlobCache, tag: str,
              log: Callable[[str], None]) -> KitBuild:
    pythons = opts.pythons or list(SUPPORTED_PYTHONS)
    bad = [p for p in pythons if p not in SUPPORTED_PYTHONS]
    if bad:
        raise UsageError(f"--agent-python {bad[0]}: the agent supports CPython {', '.join(SUPPORTED_PYTHONS)}")
    plats = [p for p in dict.fromkeys(platforms) if p in PLATFORMS]
    for p in platforms:
        if p not in PLATFORMS:
            log(f"warning: no agent kit for {p} (the kit covers {', '.join(PLATFORMS)})")
    if not plats:
        raise UsageError(f"no agent kit for {', '.join(platforms)}: build with --no-agent-kit")
    root = cache.root / "kit"
    house = sorted(opts.wheelhouse.glob("hydra_bundle-*.whl")) if opts.wheelhouse else []
    if len(house) > 1:
        raise UsageError(f"--agent-wheelhouse {opts.wheelhouse}: more than one hydra-bundle wheel "
                         f"({', '.join(w.name for w in house)})")
    own = house[0] if house else own_wheel(root / "own")
    version, metadata = _wheel_metadata(own)
    cons = constraints()
    wheels: dict[str, tuple[Path, set[str]]] = {}   # file name → (path, targets)
    targets: dict[str, list[str]] = {}
    for plat in plats:
        for py in pythons:
            t = target_name(plat, py)
            files = [*resolve_wheels(root / t.replace("/", "-").replace(" ", "-"), plat, py,
                               requirements(metadata, py, PLATFORMS[plat][0]), cons, opts, log), own]
            targets[t] = sorted(f.name for f in files)
            for f in files:
                wheels.setdefault(f.name, (f, set()))[1].add(t)
    kit_wheels = []
    for name in sorted(wheels):
        path, ts = wheels[name]
        digest, size = cache.put_file(path, None, f"agent kit {name}")
        kit_wheels.append(ix.KitWheel(file=name, digest=digest, size=size, targets=sorted(ts)))
    config = canonical_json({"version": version, "pythons": pythons, "platforms": plats,
                             "targets": {t: sorted(fs) for t, fs in targets.items()}})
    cfg_digest = cache.put_bytes(config)
    layers = [Descriptor(WHEEL_LAYER, w.digest, w.size, {mt.ANN_TITLE: w.file}) for w in kit_wheels]
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": KIT_ARTIFACT,
        "config": Descriptor(KIT_CONFIG, cfg_digest, len(config)).json(),
        "layers": [d.json() for d in layers], "annotations": {mt.ANN_VERSION: version}})
    digest = cache.put_bytes(manifest)
    ref = f"hydra-bundle/agent-kit:{tag}"
    types = {digest: mt.OCI_MANIFEST, cfg_digest: KIT_CONFIG, **{w.digest: WHEEL_LAYER for w in kit_wheels}}
    comp = ix.Kit(ref=ref, digest=digest, mediaType=mt.OCI_MANIFEST, blobs=list(types), version=version,
                  pythons=pythons, platforms=plats, wheels=kit_wheels)
    top = Descriptor(mt.OCI_MANIFEST, digest, len(manifest), {mt.ANN_REF_NAME: ref, mt.ANN_KIND: "kit"})
    log(f"agent kit: hydra-bundle {version} for {len(targets)} targets, {len(kit_wheels)} wheels")
    return KitBuild(Finished("kits", comp, top, types), install_script(), targets)

