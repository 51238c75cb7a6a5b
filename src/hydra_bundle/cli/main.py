"""``hydra-bundle`` entry point.

Subcommands are imported when they are invoked (click's lazy-group pattern): ``build`` or ``verify`` do not pay
for importing the kubernetes client and the agent, which roughly halves their start-up time."""

from __future__ import annotations

import click

from .. import __version__
from .lazy import LazyGroup, Table

# name → ("module:attribute", the short help `--help` lists), in the order `--help` lists them. The short help
# is written here so that listing the commands imports none of them (tests/test_cli_startup.py keeps it equal to
# each command's own).
COMMANDS: Table = {
    "keygen": ("bundle_cmds:keygen_cmd", "Create an ECDSA P-256 key pair: PREFIX.key (PEM PKCS#8) and PREFIX.pub."),
    "lint": ("lint_cmd:lint_cmd",
             "Check SPEC offline: schema, pins, manifests, site variables, and that every image is listed."),
    "build": ("bundle_cmds:build_cmd", "Build a signed bundle from SPEC (default bundle-spec.yaml)."),
    "lock": ("bundle_cmds:lock_cmd",
             "Pin every tag to a digest and every file to a sha256 (build --locked then refuses drift)."),
    "verify": ("bundle_cmds:verify_cmd", "Verify bundles or parts in one streaming pass each: signature first, then "
               "every member's size and digest."),
    "inspect": ("bundle_cmds:inspect_cmd",
                "Show what a bundle holds (reads only the index; does NOT verify — use `verify`)."),
    "diff": ("transfer_cmds:diff_cmd", "Components added/removed/changed from OLD to NEW (bundles, parts or index "
             "JSON), and the bytes a delta for a site holding OLD would carry (blobs in NEW not in OLD)."),
    "copy-to": ("transfer_cmds:copy_to_cmd", "Copy bundles or parts to DEST (a mounted stick): free space checked "
                "first, each file written as NAME.part, fsynced, read back and compared by sha256, then renamed; "
                "SHA256SUMS updated in DEST."),
    "agent": ("agent_cmds:agent_group", "The on-site agent: drop-dir daemon, embedded registry and file server."),
}


@click.group(cls=LazyGroup, table=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hydra-bundle")
def cli() -> None:
    """Signed, streaming bundles for air-gapped Kubernetes sites."""


def main() -> None:
    cli(prog_name="hydra-bundle")


if __name__ == "__main__":
    main()
