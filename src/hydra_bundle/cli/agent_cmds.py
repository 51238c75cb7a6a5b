"""``hydra-bundle agent …``: run the on-site agent and ask it what is on this site.

The group lists its subcommands from a table (``lazy.py``): ``agent --help`` imports none of them, and each
subcommand imports the agent config schema, the journal or the apply planner only when it runs."""

from __future__ import annotations

import click

from .lazy import LazyGroup, Table

AGENT_COMMANDS: Table = {
    "run": ("run_cmds:run_cmd", "Run the agent in the foreground (systemd: Type=notify)."),
    "ingest": ("run_cmds:ingest_cmd",
               "One-shot: run FILE through the same pipeline as the daemon (verify, ingest, publish, push)."),
    "status": ("status_cmds:status_cmd", "What is on this site: bundles with version, sequence, digest, state, "
               "steps (with what the apply steps changed, their notes and outputs, e.g. the /etc/hosts line for "
               "the gateway) and components."),
    "history": ("status_cmds:history_cmd", "Recent events: received, steps, quarantined, complete, duplicates; "
                "and who moved which bundle where (install, upgrade, rollback, remove: operator, from and to "
                "version, time)."),
    "inventory": ("status_cmds:inventory_cmd",
                  "Every blob digest this site holds (published), with the bundles: the input for delta bundles."),
    "plan": ("apply_cmds:plan_cmd",
             "Every action the apply steps would take for BUNDLE on this site, in order; nothing is done."),
    "apply": ("apply_cmds:apply_cmd",
              "Re-run the apply steps of an ingested bundle (NAME, or a digest prefix) now, in this process."),
    "mirror-config": ("apply_cmds:mirror_config_cmd", "Registry-mirror snippets for the nodes: every upstream "
                      "registry of the published images resolves to the site registry (images Hydra references "
                      "at runtime, e.g. the vllm-openai CPU image, included)."),
    "ca": ("apply_cmds:ca_cmd",
           "Print the site CA certificate (PEM) that issues the gateway certificates, for operators to trust."),
    "preflight": ("preflight_cmd:preflight_cmd", "Check what BUNDLE needs of this site, alone: Kubernetes version, "
                  "APIs/CRDs, storage classes, MetalLB addresses, MySQL credentials, image architectures, node "
                  "memory, free space."),
    "remove": ("lifecycle_cmds:remove_cmd", "Remove what bundle NAME installed: Helm releases uninstalled, "
               "labelled objects and Datasets deleted, node labels taken off, references no longer served."),
    "rollback": ("lifecycle_cmds:rollback_cmd", "Go back (or forth) to a retained VERSION of bundle NAME: publish "
                 "it again and re-run its apply steps."),
    "gc": ("gc_cmd:gc_cmd", "Remove older bundle versions and unreferenced blobs from the store, under the pipeline "
           "lock: unpublish first (one transaction), then delete the blobs; report the bytes freed."),
}


@click.group("agent", cls=LazyGroup, table=AGENT_COMMANDS)
def agent_group() -> None:
    """The on-site agent: drop-dir daemon, embedded registry and file server."""
