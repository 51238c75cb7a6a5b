"""Session fixtures for the agent tests: signing keys and bundles built by the real builder from images
pushed into the session's docker-registry. Import the fixtures you use into a test module."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hydra_bundle.bundle.index import BundleIndex
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.digest import sha256_bytes
from hydra_bundle.oci.sitename import normalize_host, site_name
from tests.support.agent import build_bundle
from tests.support.chartrepo import make_chart
from tests.support.images import Image, make_image, make_index, push_helm_chart, push_image, push_index
from tests.support.registry import Registry

PAST = "2001-01-01T00:00:00Z"


@dataclass
class Keys:
    release_key: Path
    release_pub: Path
    other_key: Path
    other_pub: Path


@dataclass
class Built:
    path: Path
    index: BundleIndex
    digest: str                     # bundle id: sha256 of the signed index bytes

    def component(self, ref_suffix: str) -> Any:
        return next(c for c in self.index.components.all() if c.ref.endswith(ref_suffix))


@dataclass
class Site:
    """What was pushed to the source registry (for digest comparisons)."""

    registry: Registry
    app1: Image
    app2: Image
    multi: list[Image]
    multi_digest: str
    filtered: list[Image]           # index of amd64 + arm64; bundles keep amd64 only
    filtered_digest: str
    filtered3: list[Image]          # index of amd64 + arm64 + ppc64le; bundles keep amd64 + arm64
    filtered3_digest: str
    chart_digest: str
    model_files: dict[str, bytes]
    tool: bytes

    @property
    def site_host(self) -> str:
        """The source registry's host as the first component of site names (``127.0.0.1_PORT``)."""
        return normalize_host(self.registry.host)

    def served(self, path: str) -> str:
        """Where the agent serves ``path`` of the source registry: its site name (the host stays in it)."""
        return site_name(f"{self.registry.host}/{path}").repository


@pytest.fixture(scope="session")
def agent_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("agent-keys")
    rk, rp = keygen(d / "release")
    ok, op = keygen(d / "other")
    return Keys(rk, rp, ok, op)


@pytest.fixture(scope="session")
def agent_site(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Site:
    host = registry.host
    app1 = make_image([20_000, 40_000], seed=301)
    app2 = make_image([20_000, 30_000], seed=302)
    push_image(host, "agent/app", "1.0", app1)
    push_image(host, "agent/app", "2.0", app2)
    multi = [make_image([8_000], seed=311, platform="linux/amd64"),
             make_image([8_000], seed=312, platform="linux/arm64/v8")]
    multi_digest = push_index(host, "agent/multi", "1.0", make_index(multi), multi)
    filtered = [make_image([8_000], seed=321, platform="linux/amd64", docker=True),
                make_image([8_000], seed=322, platform="linux/arm64/v8", docker=True)]
    filtered_digest = push_index(host, "agent/filtered", "1.0", make_index(filtered, docker=True), filtered)
    filtered3 = [make_image([6_000], seed=331, platform="linux/amd64"),
                 make_image([6_000], seed=332, platform="linux/arm64/v8"),
                 make_image([6_000], seed=333, platform="linux/ppc64le")]
    filtered3_digest = push_index(host, "agent/filtered3", "1.0", make_index(filtered3), filtered3)
    chart_digest = push_helm_chart(host, "agent/charts/demo", "0.1.0", make_chart("demo", "0.1.0"))
    rng = random.Random(7)
    model_files = {
        "config.json": b'{"architectures": ["Qwen3ForCausalLM"]}\n',
        "weights/model-00001-of-00001.safetensors": rng.randbytes(300_000),
        "tokenizer/vocab.txt": b"hello\nworld\n" * 100,
    }
    return Site(registry, app1, app2, multi, multi_digest, filtered, filtered_digest, filtered3, filtered3_digest,
                chart_digest, model_files, rng.randbytes(50_000))


def _spec(name: str, version: str, sequence: int, images: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": name, "version": version, "sequence": sequence},
            "platforms": ["linux/amd64"], "images": images, **extra}


def bundle_id(path: Path) -> str:
    from hydra_bundle.bundle.reader import open_bundle

    with open_bundle(path, None, require_signature=False) as ob:
        return sha256_bytes(ob.index_bytes)


@pytest.fixture(scope="session")
def agent_bundles(agent_site: Site, agent_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """demo1 (everything), demo2 (newer, shares the model), demo0 (older), stale (expired), foreign (other key),
    big (6 MB of layers, for interrupting an ingest)."""
    d = tmp_path_factory.mktemp("agent-bundles")
    host = agent_site.registry.host
    src = d / "src"
    (src / "model").mkdir(parents=True)
    for rel, data in agent_site.model_files.items():
        (src / "model" / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / "model" / rel).write_bytes(data)
    (src / "tool.bin").write_bytes(agent_site.tool)
    model = {"name": "tiny", "path": "model", "files": [{"path": p} for p in agent_site.model_files]}
    both = ["linux/amd64", "linux/arm64"]
    specs = {
        "demo1": _spec("demo", "1.0.0", 1, [
            {"ref": f"{host}/agent/app:1.0"},
            {"ref": f"{host}/agent/multi:1.0", "platforms": both},
            {"ref": f"{host}/agent/filtered:1.0"},
            {"ref": f"{host}/agent/filtered3:1.0", "platforms": both},
        ], charts=[{"name": "demo", "version": "0.1.0", "ref": f"oci://{host}/agent/charts/demo"}],
            models=[model], files=[{"name": "tool", "path": "tool.bin"}]),
        "demo2": _spec("demo", "2.0.0", 2, [{"ref": f"{host}/agent/app:2.0"}], models=[model]),
        "demo0": _spec("demo", "0.9.0", 0, [{"ref": f"{host}/agent/app:1.0"}]),
        "stale": _spec("stale", "1.0.0", 1, [{"ref": f"{host}/agent/app:1.0"}]),
        "foreign": _spec("foreign", "1.0.0", 1, [{"ref": f"{host}/agent/app:1.0"}]),
    }
    out: dict[str, Built] = {}
    cache = d / "cache"
    for key, spec in specs.items():
        signing = agent_keys.other_key if key == "foreign" else agent_keys.release_key
        path = d / f"{key}.tar"
        res = build_bundle(src, spec, signing, path, {host}, expires=PAST if key == "stale" else None, cache=cache)
        out[key] = Built(path, res.index, bundle_id(path))
    # a bigger bundle (random, incompressible layers) so an ingest can be interrupted mid-way
    big = make_image([2_000_000, 2_000_000, 2_000_000], seed=340)
    push_image(host, "agent/big", "1.0", big)
    path = d / "big.tar"
    res = build_bundle(src, _spec("big", "1.0.0", 1, [{"ref": f"{host}/agent/big:1.0"}]), agent_keys.release_key,
                       path, {host}, cache=cache)
    out["big"] = Built(path, res.index, bundle_id(path))
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def store_files(state: Path) -> dict[str, int]:
    """Blob files in the store (name → size) and leftovers in its tmp dir (prefixed ``tmp/``)."""
    out = {}
    for sub in ("blobs/sha256", "tmp"):
        p = state / "store" / sub
        if p.exists():
            for f in os.scandir(p):
                out[("" if sub.startswith("blobs") else "tmp/") + f.name] = f.stat().st_size
    return out
