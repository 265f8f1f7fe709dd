"""A 64 MiB tensor on a connection does not hold up PINGs on the same connection."""

from __future__ import annotations

import time

import anyio
import numpy as np

from exo_core.protocol import FrameType, Ping, Pong, RequestContext, Stage, Tensor, TensorMessage
from exo_core.protocol.codec import RoutedMessage
from exo_core.transport.types import Incoming

from .conftest import make, running, wait_until


async def test_ping_answered_while_64mb_tensor_streams() -> None:
    a, b = make("a"), make("b")
    received: list[np.ndarray] = []

    async def on_tensor(incoming: Incoming) -> RoutedMessage | None:
        assert isinstance(incoming.message, TensorMessage)
        received.append(incoming.message.tensor.to_numpy())
        return None

    b.on(FrameType.TENSOR, on_tensor)
    arr = np.random.default_rng(1).standard_normal((4096, 4096), dtype=np.float32)  # 64 MiB
    ctx = RequestContext("big", "a", "m", (Stage("b", 0, 0),))
    rtts: list[float] = []
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)
        await wait_until(lambda: "a" in b.peers)
        sending = True

        async def send_big() -> None:
            nonlocal sending
            for _ in range(3):
                await a.send("b", TensorMessage(ctx, 0, 0, Tensor.from_numpy(arr)))
            sending = False

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_big)
            await anyio.sleep(0.005)
            while sending:
                for who, peer in ((a, "b"), (b, "a")):  # both directions share the busy connection
                    t0 = time.perf_counter()
                    assert isinstance(await who.request(peer, Ping(), timeout=5), Pong)
                    rtts.append(time.perf_counter() - t0)
                await anyio.sleep(0.002)
        await wait_until(lambda: len(received) == 3, within=20)
    np.testing.assert_array_equal(received[0], arr)
    assert len(rtts) >= 4, rtts
    assert max(rtts) < 0.05, f"PING took {max(rtts) * 1e3:.1f} ms during the transfer"


async def test_odd_sized_large_messages_arrive_intact_back_to_back() -> None:
    """Sizes that end mid-fragment and mid-read (the receiver's low-water mark must never wait for more)."""
    a, b = make("a", fragment_size=64 * 1024, max_fragment_size=1 << 20), make("b")
    got: list[np.ndarray] = []

    async def on_tensor(incoming: Incoming) -> RoutedMessage | None:
        assert isinstance(incoming.message, TensorMessage)
        got.append(incoming.message.tensor.to_numpy().copy())
        return None

    b.on(FrameType.TENSOR, on_tensor)
    rng = np.random.default_rng(7)
    sizes = [3 * 1024 * 1024 + 1, 65 * 1024 + 3, 1_500_001, 2 * 1024 * 1024 - 5, 300_007]
    arrays = [rng.integers(0, 255, n, dtype=np.uint8) for n in sizes]
    ctx = RequestContext("odd", "a", "m", (Stage("b", 0, 0),))
    async with running(a, b):
        await a.dial("127.0.0.1", b.port)
        for arr in arrays:
            await a.send("b", TensorMessage(ctx, 0, 0, Tensor.from_numpy(arr)))
        await wait_until(lambda: len(got) == len(arrays), within=10)
        assert isinstance(await a.request("b", Ping(), timeout=2), Pong)
    for sent, received in zip(arrays, got, strict=True):
        np.testing.assert_array_equal(sent, received)
