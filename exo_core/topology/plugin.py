"""Built-in plugin ``ring_partitioner``: registers the ``ring-memory-weighted`` partitioner."""

from __future__ import annotations

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_core.topology.partition import RingMemoryWeighted


def _ring(ctx: ComponentContext) -> RingMemoryWeighted:
    return RingMemoryWeighted()


@hookimpl
def exo_register_partitioner(register: RegisterComponent) -> None:
    register(
        "ring-memory-weighted",
        _ring,
        description="nodes ordered by memory, each given layers in proportion to its memory",
    )
