"""``hydra-bundle`` entry point.

Subcommands are imported when they are invoked (click's lazy-group pattern): ``build`` or ``verify`` do not pay
for importing the kubernetes client and the agent, which roughly halves their start-up time."""

from __future__ import annotations

import importlib

import click

from .. import __version__

# name → "module:attribute", in the order `--help` lists them
COMMANDS = {
    "keygen": "bundle_cmds:keygen_cmd",
    "lint": "lint_cmd:lint_cmd",
    "build": "bundle_cmds:build_cmd",
    "lock": "bundle_cmds:lock_cmd",
    "verify": "bundle_cmds:verify_cmd",
    "inspect": "bundle_cmds:inspect_cmd",
    "diff": "transfer_cmds:diff_cmd",
    "copy-to": "transfer_cmds:copy_to_cmd",
    "agent": "agent_cmds:agent_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        assert isinstance(cmd, click.Command) and cmd.name == cmd_name, target
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hydra-bundle")
def cli() -> None:
    """Signed, streaming bundles for air-gapped Kubernetes sites."""


def main() -> None:
    cli(prog_name="hydra-bundle")


if __name__ == "__main__":
    main()
