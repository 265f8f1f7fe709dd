from __future__ import annotations

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from exo_core.orchestration.requests import Event, RequestFailed, RequestTracker
from exo_core.protocol.control import Error
from exo_core.protocol.inference import RequestContext, Stage, Token

Receive = MemoryObjectReceiveStream[Event]


def token(rid: str, tid: int) -> Token:
    ctx = RequestContext(rid, "origin", "m", (Stage("a", 0, 1),))
    return Token(ctx, 0, 5, tid)


async def test_tokens_reach_their_own_request_only() -> None:
    tracker = RequestTracker()
    with tracker.open("r1", frozenset({"a"})) as one, tracker.open("r2", frozenset({"a"})) as two:
        await check_routing(tracker, one, two)
    tracker.close("r1")
    tracker.close("r2")


async def check_routing(tracker: RequestTracker, one: Receive, two: Receive) -> None:
    tracker.token(token("r2", 7))
    tracker.token(token("r1", 3))
    tracker.token(token("nobody", 9))  # not in flight: dropped quietly
    with anyio.fail_after(1):
        assert (await one.receive()).token_id == 3  # type: ignore[union-attr]
        assert (await two.receive()).token_id == 7  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="already in flight"):
        tracker.open("r1", frozenset())


async def test_unreachable_node_fails_only_requests_that_use_it() -> None:
    tracker = RequestTracker()
    with tracker.open("r1", frozenset({"a", "b"})) as uses_b, tracker.open("r2", frozenset({"a"})) as only_a:
        tracker.fail_unreachable({"a"})
        await check_failed(uses_b, only_a)
    tracker.close("r1")
    tracker.close("r2")


async def check_failed(uses_b: Receive, only_a: Receive) -> None:
    with anyio.fail_after(1):
        event = await uses_b.receive()
    assert isinstance(event, RequestFailed) and event.node_id == "b" and "node b" in event.message
    with anyio.move_on_after(0.05):
        await only_a.receive()
        pytest.fail("a request whose nodes are all reachable was failed")


async def test_error_and_close() -> None:
    tracker = RequestTracker()
    with tracker.open("r1", frozenset({"a"})) as events:
        tracker.error(Error(14, "boom on a", "r1"), "a")
        with anyio.fail_after(1):
            event = await events.receive()
    assert event == RequestFailed("boom on a", "a")
    tracker.close("r1")
    assert len(tracker) == 0
    tracker.token(token("r1", 1))  # after close: ignored, no error


async def test_a_leaving_node_fails_the_requests_that_use_it_at_once() -> None:
    tracker = RequestTracker()
    with tracker.open("r1", frozenset({"a", "b"})) as uses_b, tracker.open("r2", frozenset({"a"})) as only_a:
        tracker.fail_unreachable({"a", "b"}, leaving={"b"})
        with anyio.fail_after(1):
            event = await uses_b.receive()
        assert isinstance(event, RequestFailed) and event.node_id == "b" and "shutting down" in event.message
        with anyio.move_on_after(0.05):
            await only_a.receive()
            pytest.fail("a request that does not use the leaving node was failed")
    tracker.close("r1")
    tracker.close("r2")
