"""``hydra-bundle lint SPEC``: catch, offline and fast, what would otherwise fail on the far side of the air gap.

Checks: the schema (with build variables' ``example`` values when none is given); every URL-sourced file,
manifest and model file pinned by sha256; every manifest parses as Kubernetes objects whose kinds are built in
or defined by a CRD shipped in the same bundle (manifests or charts); every ``${site.…}`` variable known (the
``site.vars.*`` a bundle needs are listed for the operator); every image referenced by a manifest's workloads,
a chart's values/templates or a deploy step is listed in ``images`` — the classic "forgot one image" air-gap
failure. Content that lives behind a URL is looked up by its pin in the build cache and in ``--search`` dirs;
what cannot be found offline is reported as not checked, never silently passed.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .digest import hex_of, sha256_file
from .errors import SpecError, UsageError
from .k8s.kinds import BUILTIN
from .k8s.manifests import parse_manifests, site_variables
from .k8s.objects import api_group, workload_images
from .oci.reference import Reference
from .spec import load_spec
from .spec.model import BundleSpec

_SITE_VAR = re.compile(r"\$\{site\.vars\.([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_IMAGE = re.compile(r"""^\s*-?\s*image:\s*["']?([A-Za-z0-9][^\s"'{}]*:[^\s"'{}]+)["']?\s*$""", re.M)
_DATASET_CRD = ("dataset.baizeai.io", "Dataset")


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    site_vars: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors


