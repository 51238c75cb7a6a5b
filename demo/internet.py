"""Stand-ins for the internet, built from ../shared/fixtures and generated data.

A docker-registry holds small synthetic images (and the fake-gpu-operator chart) under the same repository
paths as upstream, prefixed by the upstream host; an HTTP server holds the pinned CRDs, manifests and charts
under ``/<upstream host>/<path>``. The build reaches both only through ``--mirror``, exactly as a connected
host behind a Harbor/Nexus proxy would.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hydra_bundle.digest import hex_of, sha256_file
from hydra_bundle.oci.reference import Reference
from hydra_bundle.spec.model import BundleSpec
from tests.support.chartrepo import make_chart, write_index
from tests.support.httpserver import FileServer
from tests.support.images import make_image, push_helm_chart, push_image
from tests.support.registry import Registry

# The two qwen3-0.6b files whose exact text is known (shared/fixtures/notes/qwen3-0.6b-files.md): their
# sha256 match the real pins. The other files are generated stand-ins (the weights are 1.5 GB).
QWEN_CONFIG = """{
  "architectures": [
    "Qwen3ForCausalLM"
  ],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"""
QWEN_GENERATION = """{
    "bos_token_id": 151643,
    "do_sample": true,
    "eos_token_id": [
        151645,
        151643
    ],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0"
}"""


@dataclass
class Internet:
    registry: Registry
    files: FileServer
    root: Path
    mirrors: list[str] = field(default_factory=list)
    sets: dict[str, str] = field(default_factory=dict)
    model_dir: Path | None = None
    model_pins: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        self.files.stop()
        self.registry.stop()


def _chart_with_images(name: str, version: str, images: dict[str, str], extra_values: dict | None = None) -> bytes:
    """A small stand-in chart whose values name the images the real one uses (so lint/apply see them)."""
    values: dict = {"replicaCount": 1}  # what the stand-in's template renders
    values.update({k: {"image": {"repository": r.rsplit(":", 1)[0], "tag": r.rsplit(":", 1)[1]}}
                   for k, r in images.items()})
    values.update(extra_values or {})
    return make_chart(name, version, version, files={"values.yaml": yaml.safe_dump(values)})


def start(spec: BundleSpec, fixtures: Path, work: Path, log: callable) -> Internet:  # type: ignore[valid-type]
    reg = Registry()
    root = work / "www"
    root.mkdir()
    net = Internet(reg, FileServer(root), root)
    try:
        _seed_registry(spec, fixtures, net, log)
        _seed_http(spec, fixtures, net, work, log)
    except BaseException:
        net.stop()
        raise
    return net


def _seed_registry(spec: BundleSpec, fixtures: Path, net: Internet, log: callable) -> None:  # type: ignore[valid-type]
    hosts = set()
    for i, img in enumerate(spec.images):
        ref = Reference.parse(img.ref)
        hosts.add(ref.registry)
        image = make_image([48_000, 16_000], seed=1000 + i)
        push_image(net.registry.host, f"{ref.registry}/{ref.repository}", ref.tag, image)
    for c in spec.charts:
        if c.ref:
            r = c.oci_reference
            hosts.add(r.registry)
            tgz = fixtures / "charts" / f"{c.chart_name}-{c.version}.tgz"
            data = tgz.read_bytes() if tgz.exists() else make_chart(c.chart_name, c.version)
            push_helm_chart(net.registry.host, f"{r.registry}/{r.repository}", c.version, data)
    net.mirrors += [f"{h}={net.registry.host}/{h}" for h in sorted(hosts)]
    log(f"registry stand-in {net.registry.host}: {len(spec.images)} images under {', '.join(sorted(hosts))}")


def _put(root: Path, url: str, data: bytes) -> None:
    host_path = url.split("://", 1)[1]
    p = root / host_path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _seed_http(spec: BundleSpec, fixtures: Path, net: Internet, work: Path,
               log: callable) -> None:  # type: ignore[valid-type]
    by_sha = {}
    for p in fixtures.rglob("*"):
        if p.is_file() and p.stat().st_size < (64 << 20):
            by_sha[hex_of(sha256_file(p)[0])] = p  # streamed, not read whole
    hosts: set[str] = set()
    for m in spec.manifests:
        if m.url:
            src = by_sha.get(m.sha256 or "")
            if src is None:
                raise SystemExit(f"demo: no fixture has the sha256 pinned for manifest {m.name}")
            _put(net.root, m.url, src.read_bytes())
            hosts.add(m.url.split("/")[2])
    # classic chart repositories: the real dataset chart, stand-ins for the others
    image_sets = {
        "csi-driver-nfs": {"nfs": "registry.k8s.io/sig-storage/nfsplugin:v4.13.5"},
        "metallb": {"controller": "quay.io/metallb/controller:v0.16.1", "speaker": "quay.io/metallb/speaker:v0.16.1"},
        "istiod": {"pilot": "docker.io/istio/pilot:1.29.6"},
    }
    repos: dict[str, list[Path]] = {}
    for c in spec.charts:
        if not c.repo:
            continue
        fixture = fixtures / "charts" / f"{c.chart_name}-{c.version}.tgz"
        data = fixture.read_bytes() if fixture.exists() else _chart_with_images(
            c.chart_name, c.version, image_sets.get(c.chart_name, {}))
        target = net.root / c.repo.split("://", 1)[1] / f"{c.chart_name}-{c.version}.tgz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        repos.setdefault(c.repo, []).append(target)
        hosts.add(c.repo.split("/")[2])
    for repo, tgzs in repos.items():
        write_index(net.root / repo.split("://", 1)[1], [(t, "") for t in tgzs])
    # the NFS installer: a site input (build variables), here a generated tar with an install.sh
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        script = b"#!/bin/sh\necho 'installing the NFS driver (demo stand-in)'\n"
        ti = tarfile.TarInfo("install.sh")
        ti.size, ti.mode, ti.mtime = len(script), 0o755, 1700000000
        tf.addfile(ti, io.BytesIO(script))
    installer = buf.getvalue()
    url = "https://files.example.com/nfs/nfs-install.tar"
    _put(net.root, url, installer)
    hosts.add("files.example.com")
    net.sets = {"nfs_installer_url": url, "nfs_installer_sha256": hashlib.sha256(installer).hexdigest()}
    # the model: generated stand-ins (config files with their real content)
    net.model_dir = work / "model"
    net.model_dir.mkdir()
    for m in spec.models:
        for f in m.files:
            if f.path == "config.json":
                data = QWEN_CONFIG.encode()
            elif f.path == "generation_config.json":
                data = QWEN_GENERATION.encode()
            elif f.path.endswith(".safetensors"):
                data = hashlib.sha256(b"weights").digest() * (4 << 20 >> 5)  # 4 MiB of stand-in weights
            else:
                data = f"{m.name}/{f.path}: demo stand-in\n".encode()
            (net.model_dir / f.path).write_bytes(data)
            net.model_pins[f.path] = hashlib.sha256(data).hexdigest()
        if m.base_url:
            hosts.add(m.base_url.split("/")[2])
    net.mirrors += [f"https://{h}=http://{net.files.host}/{h}" for h in sorted(hosts)]
    log(f"HTTP stand-in {net.files.url}: {', '.join(sorted(hosts))}")
