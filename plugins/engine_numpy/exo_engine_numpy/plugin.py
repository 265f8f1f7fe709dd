"""Plugin entry point: registers the ``numpy`` engine component."""

from __future__ import annotations

from typing import Any

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.errors import NotImplementedYetError
from exo_core.hookspecs import hookimpl


def _build(ctx: ComponentContext) -> Any:
    raise NotImplementedYetError("engine 'numpy' is not implemented yet")


@hookimpl
def exo_register_engine(register: RegisterComponent) -> None:
    register("numpy", _build, description="pure NumPy engine (float32)")
