"""``exo ping``: success output and each diagnosis."""

from __future__ import annotations

import anyio
import pytest

from exo_core.protocol import PROTOCOL_VERSION
from exo_core.settings import CoreSettings
from exo_core.testing import find_free_ports
from exo_core.transport.ping import PingError, format_ping, ping, run_ping_cli

from .conftest import make, running


async def test_ping_reports_peer_and_rtts() -> None:
    b = make("node-b", key="k")
    async with running(b):
        result = await ping("127.0.0.1", b.port, cluster_key="k", count=3, timeout=2)
        assert result.node_id == "node-b" and result.version == PROTOCOL_VERSION and len(result.rtts_ms) == 3
        assert result.capabilities == {"memory": 1024, "chip": "test"}
        text = format_ping(result)
        assert "node-b" in text and f"protocol version {PROTOCOL_VERSION}" in text and "PING 3" in text
        assert b.peers == {}  # a tool is not a peer


async def test_ping_refused() -> None:
    (port,) = find_free_ports(1)
    with pytest.raises(
        PingError, match="connection refused: is the tunnel up\\? is the node running\\?"
    ) as e:
        await ping("127.0.0.1", port, timeout=2)
    assert e.value.kind == "refused"


async def _fake_server(reply: bytes | None, *, task_status: anyio.abc.TaskStatus[int]) -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as srv:
        task_status.started(srv.extra(anyio.abc.SocketAttribute.local_port))

        async def handle(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                if reply is not None:
                    await stream.send(reply)
                with anyio.move_on_after(3):
                    try:
                        await stream.receive()
                        await anyio.sleep(3)
                    except anyio.EndOfStream:
                        pass

        await srv.serve(handle)


@pytest.mark.parametrize(
    ("reply", "kind", "text"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not_exo", "not an exo node"),
        (b"EXO\x02\x01\0\0\0\0", "version_mismatch", "version mismatch"),
        (None, "timeout", "no exo handshake"),
    ],
)
async def test_ping_diagnoses_wrong_servers(reply: bytes | None, kind: str, text: str) -> None:
    async with anyio.create_task_group() as tg:
        port = await tg.start(_fake_server, reply)
        with pytest.raises(PingError, match=text) as e:
            await ping("127.0.0.1", port, timeout=0.5)
        assert e.value.kind == kind
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("node_key", "our_key"), [("right", "wrong"), ("right", None), (None, "extra")])
async def test_ping_auth_failure(node_key: str | None, our_key: str | None) -> None:
    b = make("b", key=node_key)
    async with running(b):
        with pytest.raises(PingError, match="authentication failed") as e:
            await ping("127.0.0.1", b.port, cluster_key=our_key, timeout=2)
        assert e.value.kind == "auth"


def test_run_ping_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = find_free_ports(1)
    assert run_ping_cli(f"127.0.0.1:{port}", core=CoreSettings(), count=1, timeout=1) == 1
    assert "connection refused" in capsys.readouterr().err
    assert run_ping_cli("nonsense", core=CoreSettings(), count=1, timeout=1) == 2
    assert "HOST:PORT" in capsys.readouterr().err


async def test_run_ping_cli_success(capsys: pytest.CaptureFixture[str]) -> None:
    b = make("cli-node")
    async with running(b):
        code = await anyio.to_thread.run_sync(
            lambda: run_ping_cli(f"127.0.0.1:{b.port}", core=CoreSettings(), count=2, timeout=2)
        )
    assert code == 0
    assert "cli-node" in capsys.readouterr().out
