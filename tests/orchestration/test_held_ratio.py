"""What an engine holds per stored byte: measured on a load, gossiped, and used by the plan's memory check."""

from __future__ import annotations

from typing import Any

import pytest

from exo_core.engine import MemoryUsage
from exo_core.models.source import head_in_layers, load_config, resolve_model, stored_bytes
from exo_core.orchestration.catalog import Catalog
from exo_core.orchestration.checks import check_memory
from exo_core.orchestration.shards import ShardHost, shard_stored_bytes
from exo_core.topology.cluster import HELD_RATIO, ClusterView, NodeRecord
from exo_core.topology.partition import NoCapacityError, NodeResources, Plan, PlanEntry

MB = 2**20


def _plan() -> Plan:
    return (PlanEntry("a", 0, 9), PlanEntry("b", 10, 19))


def test_the_check_scales_each_node_by_what_its_engine_holds() -> None:
    nodes = [NodeResources("a", 200), NodeResources("b", 200)]
    # 10 layers of 10 MB each: 100 MB stored per node, fits 200 MB as stored
    check_memory(_plan(), nodes, 10 * MB, 0, "m")
    check_memory(_plan(), nodes, 10 * MB, 0, "m", {"a": 1.9, "b": 0.5})  # below 1 counts as 1
    with pytest.raises(NoCapacityError) as info:
        check_memory(_plan(), nodes, 10 * MB, 0, "m", {"b": 2.5})
    msg = str(info.value)
    assert "node b" in msg and "250 MB of weights, 100 MB stored x 2.50 as its engine holds them" in msg
    assert "reports 200 MB" in msg


@pytest.mark.parametrize(
    "value", ["1.6", True, -1.0, 0, 1e9, None, [1.6]], ids=lambda v: type(v).__name__ + repr(v)
)
def test_a_malformed_ratio_from_a_peer_is_ignored(value: Any) -> None:
    rec = NodeRecord("b", 1, {HELD_RATIO: {"m": value}}, frozenset())
    assert rec.held_ratio("m") is None
    assert NodeRecord("b", 1, {HELD_RATIO: value}, frozenset()).held_ratio("m") is None


def test_a_node_gossips_its_ratio_per_model() -> None:
    view = ClusterView("a", {"memory": 1000})
    seq = view.own.seq
    assert view.set_held_ratio("m", 1.61234) and view.own.seq > seq
    assert not view.set_held_ratio("m", 1.6123)  # same after rounding: nothing to gossip
    view.set_held_ratio("n", 5.6)
    view.merge(NodeRecord("b", 1, {"memory": 1000, HELD_RATIO: {"m": 2.0}}, frozenset({"a"})))
    assert view.held_ratios("m") == {"a": 1.612, "b": 2.0}
    assert view.held_ratios("n") == {"a": 5.6}
    assert NodeRecord.from_dict(view.own.to_dict()).held_ratio("m") == 1.612  # survives the wire form


def test_a_shards_stored_bytes_count_the_head_on_the_last_shard() -> None:
    source = resolve_model("smollm2-135m")
    config = load_config(source)
    total, head = stored_bytes(source), head_in_layers(source, config)
    assert shard_stored_bytes(source, config, 0, config.n_layers - 1) == pytest.approx(total)
    middle = shard_stored_bytes(source, config, 10, 19)
    assert middle == pytest.approx(10 * total / (config.n_layers + head))


class HoldsEngine:
    """Loads nothing; says it holds ``held`` bytes."""

    def __init__(self, held: int) -> None:
        self.held = held

    async def load(self, *args: object) -> None: ...

    def memory(self) -> MemoryUsage:
        return MemoryUsage(weights=self.held, kv_cache=0)


async def test_a_load_reports_held_over_stored() -> None:
    heard: list[tuple[str, float]] = []
    host = ShardHost(
        lambda: HoldsEngine(50_000_000),  # type: ignore[arg-type,return-value]
        Catalog("smollm2-135m"),
        on_held_ratio=lambda model, ratio: heard.append((model, ratio)),
    )
    await host.engine_for(("smollm2-135m", 10, 19), "r1")
    source = resolve_model("smollm2-135m")
    stored = shard_stored_bytes(source, load_config(source), 10, 19)
    assert heard == [("smollm2-135m", pytest.approx(50_000_000 / stored))]
    await host.engine_for(("smollm2-135m", 10, 19), "r2")  # already loaded: nothing new
    assert len(heard) == 1


async def _nothing(*args: object) -> None: ...


def test_the_backends_plan_uses_the_gossiped_ratios() -> None:
    """Two 100 MB nodes and a 160 MB model: as stored each node's half fits; once ``b`` has said its engine
    holds 1.6x, its half (80 MB stored, 128 MB held) no longer does: 503 ``no_capacity`` naming it."""
    from exo_core.api.backend import BackendError
    from exo_core.orchestration.backend import NodeBackend
    from exo_core.orchestration.requests import RequestTracker
    from exo_core.topology.partition import RingMemoryWeighted

    view = ClusterView("a", {"memory": 100})
    view.set_neighbors(["b"])
    view.merge(NodeRecord("b", 1, {"memory": 100}, frozenset({"a"})))
    backend = NodeBackend(view, Catalog("smollm2-135m"), RingMemoryWeighted(), RequestTracker(), _nothing)
    plan = backend.plan("m", 8, model_bytes=160 * MB)
    assert [e.n_layers for e in plan] == [4, 4]
    view.merge(NodeRecord("b", 2, {"memory": 100, HELD_RATIO: {"m": 1.6, "other": 9.0}}, frozenset({"a"})))
    with pytest.raises(BackendError) as info:
        backend.plan("m", 8, model_bytes=160 * MB)
    assert info.value.status == 503 and info.value.code == "no_capacity"
    assert "node b" in str(info.value) and "x 1.60" in str(info.value)
    backend.plan("n", 8, model_bytes=160 * MB)  # another model: b said nothing about it


class SaysNothing(HoldsEngine):
    def memory(self) -> MemoryUsage:
        raise RuntimeError("no idea")


async def test_an_engine_that_cannot_say_still_loads_and_serves(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[tuple[str, float]] = []
    host = ShardHost(
        lambda: SaysNothing(1),  # type: ignore[arg-type,return-value]
        Catalog("smollm2-135m"),
        on_held_ratio=lambda model, ratio: heard.append((model, ratio)),
    )
    engine = await host.engine_for(("smollm2-135m", 0, 3), "r1")
    assert isinstance(engine, SaysNothing) and heard == []
    assert "no held/stored figure: no idea" in caplog.text
