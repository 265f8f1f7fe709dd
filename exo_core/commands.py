"""The commands behind ``exo`` (start a node), ``exo ping`` and ``exo run``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from exo_core.cli import Cli
    from exo_core.components import Kind


def node_command(cli: Cli, ns: argparse.Namespace) -> int:
    """Start a node with the selected components and serve until interrupted."""
    core = cli.core_settings(ns)
    kinds: tuple[Kind, ...] = ("discovery", "transport", "partitioner", "engine")
    # Look every selection up before building anything: a typo fails at once, naming what is installed.
    selected = {kind: cli.selected(core, kind) for kind in kinds}
    used = {c.settings for c in selected.values() if c.settings is not None}
    cli.warn_unused_flags(ns, used)
    built: dict[str, Any] = {
        kind: component.build(cli.component_context(ns, core, component)) for kind, component in selected.items()
    }
    from exo_core.orchestration.launch import run_node

    anyio.run(run_node, core, built)
    return 0


def ping_command(cli: Cli, ns: argparse.Namespace) -> int:
    """``exo ping HOST:PORT``."""
    from exo_core.transport.ping import run_ping_cli

    core = cli.core_settings(ns)
    return run_ping_cli(ns.target, core=core, count=ns.count, timeout=ns.timeout)


def run_command(cli: Cli, ns: argparse.Namespace) -> int:
    """``exo run MODEL --prompt TEXT``."""
    from exo_core.orchestration.launch import run_prompt

    core = cli.core_settings(ns)
    return run_prompt(cli, ns, core)
