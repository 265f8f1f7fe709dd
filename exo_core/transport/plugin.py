"""Built-in plugin ``tcp_transport``: registers the ``tcp`` transport."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exo_core.components import ComponentContext, RegisterComponent
from exo_core.hookspecs import hookimpl
from exo_core.transport.settings import TransportSettings

if TYPE_CHECKING:
    from exo_core.transport.tcp import TcpTransport


def _tcp_transport(ctx: ComponentContext) -> TcpTransport:
    """A :class:`~exo_core.transport.tcp.TcpTransport` on ``--node-host:--node-port`` (capabilities empty;
    the node sets ``transport.capabilities`` before starting it)."""
    from exo_core.transport.tcp import TcpTransport

    return TcpTransport.from_context(ctx)


@hookimpl
def exo_register_transport(register: RegisterComponent) -> None:
    register(
        "tcp",
        _tcp_transport,
        settings=TransportSettings,
        description="exo frames over one duplex TCP connection per peer pair",
    )
