"""Requests both ways on one connection, one-way sends, errors, tensors, relaying."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from exo_core.protocol import (
    Envelope,
    ErrorCode,
    Finish,
    FrameType,
    Ping,
    Pong,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
)
from exo_core.protocol.codec import RoutedMessage
from exo_core.transport.errors import PeerUnavailableError, RemoteError, RequestTimeoutError
from exo_core.transport.types import Incoming

from .conftest import Events, make, running, wait_until

CTX = RequestContext("req-1", "a", "smollm2-135m", (Stage("a", 0, 14), Stage("b", 15, 29)))


async def echo(incoming: Incoming) -> RoutedMessage | None:
    return incoming.message


async def test_one_connection_used_both_ways() -> None:
    a, b = make("a"), make("b")
    b.on(FrameType.TENSOR, echo)
    a.on(FrameType.TENSOR, echo)
    ev_a, ev_b = Events(a), Events(b)
    async with running(a, b):
        info = await a.dial("127.0.0.1", b.port)
        assert info.node_id == "b" and info.capabilities == {"memory": 1024, "chip": "test"}
        await wait_until(lambda: "a" in b.peers)
        assert b.peers["a"].dialed is False and a.peers["b"].dialed is True
        arr = np.arange(576, dtype=np.float32).reshape(1, 576)
        msg = TensorMessage(CTX, 0, 0, Tensor.from_numpy(arr))
        got_ab = await a.request("b", msg, timeout=5)
        got_ba = await b.request("a", msg, timeout=5)  # b never dialed a
        for got in (got_ab, got_ba):
            assert isinstance(got, TensorMessage)
            np.testing.assert_array_equal(got.tensor.to_numpy(), arr)
        assert ev_a.kinds("b") == ["up"] and ev_b.kinds("a") == ["up"]
        assert a._connections == 1 and b._connections == 1


async def test_many_concurrent_requests_share_the_connection() -> None:
    a, b = make("a"), make("b")

    async def slow_echo(incoming: Incoming) -> RoutedMessage | None:
        msg = incoming.message
        assert isinstance(msg, Finish)
        await anyio.sleep(0.001 * (int(msg.request_id) % 7))
        return msg

    b.on(FrameType.FINISH, slow_echo)
    results: dict[int, str] = {}
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)

        async def one(i: int) -> None:
            reply = await a.request("b", Finish(str(i), "stop"))
            assert isinstance(reply, Finish)
            results[i] = reply.request_id

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
    assert results == {i: str(i) for i in range(200)}


async def test_one_way_send_and_errors() -> None:
    a, b = make("a"), make("b")
    got: list[Finish] = []
    done = anyio.Event()

    async def on_finish(incoming: Incoming) -> None:
        assert isinstance(incoming.message, Finish)
        got.append(incoming.message)
        done.set()

    async def boom(incoming: Incoming) -> RoutedMessage | None:
        raise ValueError("engine exploded")

    async def stall(incoming: Incoming) -> RoutedMessage | None:
        await anyio.sleep(10)
        return None

    b.on(FrameType.FINISH, on_finish)
    b.on(FrameType.TOKEN, boom)
    b.on(FrameType.TOPOLOGY, stall)
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)
        await a.send("b", Finish("r", "cancelled"))
        with anyio.fail_after(5):
            await done.wait()
        assert got == [Finish("r", "cancelled")]
        with pytest.raises(RemoteError, match="NO_HANDLER") as exc:
            await a.request("b", TensorMessage(CTX, 0, 0, Tensor("float32", (1,), b"\0\0\0\0")))
        assert exc.value.code == ErrorCode.NO_HANDLER
        from exo_core.protocol import Token, Topology

        with pytest.raises(RemoteError, match="engine exploded"):
            await a.request("b", Token(CTX, 0, 0, 5))
        with pytest.raises(RequestTimeoutError):
            await a.request("b", Topology(()), timeout=0.2)
        with pytest.raises(PeerUnavailableError, match="no connection to peer zz"):
            await a.request("zz", Ping())
        assert isinstance(await a.request("b", Ping(7)), Pong)


async def test_peer_loss_fails_pending_requests_fast() -> None:
    a, b = make("a"), make("b")

    async def stall(incoming: Incoming) -> RoutedMessage | None:
        await anyio.sleep(30)
        return None

    b.on(FrameType.FINISH, stall)
    ev = Events(a)
    async with running(a):
        async with anyio.create_task_group() as btg:
            await btg.start(b.run)
            await a.dial("127.0.0.1", b.port)

            async def kill_b() -> None:
                await anyio.sleep(0.2)
                btg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_b)
                with anyio.fail_after(3), pytest.raises(PeerUnavailableError, match="lost"):
                    await a.request("b", Finish("x"), timeout=30)
        await wait_until(lambda: ev.kinds("b") == ["up", "down"])


async def test_relay_forwards_without_reencoding() -> None:
    # a -- r -- d: a reaches d only through r; r forwards the raw frame (TTL decremented).
    a, r, d = make("a"), make("r"), make("d")
    forwarded: list[Incoming] = []

    async def relay(incoming: Incoming) -> None:
        forwarded.append(incoming)
        await r.forward(incoming.envelope.dst, incoming)

    r.set_relay(relay)
    seen: list[Envelope] = []

    async def on_tensor(incoming: Incoming) -> RoutedMessage | None:
        seen.append(incoming.envelope)
        return Finish(incoming.message.ctx.request_id, "ok")  # type: ignore[union-attr]

    d.on(FrameType.TENSOR, on_tensor)
    async with running(a, r, d):
        await a.dial("127.0.0.1", r.port)
        await d.dial("127.0.0.1", r.port)
        big = Tensor.from_numpy(np.ones((600, 576), dtype=np.float32))  # > fragment size: fragmented
        reply = await a.request("r", TensorMessage(CTX, 1, 2, big), dst="d", ttl=5)
        assert reply == Finish("req-1", "ok")
        assert seen[0].src == "a" and seen[0].ttl == 4
        assert len(forwarded) == 2  # the request (r -> d) and the reply (r -> a)
        with pytest.raises(RemoteError, match="TTL_EXPIRED"):
            await a.request("r", Ping(), dst="d", ttl=0)
        with pytest.raises(RemoteError, match="NO_ROUTE"):  # d relays nothing
            await r.request("d", Ping(), dst="a")
