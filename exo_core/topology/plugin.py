"""Built-in plugin ``ring_partitioner``: registers the ``ring-memory-weighted`` partitioner."""

from __future__ import annotations

from typing import Any

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.errors import NotImplementedYetError
from exo_core.hookspecs import hookimpl


def _ring(ctx: ComponentContext) -> Any:
    raise NotImplementedYetError("the ring-memory-weighted partitioner is not implemented yet")


@hookimpl
def exo_register_partitioner(register: RegisterComponent) -> None:
    register(
        "ring-memory-weighted",
        _ring,
        description="nodes ordered by memory, each given layers in proportion to its memory",
    )
