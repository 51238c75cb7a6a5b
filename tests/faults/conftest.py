"""Fixtures of the fault suite: signing keys and bundles built by the real builder from images pushed into the
session's docker-registry. ``rich`` holds every kind of member the format has (index, signature, layout, image
manifests and configs, layers, a chart, a manifest file, a plain file, model data) and two 1.5 MB layers, so
a throttled ingest can be killed mid-blob."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_bundle.bundle.index import BundleIndex
from hydra_bundle.bundle.reader import open_bundle
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.digest import sha256_bytes
from hydra_bundle.oci.sitename import normalize_host
from tests.faults.support import FaultAgent, bundle_states, journal, registry_tags, served_state, wait_until
from tests.support.agent import build_bundle
from tests.support.bundles import run_cli
from tests.support.chartrepo import make_chart
from tests.support.images import make_image, make_index, push_helm_chart, push_image, push_index
from tests.support.registry import Registry


@dataclass
class Keys:
    key: Path
    pub: Path
    other_key: Path
    other_pub: Path


@dataclass
class Bundle:
    path: Path
    index: BundleIndex
    digest: str      # bundle id: sha256 of the signed index bytes

    @property
    def sizes(self) -> dict[str, int]:
        return {b.digest: b.size for b in self.index.blobs}


@dataclass
class Bundles:
    rich: Bundle
    order1: Bundle   # name "order", sequence 1
    order2: Bundle   # name "order", sequence 2
    repos: list[str]  # repositories of the images and the chart (push targets are checked there)


def _spec(name: str, version: str, sequence: int, **sections: Any) -> dict[str, Any]:
    return {"apiVersion": "hydra-bundle/v1", "kind": "BundleSpec",
            "metadata": {"name": name, "version": version, "sequence": sequence},
            "platforms": ["linux/amd64"], **sections}


def _load(path: Path) -> Bundle:
    with open_bundle(path, None, require_signature=False) as ob:
        return Bundle(path, ob.index, sha256_bytes(ob.index_bytes))


@pytest.fixture(scope="session")
def fault_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("fault-keys")
    k, p = keygen(d / "release")
    ok, op = keygen(d / "other")
    return Keys(k, p, ok, op)


@pytest.fixture(scope="session")
def small_bundle(fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A 40 KB bundle from local files only (a manifest, a file, a two-file model): fast enough to fuzz."""
    d = tmp_path_factory.mktemp("small-bundle")
    rnd = random.Random(941)
    (d / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: small}\n")
    (d / "tool.bin").write_bytes(rnd.randbytes(9_000))
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text('{"hidden_size": 8}')
    (d / "model" / "w.safetensors").write_bytes(rnd.randbytes(3_000))
    spec = _spec("small", "1.0.0", 1, manifests=[{"name": "cm", "path": "cm.yaml"}],
                 files=[{"name": "tool", "path": "tool.bin"}],
                 models=[{"name": "tiny", "path": "model", "files": [{"path": "config.json"},
                                                                    {"path": "w.safetensors"}]}])
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = d / "small.tar"
    res = run_cli(["build", "--no-agent-kit",
                   d / "spec.yaml", "-o", out, "--key", fault_keys.key, "-q", "--cache-dir", d / "cache"],
                  env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert res.exit_code == 0, res.output
    return _load(out)


@pytest.fixture(scope="session")
def fault_bundles(registry: Registry, fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    d = tmp_path_factory.mktemp("fault-bundles")
    host = registry.host
    push_image(host, "faults/app", "1.0", make_image([30_000, 60_000], seed=901))
    push_image(host, "faults/app", "2.0", make_image([30_000, 20_000], seed=902))
    plats = [make_image([7_000], seed=911, platform="linux/amd64"),
             make_image([7_000], seed=912, platform="linux/arm64/v8"),
             make_image([7_000], seed=913, platform="linux/ppc64le")]
    push_index(host, "faults/multi", "1.0", make_index(plats), plats)
    push_image(host, "faults/big", "1.0", make_image([1_500_000, 1_500_000], seed=921))
    push_helm_chart(host, "faults/charts/demo", "0.1.0", make_chart("demo", "0.1.0"))
    src = d / "src"
    (src / "model" / "weights").mkdir(parents=True)
    rnd = random.Random(931)
    (src / "model" / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 8}\n')
    (src / "model" / "weights" / "model.safetensors").write_bytes(rnd.randbytes(400_000))
    (src / "model" / "vocab.txt").write_bytes(b"hello\nworld\n" * 300)
    (src / "tool.bin").write_bytes(rnd.randbytes(50_000))
    (src / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: faults}\ndata: {a: b}\n")
    rich = _spec(
        "rich", "1.0.0", 1,
        images=[{"ref": f"{host}/faults/app:1.0"}, {"ref": f"{host}/faults/big:1.0"},
                {"ref": f"{host}/faults/multi:1.0", "platforms": ["linux/amd64", "linux/arm64"]}],
        charts=[{"name": "demo", "version": "0.1.0", "ref": f"oci://{host}/faults/charts/demo"}],
        manifests=[{"name": "cm", "path": "cm.yaml"}],
        files=[{"name": "tool", "path": "tool.bin"}],
        models=[{"name": "tiny", "path": "model", "files": [{"path": "config.json"},
                                                           {"path": "weights/model.safetensors"},
                                                           {"path": "vocab.txt"}]}])
    cache = d / "cache"
    out = {}
    for key, spec in {"rich": rich,
                      "order1": _spec("order", "1.0.0", 1, images=[{"ref": f"{host}/faults/app:1.0"}]),
                      "order2": _spec("order", "2.0.0", 2, images=[{"ref": f"{host}/faults/app:2.0"}])}.items():
        path = d / f"{key}.tar"
        build_bundle(src, spec, fault_keys.key, path, {host}, cache=cache)
        out[key] = _load(path)
    return Bundles(out["rich"], out["order1"], out["order2"],
                   [f"{normalize_host(host)}/{r}" for r in ("faults/app", "faults/big", "faults/multi",
                                                             "faults/charts/demo")])  # site names keep the host


RATE = 6_000_000  # limits.ingest_bytes_per_second of the kill trials: the rich bundle takes about 0.6 s to ingest


@dataclass
class Reference:
    """An uninterrupted run of the rich bundle with push: the state every faulted run must end in."""

    served: dict[str, Any]
    pushed: dict[str, str]
    refs: int
    seconds: float           # drop → complete


def make_agent(root: Path, keys: Keys, target: Registry | str, **overrides: Any) -> FaultAgent:
    host = target if isinstance(target, str) else target.host
    return FaultAgent(root, [keys.pub], **{"push": {"registry": host, "insecure": True},
                                           "limits": {"ingest_bytes_per_second": RATE}, **overrides})


def complete(agent: FaultAgent, key: str = "rich 1.0.0") -> bool:
    return bundle_states(agent.state).get(key) == "complete"


@pytest.fixture(scope="session")
def reference(fault_bundles: Bundles, fault_keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    with Registry() as target:
        agent = make_agent(tmp_path_factory.mktemp("reference"), fault_keys, target)
        with agent:
            agent.start_armed(None)
            agent.wait_healthy()
            t0 = time.monotonic()
            agent.drop_file(fault_bundles.rich.path)
            wait_until(lambda: complete(agent), 60, f"reference run complete\n{agent.log_tail()}")
            seconds = time.monotonic() - t0
            served = served_state(agent)
            refs = journal(agent.state, "SELECT COUNT(*) FROM refs")[0][0]
            pushed = registry_tags(target.host, fault_bundles.repos)
    assert pushed and served["tags"] and refs
    return Reference(served, pushed, refs, seconds)
