"""Helpers for bundle tests: run the CLI in-process, write specs, read bundle tars member by member."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from hydra_bundle.cli.main import cli


def run_cli(args: Sequence[str], env: Mapping[str, str | None] | None = None) -> Result:
    """Invoke `hydra-bundle ARGS` in-process; stdout and stderr are captured separately."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=dict(env or {}), catch_exceptions=False)


def isolated_auth_env(tmp_path: Path, auth_file: Path | None = None) -> dict[str, str | None]:
    """Registry credentials only from `auth_file` (nothing from ~/.docker or $XDG_RUNTIME_DIR)."""
    empty = tmp_path / "no-docker-config"
    empty.mkdir(exist_ok=True)
    return {
        "REGISTRY_AUTH_FILE": str(auth_file or tmp_path / "no-auth.json"),
        "DOCKER_CONFIG": str(empty),
        "XDG_RUNTIME_DIR": None,
    }


def keypair(directory: Path, name: str = "k", env: Mapping[str, str | None] | None = None) -> tuple[Path, Path]:
    """`hydra-bundle keygen DIR/NAME` → (NAME.key, NAME.pub)."""
    res = run_cli(["keygen", directory / name], env)
    assert res.exit_code == 0, res.output
    return directory / f"{name}.key", directory / f"{name}.pub"


def write_spec(path: Path, *, name: str = "demo", version: str = "1.0.0", sequence: int = 1,
               **sections: Any) -> Path:
    """A bundle-spec.yaml with the given sections (images, charts, manifests, files, models, platforms)."""
    doc: dict[str, Any] = {
        "apiVersion": "hydra-bundle/v1",
        "kind": "BundleSpec",
        "metadata": {"name": name, "version": version, "sequence": sequence},
    }
    doc.update({k: v for k, v in sections.items() if v is not None})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of(data: bytes) -> str:
    return "sha256:" + sha256_hex(data)


@dataclass(frozen=True)
class TarMember:
    name: str
    size: int
    header_offset: int
    data_offset: int
    type: bytes


def tar_members(bundle: Path) -> list[TarMember]:
    """Members in archive order, with their header and data offsets."""
    out = []
    with tarfile.open(bundle, "r:") as tf:
        for ti in tf:
            out.append(TarMember(ti.name, ti.size, ti.offset, ti.offset_data, ti.type))
    return out


def member_bytes(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle, "r:") as tf:
        f = tf.extractfile(name)
        assert f is not None, name
        return f.read()


def read_index(bundle: Path) -> dict[str, Any]:
    return json.loads(member_bytes(bundle, "hydra-bundle.json"))


def layout_index(bundle: Path) -> dict[str, Any]:
    return json.loads(member_bytes(bundle, "index.json"))


def blob_names(bundle: Path) -> list[str]:
    return [m.name for m in tar_members(bundle) if m.name.startswith("blobs/")]


def blob(bundle: Path, digest: str) -> bytes:
    return member_bytes(bundle, "blobs/sha256/" + digest.removeprefix("sha256:"))


def component(index: Mapping[str, Any], kind: str, **match: Any) -> dict[str, Any]:
    """The one component of `kind` whose fields equal `match`."""
    found = [c for c in index["components"][kind] if all(c.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (kind, match, index["components"][kind])
    return found[0]
