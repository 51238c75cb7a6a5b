"""``hydra-bundle`` entry point."""

from __future__ import annotations

import click

from .. import __version__
from .agent_cmds import agent_group
from .bundle_cmds import build_cmd, inspect_cmd, keygen_cmd, lock_cmd, verify_cmd
from .lint_cmd import lint_cmd
from .transfer_cmds import copy_to_cmd, diff_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hydra-bundle")
def cli() -> None:
    """Signed, streaming bundles for air-gapped Kubernetes sites."""


for cmd in (keygen_cmd, lint_cmd, build_cmd, lock_cmd, verify_cmd, inspect_cmd, diff_cmd, copy_to_cmd):
    cli.add_command(cmd)
cli.add_command(agent_group)


def main() -> None:
    cli(prog_name="hydra-bundle")


if __name__ == "__main__":
    main()
