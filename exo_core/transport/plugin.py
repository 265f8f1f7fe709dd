"""Built-in plugin ``tcp_transport``: registers the ``tcp`` transport."""

from __future__ import annotations

from typing import Any

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.errors import NotImplementedYetError
from exo_core.hookspecs import hookimpl


def _tcp_transport(ctx: ComponentContext) -> Any:
    raise NotImplementedYetError("the tcp transport is not implemented yet")


@hookimpl
def exo_register_transport(register: RegisterComponent) -> None:
    register("tcp", _tcp_transport, description="exo frames over one duplex TCP connection per peer pair")