class Content:
    """Finds pinned content offline: the build cache, then files in ``--search`` dirs (by sha256)."""

    def __init__(self, cache_dir: Path | None, search: Iterable[Path]):
        self.cache = cache_dir / "blobs" / "sha256" if cache_dir else None
        self.search = [Path(p) for p in search]
        self._index: dict[str, Path] | None = None

    def _scan(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            for root in self.search:
                for p in sorted(root.rglob("*")):
                    if p.is_file() and p.stat().st_size < (256 << 20):
                        self._index.setdefault(hex_of(sha256_file(p)[0]), p)  # streamed, not read whole
        return self._index

    def by_sha(self, sha: str | None) -> bytes | None:
        if not sha:
            return None
        if self.cache and (self.cache / sha).is_file():
            return (self.cache / sha).read_bytes()
        p = self._scan().get(sha)
        return p.read_bytes() if p else None

    def chart(self, name: str, version: str, sha: str | None) -> bytes | None:
        data = self.by_sha(sha)
        if data is not None:
            return data
        for root in self.search:
            for p in root.rglob(f"{name}-{version}.tgz"):
                return p.read_bytes()
        return None


def _dummy_site_vars(names: set[str]) -> dict[str, Any]:
    """Placeholder values for every site variable (lint checks names, not values)."""
    return site_variables(cluster_name="lint", domain="lint.example", registry="registry.lint:5000",
                          file_server="http://files.lint:81", storage_class="nfs-csi",
                          metallb_addresses=["192.0.2.0/28"], extra={n: "x" for n in names},
                          bundle_name="lint", bundle_version="0")


def _norm(ref: str) -> str | None:
    try:
        r = Reference.parse(ref)
    except UsageError:
        return None
    return f"{r.name}@{r.digest}" if r.digest and not r.tag else f"{r.name}:{r.tag}"


def _chart_files(tgz: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tf:
        for m in tf:
            if m.isreg() and m.size < (4 << 20) and m.name.count("/") >= 1:
                f = tf.extractfile(m)
                if f is not None:
                    out[m.name.split("/", 1)[1]] = f.read()
    return out


def chart_images(files: dict[str, bytes]) -> tuple[list[str], list[dict[str, Any]]]:
    """Images a packaged chart will pull (best effort, no rendering): values.yaml image blocks
    (``registry``/``repository``/``tag`` with global.imageRegistry, baseRepo and appVersion defaults) and
    literal ``image: x:y`` lines in templates. Also returns the CRDs the chart ships."""
    meta = yaml.safe_load(files.get("Chart.yaml", b"{}")) or {}
    app_version = str(meta.get("appVersion") or meta.get("version") or "latest")
    values = yaml.safe_load(files.get("values.yaml", b"{}")) or {}
    refs: list[str] = []
    global_registry = ((values.get("global") or {}).get("imageRegistry") if isinstance(values, dict) else None)

    def walk(node: Any, inherited: dict[str, str]) -> None:
        if isinstance(node, dict):
            ctx = dict(inherited)
            for k in ("baseRepo", "imageRegistry", "hub"):
                if isinstance(node.get(k), str) and node[k]:
                    ctx[k] = node[k]
            repo = node.get("repository")
            if isinstance(repo, str) and repo and not repo.startswith("{{"):
                tag = str(node.get("tag") or app_version)
                reg = node.get("registry") or ""
                if repo.startswith("/"):
                    refs.append(f"{ctx.get('baseRepo', '').rstrip('/')}{repo}:{tag}")
                elif reg or ("/" in repo and "." not in repo.split("/")[0] and global_registry):
                    refs.append(f"{str(reg or global_registry).rstrip('/')}/{repo}:{tag}")
                else:
                    refs.append(f"{repo}:{tag}")
            for v in node.values():
                walk(v, ctx)
        elif isinstance(node, list):
            for v in node:
                walk(v, inherited)

    walk(values, {})
    crds: list[dict[str, Any]] = []
    for name, data in files.items():
        if name.startswith("templates/") or name.startswith("crds/"):
            text = data.decode(errors="replace")
            refs += [m.group(1) for m in _TEMPLATE_IMAGE.finditer(text)]
            if "CustomResourceDefinition" in text and "{{" not in text:
                try:
                    crds += [d for d in yaml.safe_load_all(text) if isinstance(d, dict)
                             and d.get("kind") == "CustomResourceDefinition"]
                except yaml.YAMLError:
                    pass
    return refs, crds


def _crd_kinds(crd: dict[str, Any]) -> tuple[str, str] | None:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    if spec.get("group") and names.get("kind"):
        return str(spec["group"]), str(names["kind"])
    return None


def lint(spec_path: Path, variables: dict[str, str] | None = None, cache_dir: Path | None = None,
         search: Iterable[Path] = ()) -> Report:
    rep = Report()
    spec: BundleSpec = load_spec(spec_path, variables, use_examples=True)
    fname = str(spec_path)
    lines = getattr(spec, "_lines", None)

    def at(loc: tuple[str | int, ...]) -> str:
        return f"{fname}:{lines.line(loc) if lines else 1}"

    if spec._examples_used:
        rep.notes.append(f"build variables without a value were checked with their examples: "
                         f"{', '.join(spec._examples_used)} (build needs --set)")
    content = Content(cache_dir, search)
    images = {n for i in spec.images if (n := _norm(i.ref.removeprefix("docker-daemon:")))}

    def need_image(ref: str, where: str, why: str) -> None:
        n = _norm(ref)
        if n is None:
            rep.errors.append(f"{where}: {why}: {ref!r} is not a valid image reference")
        elif n not in images:
            rep.errors.append(f"{where}: {why}: image {ref} is not listed in images (it would not be on the site)")

    # pins
    for section in ("manifests", "files"):
        for i, item in enumerate(getattr(spec, section)):
            if item.url and not item.sha256:
                rep.errors.append(f"{at((section, i, 'url'))}: {section}[{i}]: {item.name} is fetched from a URL "
                                  "without a sha256 pin")
    for i, m in enumerate(spec.models):
        for j, f in enumerate(m.files):
            if not f.sha256:
                rep.errors.append(f"{at(('models', i, 'files', j))}: models[{i}].files[{j}]: {m.name}/{f.path} "
                                  "has no sha256 pin")
    for i, c in enumerate(spec.charts):
        if c.repo and not c.sha256:
            rep.warnings.append(f"{at(('charts', i))}: charts[{i}]: {c.name} {c.version} has no sha256 pin "
                                "(`hydra-bundle lock` pins it)")
    tagged = [i.ref for i in spec.images if "@" not in i.ref and not i.ref.startswith("docker-daemon:")]
    if tagged:
        rep.notes.append(f"{len(tagged)} image(s) by tag: `hydra-bundle lock` pins them to digests, "
                         "`build --locked` refuses drift")

    # manifests: parse with site variables, collect CRDs and objects
    texts: list[tuple[int, str, str]] = []  # (index, file label, text)
    for i, man in enumerate(spec.manifests):
        if man.path:
            p = spec.local_path(man.path)
            try:
                texts.append((i, str(Path(man.path)), p.read_text(encoding="utf-8")))
            except OSError as e:
                rep.errors.append(f"{at(('manifests', i, 'path'))}: manifests[{i}]: cannot read {p}: {e.strerror}")
        else:
            data = content.by_sha(man.sha256)
            if data is None:
                rep.notes.append(f"manifests[{i}] {man.name}: not checked (not in the build cache or --search dirs)")
            else:
                texts.append((i, f"{man.name} ({man.filename})", data.decode("utf-8", errors="replace")))
    for _, _, text in texts:
        rep.site_vars |= set(_SITE_VAR.findall(text))
    for c in spec.charts:
        rep.site_vars |= set(_SITE_VAR.findall(yaml.safe_dump(c.values)))
    variables_site = _dummy_site_vars(rep.site_vars)
    known_kinds = set(BUILTIN)
    objects: list[tuple[str, dict[str, Any]]] = []
    for _i, label, text in texts:
        try:
            docs = parse_manifests(text, label, variables_site)
        except SpecError as e:  # SubstError too
            rep.errors.extend(e.problems)
            continue
        for d in docs:
            obj = d.obj
            if "kind" not in obj or "apiVersion" not in obj:
                rep.errors.append(f"{d.where}: not a Kubernetes object (needs apiVersion and kind)")
                continue
            objects.append((d.where, obj))
            if obj["kind"] == "CustomResourceDefinition" and (ck := _crd_kinds(obj)):
                known_kinds.add(ck)

    # charts: images and CRDs they ship
    for i, c in enumerate(spec.charts):
        data = content.chart(c.chart_name, c.version, c.sha256)
        if data is None:
            rep.notes.append(f"charts[{i}] {c.name} {c.version}: content not checked (not in the build cache or "
                             "--search dirs)")
            continue
        try:
            refs, crds = chart_images(_chart_files(data))
        except (tarfile.TarError, OSError, yaml.YAMLError) as e:
            rep.errors.append(f"{at(('charts', i))}: charts[{i}]: {c.name} {c.version}: unreadable chart ({e})")
            continue
        for ck in filter(None, map(_crd_kinds, crds)):
            known_kinds.add(ck)
        for ref in dict.fromkeys(refs):
            need_image(ref, at(("charts", i)), f"chart {c.name} {c.version}")

    unchecked = any("not checked" in n for n in rep.notes)
    for where, obj in objects:
        group = api_group(obj["apiVersion"])
        if (group, obj["kind"]) not in known_kinds:
            msg = (f"{where}: {obj['kind']} ({obj['apiVersion']}) is neither built in nor defined by a CRD "
                   "in this bundle")
            if unchecked:  # a CRD may hide in content we could not read offline
                rep.warnings.append(msg + " (among what was checked: see the notes for content not checked)")
            else:
                rep.errors.append(msg)
        for path, image in workload_images(obj):
            need_image(image, where, f"{obj['kind']}/{(obj.get('metadata') or {}).get('name')} {path}")

    # deploy steps
    if spec.deploy:
        for i, st in enumerate(spec.deploy.steps):
            if st.chart:
                for path, ref in st.chart.image_values.items():
                    chart = next((c for c in spec.charts if c.name == st.chart.name), None)
                    version = chart.version if chart else "latest"
                    r = Reference.parse(ref)
                    full = ref if (r.tag != "latest" or ":" in ref.rsplit("/", 1)[-1] or r.digest) else None
                    if full:
                        need_image(full, at(("deploy", "steps", i, "chart", "image_values", path)), "image_values")
                    elif not any(n.startswith(r.name + ":") for n in images):
                        rep.errors.append(f"{at(('deploy', 'steps', i, 'chart', 'image_values', path))}: "
                                          f"image_values {path}: no image of {r.name} in images (chart {version})")
            if st.warmup and _DATASET_CRD not in known_kinds and not unchecked:
                rep.warnings.append(f"{at(('deploy', 'steps', i, 'warmup'))}: warmup needs the Dataset CRD "
                                    "(dataset.baizeai.io); it is not in this bundle's manifests or checked charts")
    if rep.site_vars:
        rep.notes.append("site.vars this bundle needs in the agent config: " + ", ".join(sorted(rep.site_vars)))
    return rep
