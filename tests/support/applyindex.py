"""A bundle index for apply tests without building a bundle: the spec validated exactly as `build` does, manifest
components pointing at blobs held in a dict (the agent's content store stand-in)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hydra_bundle.bundle import index as ix
from hydra_bundle.spec import load_spec


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def synthetic_index(tmp: Path, spec: Mapping[str, Any], manifests: Mapping[str, str] | None = None,
                    *, chart_sources: Mapping[str, str] | None = None, chart_files: Mapping[str, Path] | None = None,
                    ) -> tuple[ix.BundleIndex, Callable[[str], bytes]]:
    """(index, read_blob). ``manifests`` maps manifest name → YAML text (files are written next to the spec
    and listed as `path:` sources when the spec does not list them); ``chart_sources`` maps chart name → the
    component source (oci://… or repo URL; default: the spec's ref/repo); ``chart_files`` maps chart name → its
    .tgz (the component's chartDigest is then the file's, so a Runtime's ``blob_file`` can hand it out)."""
    manifests = dict(manifests or {})
    doc = dict(spec)
    doc.setdefault("apiVersion", "hydra-bundle/v1")
    doc.setdefault("kind", "BundleSpec")
    doc.setdefault("metadata", {"name": "demo", "version": "1.0.0", "sequence": 1})
    if manifests and "manifests" not in doc:
        doc["manifests"] = [{"name": n, "path": f"{n}.yaml"} for n in manifests]
    for n, text in manifests.items():
        (tmp / f"{n}.yaml").write_text(text, encoding="utf-8")
    spec_path = tmp / "bundle-spec.yaml"
    spec_path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    s = load_spec(spec_path)
    blobs: dict[str, bytes] = {}
    comps = ix.Components()
    for m in s.manifests:
        data = (tmp / (m.path or f"{m.name}.yaml")).read_bytes()
        d = _digest(data)
        blobs[d] = data
        comps.manifests.append(ix.Manifests(ref=f"hydra-bundle/manifests/{m.name}:1.0.0", digest=d,
                                            mediaType="application/vnd.oci.image.manifest.v1+json", blobs=[d],
                                            name=m.name, source=str(m.path),
                                            file=ix.FileRef(path=Path(m.path or "").name, digest=d,
                                                            size=len(data))))
    for c in s.charts:
        src = (chart_sources or {}).get(c.name) or c.ref or c.repo or ""
        comps.charts.append(ix.Chart(ref=f"charts/{c.name}:{c.version}", digest=_digest(c.name.encode()),
                                     mediaType="application/vnd.oci.image.manifest.v1+json", blobs=[],
                                     name=c.name, version=c.version, source=src,
                                     chartDigest=_digest((chart_files or {})[c.name].read_bytes())
                                     if c.name in (chart_files or {}) else _digest(b"chart" + c.name.encode())))
    for mo in s.models:
        comps.models.append(ix.Model(ref=f"hydra-bundle/models/{mo.name}:1.0.0", digest=_digest(mo.name.encode()),
                                     mediaType="application/vnd.oci.image.manifest.v1+json", blobs=[],
                                     name=mo.name, source=mo.base_url or str(mo.path), files=[]))
    index = ix.BundleIndex(
        name=s.metadata.name, version=s.metadata.version, sequence=s.metadata.sequence,
        created="2026-01-01T00:00:00Z", builder="test", specDigest=_digest(spec_path.read_bytes()),
        platforms=s.platforms, components=comps, layout={}, blobs=[],
        spec=s.model_dump(mode="json", exclude_none=True, by_alias=True))

    def read_blob(digest: str) -> bytes:
        return blobs[digest]

    return index, read_blob
