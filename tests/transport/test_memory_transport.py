"""The in-memory transport honours the Transport contract: order, failures, relays, links coming and going."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from exo_core.protocol import (
    ErrorCode,
    Finish,
    FrameType,
    Ping,
    Pong,
    RequestContext,
    Stage,
    Tensor,
    TensorMessage,
    Token,
)
from exo_core.protocol.codec import RoutedMessage
from exo_core.testing import MemoryNetwork, MemoryTransport
from exo_core.transport import Transport
from exo_core.transport.errors import HandshakeError, PeerUnavailableError, RemoteError, RequestTimeoutError
from exo_core.transport.memory import HOST
from exo_core.transport.types import Incoming

from .conftest import Events, make, running, wait_until

CTX = RequestContext("req-1", "a", "m", (Stage("a", 0, 1), Stage("b", 2, 3)))


async def echo(incoming: Incoming) -> RoutedMessage | None:
    return incoming.message


class Inbox:
    """Collects the one-way messages of some types that reach one transport."""

    def __init__(self, t: MemoryTransport, *types: FrameType) -> None:
        self.items: list[tuple[str, RoutedMessage]] = []
        for ftype in types:
            t.on(ftype, self.handle)

    async def handle(self, incoming: Incoming) -> RoutedMessage | None:
        self.items.append((incoming.envelope.src, incoming.message))
        return None


async def test_both_implementations_satisfy_the_contract() -> None:
    net = MemoryNetwork()
    memory, tcp = net.transport("m"), make("t")
    async with running(memory), running(tcp):
        assert isinstance(memory, Transport) and isinstance(tcp, Transport)
        assert memory.port == 1 and memory.advertised_address == f"{HOST}:1"
    assert memory.advertised_address == ""
    with pytest.raises(RuntimeError, match="not running"):
        memory.port  # noqa: B018 - the property raises


async def test_a_link_comes_up_when_both_ends_run_and_carries_messages_through_the_codec() -> None:
    net = MemoryNetwork()
    a = net.transport("a", capabilities={"memory": 1024})
    b = net.transport("b", capabilities={"memory": 2048, "chip": "test"})
    ev_a, ev_b = Events(a), Events(b)  # type: ignore[arg-type]
    inbox = Inbox(b, FrameType.TENSOR)
    net.link("a", "b")
    assert not net.linked("a", "b")  # nobody runs yet
    async with running(a, b):
        assert net.linked("a", "b")
        assert ev_a.kinds("b") == ["up"] and ev_b.kinds("a") == ["up"]
        assert a.peers["b"].capabilities == {"memory": 2048, "chip": "test"} and a.peers["b"].dialed
        assert b.peer("a") is not None and not b.peers["a"].dialed and b.peer("c") is None
        arr = np.arange(64, dtype=np.float32).reshape(1, 64)
        await a.send("b", TensorMessage(CTX, 0, 0, Tensor.from_numpy(arr)))
        arr[:] = -1  # the sender reuses its buffer at once: what was sent is not affected
        await wait_until(lambda: len(inbox.items) == 1)
        src, msg = inbox.items[0]
        assert src == "a" and isinstance(msg, TensorMessage)
        np.testing.assert_array_equal(msg.tensor.to_numpy(), np.arange(64, dtype=np.float32).reshape(1, 64))


async def test_requests_replies_and_errors_both_ways() -> None:
    net = MemoryNetwork()
    a, b = net.transport("a"), net.transport("b")

    async def broken(incoming: Incoming) -> RoutedMessage | None:
        raise ValueError("nope")

    b.on(FrameType.FINISH, echo)
    a.on(FrameType.FINISH, echo)
    b.on(FrameType.TOKEN, broken)
    net.link("a", "b")
    async with running(a, b):
        assert await a.request("b", Finish("r1", "stop"), timeout=2) == Finish("r1", "stop")
        assert await b.request("a", Finish("r2", "stop"), timeout=2) == Finish("r2", "stop")
        assert isinstance(await a.request("b", Ping(7), timeout=2), Pong)  # answered by the transport
        with pytest.raises(RemoteError, match="ValueError: nope") as err:
            await a.request("b", Token(CTX, 0, 0, 5), timeout=2)
        assert err.value.code == ErrorCode.INTERNAL
        with pytest.raises(RemoteError) as err:
            await a.request("b", TensorMessage(CTX, 0, 0, Tensor.from_numpy(np.zeros((1, 4), np.float32))))
        assert err.value.code == ErrorCode.NO_HANDLER


async def test_a_request_without_reply_times_out() -> None:
    net = MemoryNetwork()
    a, b = net.transport("a"), net.transport("b")
    never = anyio.Event()

    async def stuck(incoming: Incoming) -> RoutedMessage | None:
        await never.wait()
        return None

    b.on(FrameType.FINISH, stuck)
    net.link("a", "b")
    async with running(a, b):
        with anyio.fail_after(5), pytest.raises(RequestTimeoutError, match=r"within 0\.1s"):
            await a.request("b", Finish("r", "stop"), timeout=0.1)


async def test_each_direction_is_fifo_even_with_latency() -> None:
    net = MemoryNetwork(latency=0.01)
    a, b = net.transport("a"), net.transport("b")
    inbox = Inbox(b, FrameType.FINISH)
    net.link("a", "b")
    async with running(a, b):
        for i in range(200):
            await a.send("b", Finish(f"r{i}", "stop"))
        await wait_until(lambda: len(inbox.items) == 200)
    assert [m.request_id for _, m in inbox.items] == [f"r{i}" for i in range(200)]  # type: ignore[union-attr]


async def test_sending_to_a_node_that_is_not_a_peer_fails_fast() -> None:
    net = MemoryNetwork()
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    net.link("a", "b")
    async with running(a, b, c):
        with pytest.raises(PeerUnavailableError, match=r"no connection to peer c \(connected: b\)"):
            await a.send("c", Finish("r", "stop"))
        with pytest.raises(PeerUnavailableError):
            await a.request("c", Ping(1), timeout=5)


async def test_a_cut_link_tells_both_sides_and_fails_waiting_requests() -> None:
    net = MemoryNetwork()
    a, b = net.transport("a"), net.transport("b")
    never = anyio.Event()

    async def stuck(incoming: Incoming) -> RoutedMessage | None:
        await never.wait()
        return None

    b.on(FrameType.FINISH, stuck)
    ev_a, ev_b = Events(a), Events(b)  # type: ignore[arg-type]
    net.link("a", "b")
    async with running(a, b):
        failed: list[BaseException] = []

        async def ask() -> None:
            try:
                await a.request("b", Finish("r", "stop"), timeout=30)
            except PeerUnavailableError as exc:
                failed.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await anyio.sleep(0.01)
                net.cut("a", "b", "cable pulled")
        assert len(failed) == 1 and "cable pulled" in str(failed[0])
        assert ev_a.kinds("b") == ["up", "down"] and ev_b.kinds("a") == ["up", "down"]
        assert a.peers == {} and b.peers == {}
        with pytest.raises(PeerUnavailableError):
            await a.send("b", Finish("r", "stop"))
        with pytest.raises(TimeoutError, match="cut"):  # dialing does not cross a cut
            await a.dial(*net.address("b"))
        a.keep(*net.address("b"))  # nor does keeping the address
        assert not net.linked("a", "b")
        net.link("a", "b")  # restored
        assert net.linked("a", "b") and ev_a.kinds("b") == ["up", "down", "up"]


async def test_relaying_along_a_line() -> None:
    net = MemoryNetwork()
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    relayed: list[str] = []

    async def relay(incoming: Incoming) -> None:
        relayed.append(incoming.envelope.dst)
        await b.forward(incoming.envelope.dst, incoming)

    b.set_relay(relay)
    c.on(FrameType.FINISH, echo)
    inbox = Inbox(c, FrameType.TOKEN)
    net.line("a", "b", "c")
    async with running(a, b, c):
        assert set(a.peers) == {"b"} and set(c.peers) == {"b"}
        await a.send("b", Token(CTX, 0, 0, 9), dst="c")
        await wait_until(lambda: len(inbox.items) == 1)
        assert inbox.items[0][0] == "a"  # the original sender, not the relay
        # a request through the relay: the reply comes back addressed to a, relayed by b too
        assert await a.request("b", Finish("r", "stop"), dst="c", timeout=2) == Finish("r", "stop")
        assert relayed == ["c", "c", "a"]
        with pytest.raises(RemoteError) as err:  # no hop left: b drops it and tells a
            await a.request("b", Finish("r", "stop"), dst="c", ttl=0, timeout=2)
        assert err.value.code == ErrorCode.TTL_EXPIRED
        b.set_relay(None)
        with pytest.raises(RemoteError) as err:
            await a.request("b", Finish("r", "stop"), dst="c", timeout=2)
        assert err.value.code == ErrorCode.NO_ROUTE


async def test_a_vanished_node_is_down_for_everyone_and_its_transport_stops() -> None:
    net = MemoryNetwork()
    a, b, c = net.transport("a"), net.transport("b"), net.transport("c")
    ev_a = Events(a)  # type: ignore[arg-type]
    net.mesh("a", "b", "c")
    stopped = anyio.Event()

    async def run_c() -> None:
        await c.run()
        stopped.set()

    async with running(a, b):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_c)
            await wait_until(lambda: set(a.peers) == {"b", "c"})
            net.vanish("c")
            with anyio.fail_after(5):
                await stopped.wait()
        assert set(a.peers) == {"b"} and set(b.peers) == {"a"} and c.peers == {}
        assert ev_a.kinds("c") == ["up", "down"]
        assert "vanished" in ev_a.items[-1].reason
        with pytest.raises(RuntimeError, match="vanished"):
            await c.run()
        # the same node id comes back as a new process: a link to it comes up again
        c2 = net.transport("c")
        async with running(c2):
            assert set(a.peers) == {"b", "c"} and a.peers["c"].instance != ev_a.items[0].peer.instance


async def test_keep_and_forget_serve_discovery() -> None:
    net = MemoryNetwork()
    a, b = net.transport("a"), net.transport("b")
    async with running(a):
        a.keep(*net.address("b"))  # not running yet: linked once it is
        assert a.peers == {}
        async with running(b):
            assert set(a.peers) == {"b"} and a.peers["b"].dialed
            a.forget(*net.address("b"))
            assert a.peers == {} and b.peers == {}
            info = await a.dial(*net.address("b"))
            assert info.node_id == "b" and net.linked("a", "b")
            with pytest.raises(HandshakeError) as err:
                await a.dial(*net.address("a"))
            assert err.value.code == ErrorCode.SELF_CONNECTION
            with pytest.raises(ConnectionRefusedError):
                await a.dial(HOST, 99)
            with pytest.raises(ConnectionRefusedError):
                await a.dial("127.0.0.1", net.address("b")[1])


async def test_a_frame_over_the_limit_drops_the_link(caplog: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork(max_frame_size=1024)
    a, b = net.transport("a"), net.transport("b")
    ev_a = Events(a)  # type: ignore[arg-type]
    net.link("a", "b")
    async with running(a, b):
        with caplog.at_level(logging.WARNING, "exo_core.transport.memory"):
            big = TensorMessage(CTX, 0, 0, Tensor.from_numpy(np.zeros((1, 1024), np.float32)))
            await a.send("b", big)
            await wait_until(lambda: not net.linked("a", "b"))
        assert ev_a.kinds("b") == ["up", "down"]
        assert any(
            "closing the memory link to a" in r.getMessage() and "limit is 1024" in r.getMessage()
            for r in caplog.records
        )


async def test_handlers_are_registered_once_per_type() -> None:
    t = MemoryNetwork().transport("a")
    t.on(FrameType.TOKEN, echo)
    with pytest.raises(ValueError, match="already registered"):
        t.on(FrameType.TOKEN, echo)
    with pytest.raises(ValueError, match="handled by the transport"):
        t.on(FrameType.PING, echo)
    with pytest.raises(ValueError, match="already in this network"):
        t.network.transport("a")
    with pytest.raises(RuntimeError, match="not running"):
        t.keep(HOST, 2)


@pytest.fixture
def doc_example() -> dict[str, Any]:
    """What docs/plugins.md's example transport module defines."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    source = re.search(r"```python\n(# exo_transport_counting/__init__\.py.*?)```", doc, re.S)
    assert source is not None
    namespace: dict[str, Any] = {}
    exec(compile(source.group(1), "docs/plugins.md", "exec"), namespace)
    return namespace


async def test_the_example_transport_of_the_plugin_docs_honours_the_contract(
    doc_example: dict[str, Any],
) -> None:
    """docs/plugins.md's wrapping transport, run over a memory transport."""
    net = MemoryNetwork()
    a, b = doc_example["CountingTransport"](net.transport("a")), net.transport("b")
    inbox = Inbox(b, FrameType.FINISH)
    net.link("a", "b")
    async with running(a, b):
        assert isinstance(a, Transport) and a.node_id == "a" and set(a.peers) == {"b"}
        await a.send("b", Finish("r", "stop"))
        await wait_until(lambda: len(inbox.items) == 1)
    assert a.sent == {"b": 1}
