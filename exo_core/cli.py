"""The ``exo`` command line.

``exo [FLAGS]`` starts a node; ``exo plugins``, ``exo version``, ``exo capabilities``, ``exo ping``
and ``exo run`` are the other commands. Flags come from the core settings model and from the settings
model of every installed component (plugins included), each with its environment variable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exo_core import __version__, startup_log
from exo_core.cliflags import Flag, add_settings_flags, build_settings, given_values
from exo_core.components import SELECTOR_FLAGS, Component, ComponentContext, Kind
from exo_core.errors import ExoError
from exo_core.logformat import formatter
from exo_core.plugins import Plugins, load_plugins
from exo_core.settings import CoreSettings

log = logging.getLogger("exo")

#: Which core setting selects the component of each kind.
SELECTOR_FIELDS: dict[Kind, str] = {
    "discovery": "discovery_module",
    "transport": "transport",
    "partitioner": "partitioner",
    "engine": "inference_engine",
}


@dataclass
class Cli:
    """The parsed command line: the parser, every flag, and the loaded plugins."""

    plugins: Plugins
    parser: argparse.ArgumentParser
    flags: list[Flag] = field(default_factory=list)

    def core_settings(self, ns: argparse.Namespace) -> CoreSettings:
        return build_settings(CoreSettings, given_values(ns, self.flags, CoreSettings))

    def component_context(
        self, ns: argparse.Namespace, core: CoreSettings, component: Component
    ) -> ComponentContext:
        settings = None
        if component.settings is not None:
            settings = build_settings(component.settings, given_values(ns, self.flags, component.settings))
        return ComponentContext(core=core, settings=settings, node_id=core.resolve_node_id())

    def selected(self, core: CoreSettings, kind: Kind) -> Component:
        """The component of ``kind`` the settings select (``auto`` engines resolved by availability)."""
        name = str(getattr(core, SELECTOR_FIELDS[kind]))
        if kind == "engine" and name == "auto":
            from exo_core.engine_select import auto_engine

            return auto_engine(self.plugins.registry)
        return self.plugins.registry.get(kind, name)

    def warn_unused_flags(self, ns: argparse.Namespace, used: set[type[Any]]) -> None:
        """Flags of components that are not selected have no effect: say so rather than ignore them."""
        for f in self.flags:
            if hasattr(ns, f.dest) and f.settings_cls is not CoreSettings and f.settings_cls not in used:
                log.warning("%s has no effect: %s is not selected", f.flag, f.owner)


def _pre_parse(argv: Sequence[str]) -> tuple[list[str], str | None, str | None]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-p", action="append", default=[], dest="plugin_opts")
    pre.add_argument("--log-level", default=None)
    pre.add_argument("--log-format", default=None)
    ns, _ = pre.parse_known_args(argv)
    disabled = []
    for opt in ns.plugin_opts:
        if not opt.startswith("no:") or not opt[3:]:
            raise ExoError(f"-p {opt}: expected -p no:NAME to block plugin NAME")
        disabled.append(opt[3:])
    return disabled, ns.log_level, ns.log_format


def _node_flags_parser(plugins: Plugins, flags: list[Flag]) -> argparse.ArgumentParser:
    """A parent parser holding every settings flag: the core's, then one group per component."""
    parent = argparse.ArgumentParser(add_help=False)
    taken: dict[str, str] = {}
    parent.add_argument(
        "-p",
        action="append",
        default=argparse.SUPPRESS,
        dest="plugin_opts",
        metavar="no:NAME",
        help="block the plugin NAME (also EXO_DISABLED_PLUGINS=a,b; EXO_PLUGINS=a,b loads only those)",
    )
    core = parent.add_argument_group("node")
    flags.extend(add_settings_flags(core, CoreSettings, owner="exo-core", taken=taken))
    seen: set[type[Any]] = set()
    for component in plugins.registry:
        if component.settings is None or component.settings in seen:
            continue
        seen.add(component.settings)
        dist = plugins.info.get(component.plugin)
        where = f"{dist.distribution} {dist.version}".strip() if dist else component.plugin
        title = f"{component.kind} '{component.name}' ({where})"
        group = parent.add_argument_group(
            title, f"only used with {SELECTOR_FLAGS[component.kind]} {component.name}"
        )
        owner = f"{component.kind} '{component.name}'"
        flags.extend(add_settings_flags(group, component.settings, owner=owner, taken=taken))
    return parent


