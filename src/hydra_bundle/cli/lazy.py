"""Groups whose subcommands are imported when they are invoked (click's lazy-group pattern).

A group lists its commands from a table of ("module:attribute", short help), so ``--help`` imports no command
module and ``build``/``verify`` do not pay for the agent, the kubernetes client or pydantic models
(tests/test_cli_startup.py keeps each short help equal to the command's own)."""

from __future__ import annotations

import importlib
from typing import Any

import click

Table = dict[str, tuple[str, str]]   # name → ("module:attribute" under hydra_bundle.cli, short help)


def load_command(target: str, name: str) -> click.Command:
    module, _, attr = target.partition(":")
    cmd = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
    assert isinstance(cmd, click.Command) and cmd.name == name, target
    return cmd


class LazyGroup(click.Group):
    def __init__(self, *args: Any, table: Table | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.table: Table = table or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.table)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.table.get(cmd_name)
        return load_command(entry[0], cmd_name) if entry else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the table: `--help` imports no command module."""
        with formatter.section("Commands"):
            names = self.list_commands(ctx)
            limit = formatter.width - 6 - max(map(len, names))
            formatter.write_dl([(name, _shorten(self.table[name][1], limit)) for name in names])


def _shorten(text: str, limit: int) -> str:
    """Like click: whole words up to ``limit`` characters, then "..."."""
    if len(text) <= limit:
        return text
    out = ""
    for word in text.split():
        if len(out) + len(word) + 4 > limit:
            break
        out = f"{out} {word}" if out else word
    return out + "..."
