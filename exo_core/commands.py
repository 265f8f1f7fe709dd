"""The commands behind ``exo`` (start a node), ``exo ping`` and ``exo run``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exo_core.cli import Cli


def node_command(cli: Cli, ns: argparse.Namespace) -> int:
    """Start a node with the selected components and serve until interrupted."""
    from exo_core.launch import run_node

    return run_node(cli, ns, cli.core_settings(ns))


def ping_command(cli: Cli, ns: argparse.Namespace) -> int:
    """``exo ping HOST:PORT`` / ``exo ping ssh://[user@]host[:sshport]/PORT``."""
    from exo_core.cliflags import build_settings, given_values
    from exo_core.transport.ping import run_ping_cli
    from exo_core.transport.settings import TransportSettings

    core = cli.core_settings(ns)
    transport = build_settings(TransportSettings, given_values(ns, cli.flags, TransportSettings))
    return run_ping_cli(
        ns.target, core=core, count=ns.count, timeout=ns.timeout, ssh_command=transport.ssh_command
    )


def run_command(cli: Cli, ns: argparse.Namespace) -> int:
    """``exo run MODEL --prompt TEXT``."""
    from exo_core.launch import run_prompt

    return run_prompt(cli, ns, cli.core_settings(ns))
