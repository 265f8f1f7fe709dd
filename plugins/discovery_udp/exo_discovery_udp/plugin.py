"""Plugin entry point: registers the ``udp`` discovery component."""

from __future__ import annotations

from typing import Any

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.errors import NotImplementedYetError
from exo_core.hookspecs import hookimpl


def _build(ctx: ComponentContext) -> Any:
    raise NotImplementedYetError("discovery 'udp' is not implemented yet")


@hookimpl
def exo_register_discovery(register: RegisterComponent) -> None:
    register("udp", _build, description="LAN discovery by UDP broadcast")
