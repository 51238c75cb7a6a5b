"""The agent upgrades itself from the kit of an admitted bundle.

The ``upgrade`` step (right after ``ingest``, so the kit's wheels are in the store and verified) does nothing
unless the bundle's kit is newer than the running agent and the agent was installed from a kit (``install.sh``:
``PREFIX/versions/<v>``). Then it installs the new version beside the current one (a venv, pip ``--no-index``
from the store's wheels only), records ``trying OLD NEW 0`` in ``PREFIX/upgrade.state``, switches
``PREFIX/current`` atomically and ends the run with :class:`~hydra_bundle.agent.runner.Restart`: the daemon exits
with status 100 (``kit.installer.UPGRADE_EXIT``) and systemd starts it again (``RestartForceExitStatus=100``).

The launcher (``PREFIX/bin/hydra-bundle``) counts the starts of the new version; once it serves, the new agent
marks itself healthy (:func:`started`) and resumes the journal where the old one stopped (the remaining steps of
the bundle run with the new code). A version that does not become healthy in ``MAX_TRIES`` starts is switched
back by the launcher; the old version then records why, and never tries that kit version again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .. import __version__
from ..errors import HydraError
from ..kit import installer
from .journal import Journal
from .runner import Restart, SkipStep, StepContext, StepPending


def installation() -> Path | None:
    """The kit prefix this agent runs from (``PREFIX/versions/<version>`` with ``PREFIX/current``), or None."""
    venv = Path(sys.prefix)
    prefix = venv.parent.parent
    if venv.parent.name == "versions" and (prefix / "current").is_symlink() and (prefix / "bin").is_dir():
        return prefix
    return None


def _newer(a: str, b: str) -> bool:
    try:
        return Version(a) > Version(b)
    except InvalidVersion:
        return False


def run(ctx: StepContext) -> str:
    kits = ctx.index.components.kits
    if not kits:
        raise SkipStep("the bundle carries no agent kit")
    kit = kits[0]
    if not _newer(kit.version, __version__):
        raise SkipStep(f"the agent is {__version__}; the bundle's kit is {kit.version}: nothing to upgrade")
    prefix = installation()
    if prefix is None:
        raise SkipStep(f"the bundle carries agent {kit.version}, but this agent ({__version__}, {sys.prefix}) was not "
                       "installed from a kit: upgrade it with the bundle's install.sh")
    if not ctx.daemon:
        raise StepPending(f"the bundle carries agent {kit.version}: the agent daemon (`agent run`) installs it and "
                          "restarts into it; this one-shot command does not")
    state = installer.read_state(prefix)
    if len(state) >= 3 and state[0] == "rolled-back" and state[2] == kit.version:
        raise SkipStep(f"agent {kit.version} was rolled back (it did not become healthy in {state[3]} starts): "
                       f"staying on {__version__}")
    try:
        wheels = installer.wheels_for(kit.model_dump(), installer.target_of())
        with tempfile.TemporaryDirectory(prefix="hydra-kit-", dir=prefix) as tmp:
            for w in wheels:
                src = ctx.store.path(w["digest"])
                dest = Path(tmp) / w["file"]
                try:
                    os.link(src, dest)   # the store's blobs are verified; a link costs no copy
                except OSError:
                    shutil.copyfile(src, dest)
            installer.install_version(prefix, kit.version, Path(tmp), python=_base_python())
        installer.write_state(prefix, "trying", __version__, kit.version, "0")
        installer.switch(prefix, kit.version)
    except installer.KitError as e:
        raise HydraError(f"upgrading the agent to {kit.version}: {e}") from None
    ctx.journal.event(ctx.bundle_id, ctx.index.name, ctx.index.version, "agent-upgrade",
                      f"installed agent {kit.version} beside {__version__}; restarting into it")
    raise Restart(f"installed agent {kit.version} beside {__version__} ({prefix}); the agent restarts into it")


def _base_python() -> str:
    """The interpreter to build venvs with: the one this venv was made from."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


@dataclass
class AgentInfo:
    """What ``agent status`` says about the agent itself."""

    version: str
    prefix: Path | None
    state: list[str]

    def json(self) -> dict[str, object]:
        out: dict[str, object] = {"version": self.version, "kit": str(self.prefix) if self.prefix else None}
        s = self.state
        if len(s) >= 3 and s[0] in ("trying", "done", "rolled-back"):
            up: dict[str, object] = {"state": s[0], "from": s[1], "to": s[2]}
            if s[0] == "rolled-back":
                up["reason"] = f"{s[2]} did not become healthy in {int(s[3]) - 1} starts; back to {s[1]}"
            out["upgrade"] = up
        return out

    def text(self) -> str:
        where = f"installed from a kit at {self.prefix}" if self.prefix else f"not a kit install ({sys.prefix})"
        line = f"agent {self.version} ({where})"
        up = self.json().get("upgrade")
        if isinstance(up, dict):
            if up["state"] == "rolled-back":
                line += f"; upgrade to {up['to']} rolled back: {up['reason']}"
            elif up["state"] == "trying":
                line += f"; upgrading {up['from']} → {up['to']}: not healthy yet"
            elif up["from"] != up["to"]:
                line += f"; upgraded from {up['from']}"
        return line


def info() -> AgentInfo:
    prefix = installation()
    return AgentInfo(__version__, prefix, installer.read_state(prefix) if prefix else [])


def started(journal: Journal) -> None:
    """At start, once the agent serves: confirm a pending upgrade to this version, or record a rollback to it."""
    prefix = installation()
    if prefix is None:
        return
    state = installer.read_state(prefix)
    if installer.mark_healthy(prefix, __version__):
        gone = installer.prune_versions(prefix, {state[1], __version__})  # this one, and the one to go back to
        journal.event(None, "agent", __version__, "agent-upgraded", f"agent {state[1]} → {__version__}: healthy"
                      + (f" (removed {', '.join(gone)})" if gone else ""))
    elif len(state) == 4 and state[0] == "rolled-back" and state[1] == __version__:
        journal.event(None, "agent", __version__, "agent-rolled-back",
                      f"agent {state[2]} did not become healthy in {int(state[3]) - 1} starts: back to {state[1]}")
        installer.write_state(prefix, *state, "noted")