def build_cli(plugins: Plugins) -> Cli:
    flags: list[Flag] = []
    parent = _node_flags_parser(plugins, flags)
    parser = argparse.ArgumentParser(
        prog="exo",
        description="Distributed LLM inference across the machines you already have. "
        "Without a command, start a node. Every flag can also be set with the environment variable "
        "shown beside it; a flag wins over its environment variable, which wins over the default.",
        parents=[parent],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plugins", help="print the installed plugins and their components as JSON")
    sub.add_parser("version", help="print the version of exo-core and of each plugin")
    sub.add_parser("capabilities", help="print this device's entry in peers.json format", parents=[parent])
    ping = sub.add_parser(
        "ping",
        parents=[parent],
        help="handshake with a node (through a tunnel too) and print its id, version and round-trip times",
    )
    ping.add_argument(
        "target",
        metavar="HOST:PORT",
        help="the node to ping, e.g. 127.0.0.1:50051, or through an SSH link "
        "ssh://[user@]host[:sshport][/[remote-host:]port] (uses --ssh-command)",
    )
    ping.add_argument("--count", type=int, default=3, help="number of PINGs after the handshake (default 3)")
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each step (default 5)")
    run = sub.add_parser(
        "run", parents=[parent], help="generate a completion for one prompt (single node or in a cluster)"
    )
    run.add_argument("model", nargs="?", default=None, help="model id (default: --default-model)")
    run.add_argument("--prompt", required=True, help="the user message (with --raw: the text to continue)")
    run.add_argument(
        "--raw", action="store_true", help="continue the prompt as is, without the chat template"
    )
    run.add_argument("--max-tokens", type=int, default=128, help="maximum tokens to generate (default 128)")
    run.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy (default 0)"
    )
    run.add_argument("--seed", type=int, default=None, help="seed for sampling (default: random)")
    run.add_argument(
        "--wait-peers", type=int, default=0, help="wait until this many peers joined (default 0)"
    )
    run.add_argument(
        "--wait-timeout", type=float, default=10.0, help="seconds to wait for --wait-peers (default 10)"
    )
    return Cli(plugins=plugins, parser=parser, flags=flags)


def _setup_logging(level: str | None, log_format: str | None = None) -> None:
    """Log to stderr at ``--log-level``, else ``$EXO_LOG_LEVEL``, else INFO, as ``--log-format`` (else
    ``$EXO_LOG_FORMAT``, else text) says (bad names are reported later, when the settings are validated)."""
    name = (level or os.environ.get("EXO_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format or os.environ.get("EXO_LOG_FORMAT") or "text"))
    logging.basicConfig(
        level=name if isinstance(logging.getLevelName(name), int) else "INFO", handlers=[handler]
    )


def _cmd_plugins(cli: Cli) -> int:
    print(json.dumps(cli.plugins.describe(), indent=2))
    return 0


def _cmd_version(cli: Cli) -> int:
    lines = [f"exo-core {__version__}"]
    for info in sorted(cli.plugins.info.values(), key=lambda i: i.name):
        if not info.builtin and info.distribution:
            lines.append(f"{info.distribution} {info.version}")
    print("\n".join(lines))
    return 0


def _cmd_capabilities(cli: Cli, ns: argparse.Namespace) -> int:
    from exo_core.cliflags import build_settings, given_values
    from exo_core.lan.netif import dialable_address
    from exo_core.topology.device import device_capabilities
    from exo_core.transport.settings import TransportSettings

    core = cli.core_settings(ns)
    transport = build_settings(TransportSettings, given_values(ns, cli.flags, TransportSettings))
    address, note = dialable_address(core.node_host, core.node_port, transport.advertise_address)
    if note:
        print(f"exo: note: {note}", file=sys.stderr)
    entry = {
        "peers": {
            core.resolve_node_id(): {
                "address": address,
                "device_capabilities": device_capabilities(core.device_overrides()),
            }
        }
    }
    print(json.dumps(entry, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exo`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        disabled, level, log_format = _pre_parse(args)
        _setup_logging(level, log_format)
        cli = build_cli(load_plugins(disabled=disabled))
        ns = cli.parser.parse_args(args)
        command = ns.command
        if command == "plugins":
            return _cmd_plugins(cli)
        if command == "version":
            return _cmd_version(cli)
        if command == "capabilities":
            return _cmd_capabilities(cli, ns)
        if command == "ping":
            from exo_core.commands import ping_command

            return ping_command(cli, ns)
        # a node's start-up log lines wait until it is up: a failed start then prints just its error
        startup_log.hold()
        if command == "run":
            from exo_core.commands import run_command

            return run_command(cli, ns)
        from exo_core.commands import node_command

        return node_command(cli, ns)
    except ExoError as exc:
        startup_log.discard()
        print(f"exo: error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        # start-up errors raised inside the node's task group (a busy port, a bad peers.json, a plugin's
        # ConfigError): one line each, like the errors caught before the node starts, not a traceback
        leaves = _leaves(group)
        if not leaves or not all(isinstance(e, ExoError | OSError) for e in leaves):
            raise
        startup_log.discard()
        for message in dict.fromkeys(str(e) for e in leaves):
            print(f"exo: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`exo ping ... | head`): not an error to report; point stdout
        # at /dev/null so the flush at exit stays quiet, and exit as a process killed by SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        startup_log.release()  # whatever ended the start (a crash too): what it logged is shown


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions inside ``group`` and its nested groups."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
