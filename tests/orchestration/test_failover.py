from __future__ import annotations

from collections.abc import Set

import pytest

from exo_core.api.backend import BackendError
from exo_core.orchestration import failover
from exo_core.orchestration.failover import Failover, Resume
from exo_core.orchestration.requests import RequestFailed
from exo_core.topology.cluster import DRAINING, ClusterView, NodeRecord
from exo_core.topology.partition import Plan, PlanEntry

PLAN: Plan = (PlanEntry("a", 0, 3), PlanEntry("b", 4, 7), PlanEntry("c", 8, 11))


def mesh() -> ClusterView:
    """``a``'s view of a cluster where ``a`` is linked to ``b`` and ``c``."""
    view = ClusterView("a", {"memory": 1000})
    view.set_neighbors(["b", "c"])
    for other in ("b", "c"):
        view.merge(NodeRecord(other, 1, {"memory": 1000}, frozenset({"a"})))
    return view


def test_resume_replays_the_emitted_tokens_under_a_new_wire_id() -> None:
    resume = Resume("r")
    assert resume.wire_id == "r" and resume.prompt([1, 2]) == (1, 2)
    resume.attempt, resume.emitted = 2, [7, 8, 9]
    assert resume.wire_id == "r.2"
    assert resume.prompt([1, 2]) == (1, 2, 7, 8, 9)


async def test_a_node_gone_from_the_view_is_lost() -> None:
    view = mesh()
    view.set_neighbors(["b"])
    lost = await Failover(view, 2).lost_nodes(["a", "b", "c"], RequestFailed("gone", "b"))
    assert lost == {"c"}


async def test_a_leaving_node_is_lost_but_this_one_never_is() -> None:
    view = mesh()
    view.merge(NodeRecord("b", 2, {"memory": 1000, DRAINING: True}, frozenset({"a"})))
    view.set_capability(DRAINING, True)
    assert await Failover(view, 2).lost_nodes(["a", "b"], RequestFailed("x")) == {"b"}


async def test_with_every_node_still_there_the_reporter_is_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failover, "LOSS_GRACE", 0.1)
    fo = Failover(mesh(), 2)
    assert await fo.lost_nodes(["a", "b", "c"], RequestFailed("error", "b")) == {"b"}
    assert await fo.lost_nodes(["a", "b", "c"], RequestFailed("error", "a")) == set()
    assert await fo.lost_nodes(["a", "b"], RequestFailed("error", "c")) == set()


async def test_the_request_moves_to_a_plan_without_the_lost_nodes() -> None:
    view = mesh()
    view.set_neighbors(["b"])
    fo, resume = Failover(view, 2), Resume("r", excluded={"x"})
    asked: list[set[str]] = []

    def replan(exclude: Set[str]) -> Plan:
        asked.append(set(exclude))
        return PLAN[:2]

    assert await fo.next_plan(resume, PLAN, RequestFailed("c went away", "c"), replan) == PLAN[:2]
    assert asked == [{"x", "c"}] and resume.excluded == {"x", "c"} and resume.attempt == 1
    assert fo.count == 1
    [event] = fo.recent_events
    assert event["event"] == "failover" and event["request_id"] == "r" and event["lost_nodes"] == ["c"]
    assert event["reason"] == "c went away"


async def test_the_request_fails_when_the_retries_are_used_up() -> None:
    view = mesh()
    view.set_neighbors(["b"])
    fo, resume = Failover(view, 1), Resume("r", attempt=1)
    with pytest.raises(BackendError) as err:
        await fo.next_plan(resume, PLAN, RequestFailed("c went away", "c"), lambda _: PLAN)
    assert err.value.status == 503 and err.value.code == "node_lost"
    assert "moved to a new plan 1 time(s) (--failover-retries 1)" in err.value.message
    assert fo.count == 0 and fo.recent_events[-1]["event"] == "failover_gave_up"


async def test_the_request_fails_when_no_plan_fits_without_the_lost_nodes() -> None:
    view = mesh()
    view.set_neighbors(["b"])
    fo = Failover(view, 2)

    def no_plan(exclude: Set[str]) -> Plan:
        raise BackendError(503, "no_capacity", "too little memory")

    with pytest.raises(BackendError) as err:
        await fo.next_plan(Resume("r"), PLAN, RequestFailed("c went away", "c"), no_plan)
    assert err.value.code == "node_lost" and "no plan fits without node(s) c" in err.value.message
    assert "(too little memory)" in err.value.message
    assert fo.count == 0 and fo.recent_events[-1]["event"] == "failover_no_plan"
