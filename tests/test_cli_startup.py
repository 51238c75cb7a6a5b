"""The CLI answers without importing what it does not run: `--help` lists the commands from a table (no
command module imported), `verify` and `inspect` never import the builder, the agent or the Kubernetes client.
What is imported is asserted, not how long it takes (docs/benchmarks.md has the times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hydra_bundle.cli.agent_cmds import AGENT_COMMANDS
from hydra_bundle.cli.lazy import load_command
from hydra_bundle.cli.main import COMMANDS
from tests.support.bundles import keypair, run_cli, write_spec


def _imported(*args: str) -> set[str]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "hydra_bundle.cli.main", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("name", sorted(COMMANDS) + [f"agent {n}" for n in sorted(AGENT_COMMANDS)])
def test_the_command_table_says_what_each_command_says(name: str) -> None:
    group, _, sub = name.rpartition(" ")
    target, short = (AGENT_COMMANDS if group else COMMANDS)[sub]
    assert load_command(target, sub).get_short_help_str(limit=10**6) == short


def test_every_agent_command_is_in_the_table() -> None:
    """A command module's click commands all reachable by name (none defined and forgotten)."""
    import click

    modules = {t.partition(":")[0] for t, _ in AGENT_COMMANDS.values()}
    found = set()
    for m in modules:
        mod = __import__(f"hydra_bundle.cli.{m}", fromlist=["_"])
        found |= {f"{m}:{k}" for k, v in vars(mod).items() if isinstance(v, click.Command)}
    assert found == {t for t, _ in AGENT_COMMANDS.values()}


def test_help_imports_no_command() -> None:
    mods = _imported("--help")
    assert not {m for m in mods if m.startswith("hydra_bundle.") and m not in (
        "hydra_bundle.cli.main", "hydra_bundle.cli", "hydra_bundle.cli.lazy")} - {"hydra_bundle"}, mods


@pytest.mark.parametrize("args", [["agent", "--help"], *(["agent", n, "--help"] for n in sorted(AGENT_COMMANDS))])
def test_agent_help_imports_neither_the_config_schema_nor_the_journal(args: list[str]) -> None:
    """`agent --help` imports no agent command; `agent X --help` imports its command module only: the config
    schema (pydantic, cryptography), the journal and the apply planner load when the command runs."""
    mods = _imported(*args)
    heavy = {m for m in mods if m in ("hydra_bundle.agent.config", "hydra_bundle.agent.journal") or m.startswith((
                                              "hydra_bundle.apply", "hydra_bundle.spec", "pydantic", "kubernetes",
                                              "cryptography", "httpx", "rich", "yaml"))}
    assert heavy == set(), heavy
    if len(args) == 2:
        assert not {m for m in mods if m.startswith("hydra_bundle.cli.") and m not in (
            "hydra_bundle.cli.main", "hydra_bundle.cli.lazy", "hydra_bundle.cli.agent_cmds")}, mods


@pytest.mark.parametrize("cmd", ["verify", "inspect"])
def test_verify_and_inspect_import_neither_builder_nor_agent(cmd: str) -> None:
    mods = _imported(cmd, "--help")
    heavy = {m for m in mods if m.startswith(("hydra_bundle.builder", "hydra_bundle.agent", "hydra_bundle.apply",
                                              "kubernetes", "helm_python", "httpx", "pydantic", "cryptography",
                                              "rich"))}
    assert heavy == set(), heavy


def test_verify_and_inspect_load_only_the_reader(tmp_path: Path) -> None:
    """A real verify and inspect (output not a terminal) import the reader, not rich, the split writer or the
    builder: rich alone is ~60 ms."""
    key, pub = keypair(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    spec = write_spec(tmp_path / "spec.yaml", files=[{"name": "f", "path": "f.bin"}])
    out = tmp_path / "b.tar"
    assert run_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "-q",
                    "--cache-dir", tmp_path / "c"]).exit_code == 0
    for args in (["verify", str(out), "--pub", str(pub)], ["inspect", str(out)]):
        mods = _imported(*args)
        assert "hydra_bundle.bundle.reader" in mods
        unwanted = {m for m in mods if m.startswith(("rich", "hydra_bundle.bundle.tarwriter", "hydra_bundle.builder",
                                                     "hydra_bundle.agent", "concurrent.futures"))}
        if args[0] == "inspect":
            unwanted.discard("hydra_bundle.bundle.tarwriter")  # describe() of a split set lives beside the writer
        assert unwanted == set(), (args[0], unwanted)
