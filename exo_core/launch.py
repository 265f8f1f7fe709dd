"""From parsed command line to a running node: ``exo`` (serve) and ``exo run`` (one prompt).

This is the command-line side of starting a node: it turns flags into settings and selected components,
then hands :class:`~exo_core.orchestration.node.Node` only settings objects and built components, so
orchestration never sees ``argparse`` (nor imports the CLI).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from exo_core import startup_log
from exo_core.api.backend import BackendError, Finished, TokenEvent
from exo_core.components import KINDS
from exo_core.orchestration.node import Node
from exo_core.params import SamplingParams
from exo_core.settings import CoreSettings
from exo_core.topology.device import device_capabilities

if TYPE_CHECKING:
    from exo_core.cli import Cli

log = logging.getLogger(__name__)


def build_node(cli: Cli, ns: argparse.Namespace, core: CoreSettings) -> Node:
    """Select, configure and build every component, then the node. Errors name what to fix."""
    # Look every selection up before building anything: a typo fails at once, naming what is installed.
    selected = {kind: cli.selected(core, kind) for kind in KINDS}
    cli.warn_unused_flags(ns, {c.settings for c in selected.values() if c.settings is not None})
    contexts = {kind: cli.component_context(ns, core, c) for kind, c in selected.items()}
    engine = selected["engine"]
    engine_ctx = contexts["engine"]
    engine.build(engine_ctx)  # fail now, not at the first request, if the engine cannot run here
    return Node(
        core,
        node_id=core.resolve_node_id(),
        transport=selected["transport"].build(contexts["transport"]),
        discovery=selected["discovery"].build(contexts["discovery"]),
        partitioner=selected["partitioner"].build(contexts["partitioner"]),
        engine_factory=lambda: engine.build(engine_ctx),
        engine_name=engine.name,
        capabilities=device_capabilities(core.device_overrides()),
    )


async def _serve(node: Node, drain_timeout: float) -> None:
    """Run ``node`` until SIGINT/SIGTERM, then drain it (:meth:`Node.drain`) for up to ``drain_timeout``
    seconds and stop; a second signal stops it at once."""
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        startup_log.release()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info(
                    "%s received: draining for up to %g s (a second signal stops at once)",
                    signal.Signals(signum).name,
                    drain_timeout,
                )
                break
            async with anyio.create_task_group() as draining:

                async def second_signal() -> None:
                    async for signum in signals:
                        log.info("%s received again: stopping now", signal.Signals(signum).name)
                        draining.cancel_scope.cancel()
                        return

                draining.start_soon(second_signal)
                await node.drain(drain_timeout)
                draining.cancel_scope.cancel()
        log.info("stopping")
        tg.cancel_scope.cancel()


def run_node(cli: Cli, ns: argparse.Namespace, core: CoreSettings) -> int:
    """``exo``: serve until SIGINT/SIGTERM (then drain: see :func:`_serve`)."""
    node = build_node(cli, ns, core)
    anyio.run(_serve, node, core.drain_timeout)
    return 0


async def _run_prompt(node: Node, ns: argparse.Namespace) -> int:
    model = ns.model or node.catalog.default_model
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(node.run, api=False))
        startup_log.release()
        if ns.wait_peers:
            with anyio.move_on_after(ns.wait_timeout):
                await node.wait_for_nodes(ns.wait_peers + 1)
            have = len(node.cluster.reachable()) - 1
            if have < ns.wait_peers:
                print(
                    f"exo: warning: only {have} of {ns.wait_peers} peers joined within {ns.wait_timeout:g} s",
                    file=sys.stderr,
                )
        params = SamplingParams(max_tokens=ns.max_tokens, temperature=ns.temperature, seed=ns.seed)
        code = 0
        try:
            stream = node.backend.generate(
                model=model,
                messages=None if ns.raw else [{"role": "user", "content": ns.prompt}],
                prompt=ns.prompt if ns.raw else None,
                params=params,
                request_id=f"run-{uuid.uuid4()}",
            )
            async for event in stream:
                if isinstance(event, TokenEvent):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Finished):
                    sys.stdout.write("\n")
        except BackendError as exc:
            print(f"\nexo: error: {exc.message}", file=sys.stderr)
            code = 1
        tg.cancel_scope.cancel()
    return code


def run_prompt(cli: Cli, ns: argparse.Namespace, core: CoreSettings) -> int:
    """``exo run [MODEL] --prompt TEXT``."""
    node = build_node(cli, ns, core)
    result: Any = anyio.run(_run_prompt, node, ns)
    return int(result)
