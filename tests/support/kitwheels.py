"""Other versions of hydra-bundle's own wheel for the agent-upgrade tests: the running code under another version
number (and, for "broken", an `agent run` that cannot start), as `--agent-wheelhouse` takes them."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

from hydra_bundle.builder.kit import own_wheel

BROKEN = b'\nraise RuntimeError("this build of hydra-bundle is broken on purpose (agent-upgrade test)")\n'


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def versioned_wheel(dest: Path, version: str, broken: bool = False) -> Path:
    """``dest/hydra_bundle-<version>-py3-none-any.whl``: this tree's code reporting ``version``."""
    src = own_wheel(dest / ".own")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"hydra_bundle-{version}-py3-none-any.whl"
    with zipfile.ZipFile(src) as zin:
        old_info = next(n.split("/", 1)[0] for n in zin.namelist() if n.endswith(".dist-info/METADATA"))
        new_info = f"hydra_bundle-{version}.dist-info"
        files: dict[str, bytes] = {}
        for name in zin.namelist():
            data = zin.read(name)
            if name == "hydra_bundle/__init__.py":
                data = re.sub(rb'__version__ = "[^"]+"', f'__version__ = "{version}"'.encode(), data)
            elif name == "hydra_bundle/agent/daemon.py" and broken:
                data += BROKEN
            elif name == f"{old_info}/METADATA":
                data = re.sub(rb"^Version: .*$", f"Version: {version}".encode(), data, flags=re.M)
            if name.endswith("/RECORD"):
                continue
            files[name.replace(old_info, new_info, 1)] = data
    record = "".join(f"{n},{_hash(d)},{len(d)}\n" for n, d in sorted(files.items())) + f"{new_info}/RECORD,,\n"
    files[f"{new_info}/RECORD"] = record.encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return out
