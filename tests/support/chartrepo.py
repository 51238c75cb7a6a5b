"""Helm charts for tests: deterministic chart .tgz files and classic `index.yaml` chart repos."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

FIXED_CREATED = "2024-01-01T00:00:00Z"
FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z

# Field order of helm's chart.Metadata Go struct (json.Marshal order, all omitempty).
HELM_METADATA_FIELDS = (
    "name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
    "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
    "dependencies", "type",
)  # fmt: skip


def make_chart(
    name: str,
    version: str,
    app_version: str = "1.0.0",
    *,
    description: str = "A hydra-bundle test chart",
    chart_type: str = "application",
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, bytes | str] | None = None,
) -> bytes:
    """A deterministic chart archive `NAME/Chart.yaml, values.yaml, templates/…` as `helm package` lays out.

    `extra` adds Chart.yaml keys; `files` adds/overrides files (paths relative to the chart dir).
    """
    meta: dict[str, Any] = {
        "apiVersion": "v2",
        "name": name,
        "version": version,
        "appVersion": app_version,
        "description": description,
        "type": chart_type,
    }
    meta.update(extra or {})
    content: dict[str, bytes | str] = {
        "Chart.yaml": yaml.safe_dump(meta, sort_keys=False),
        "values.yaml": "replicaCount: 1\nimage:\n  repository: example/app\n  tag: latest\n",
        "templates/configmap.yaml": (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
            "data:\n  replicas: {{ .Values.replicaCount | quote }}\n"
        ),
    }
    content.update(files or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(content):
            data = content[rel]
            blob = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(f"{name}/{rel}")
            info.size = len(blob)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(blob))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def read_chart_metadata(tgz: bytes | Path | str) -> dict[str, Any]:
    """Parse `<chart>/Chart.yaml` (the top-level one) out of a chart archive."""
    data = tgz if isinstance(tgz, bytes) else Path(tgz).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = member.name.strip("/").split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml" and member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                meta = yaml.safe_load(f.read())
                if not isinstance(meta, dict):
                    raise ValueError("Chart.yaml is not a mapping")
                return meta
    raise ValueError("no <chart>/Chart.yaml in archive")


def helm_config_json(meta: Mapping[str, Any]) -> bytes:
    """Chart metadata as `helm push` writes the OCI config blob (Go field order, empties omitted)."""
    out = {k: meta[k] for k in HELM_METADATA_FIELDS if meta.get(k) not in (None, "", [], {}, False)}
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()


def write_index(
    directory: Path | str,
    charts: Sequence[tuple[Path | str, str]],
    *,
    created: str = FIXED_CREATED,
) -> Path:
    """Write a classic Helm repo `index.yaml` into `directory` and return its path.

    Each chart is `(tgz_path, base)`: the entry URL is `base/<tgz name>` (base may be an absolute URL
    or a relative path; "" means just the file name); a base ending in `.tgz` is used verbatim.
    """
    entries: dict[str, list[dict[str, Any]]] = {}
    for tgz_path, base in charts:
        path = Path(tgz_path)
        data = path.read_bytes()
        meta = read_chart_metadata(data)
        if base.endswith(".tgz"):
            url = base
        elif base:
            url = f"{base.rstrip('/')}/{path.name}"
        else:
            url = path.name
        entry: dict[str, Any] = {k: meta[k] for k in HELM_METADATA_FIELDS if meta.get(k) not in (None, "")}
        entry.update(
            {
                "urls": [url],
                "created": created,
                "digest": hashlib.sha256(data).hexdigest(),
            }
        )
        entries.setdefault(str(meta["name"]), []).append(entry)
    index = {"apiVersion": "v1", "entries": entries, "generated": created}
    out = Path(directory) / "index.yaml"
    out.write_text(yaml.safe_dump(index, sort_keys=False))
    return out
