"""The hooks a plugin implements (pluggy project ``exo``, entry-point group ``exo_core.plugins``).

Each hook receives a ``register`` callable (:class:`exo_core.components.RegisterComponent`) and adds zero
or more named components by calling it. Hooks are synchronous and cheap: they must not import heavy
libraries or start any work; what they register (the component factories) does that when selected.
All four are called once per process, after every plugin is loaded, through pluggy (``pm.hook``), so
``tryfirst``/``trylast`` and hook wrappers apply; components are listed in plugin registration order
(built-ins first), ``tryfirst`` plugins before and ``trylast`` ones after. See docs/plugins.md for a worked
example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from exo_core.components import RegisterComponent

PROJECT_NAME = "exo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def exo_register_discovery(register: RegisterComponent) -> None:
    """Register discovery modules, selected with ``--discovery-module NAME``.

    The factory returns an object implementing :class:`exo_core.discovery.Discovery`: a long-running
    ``run(sink, task_status=...)`` that reports peers it finds or loses to the sink. Called once at start-up.
    """


@hookspec
def exo_register_transport(register: RegisterComponent) -> None:
    """Register transports, selected with ``--transport NAME`` (built-in: ``tcp``).

    The factory returns the object that listens for and dials peers and carries exo frames between
    nodes (see :mod:`exo_core.transport`). Called once at start-up.
    """


@hookspec
def exo_register_partitioner(register: RegisterComponent) -> None:
    """Register partitioners, selected with ``--partitioner NAME`` (built-in: ``ring-memory-weighted``).

    The factory returns an object that maps a cluster topology and a model's layer count to an ordered
    plan of contiguous layer ranges, one per node (see :mod:`exo_core.topology`). Called once at start-up.
    """


@hookspec
def exo_register_engine(register: RegisterComponent) -> None:
    """Register inference engines, selected with ``--inference-engine NAME`` (or ``auto``).

    The factory returns an object implementing :class:`exo_core.engine.InferenceEngine`. Pass
    ``available=`` so ``auto`` can skip engines whose library is missing on this machine.
    Called once at start-up.
    """
