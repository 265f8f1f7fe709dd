"""Sharing the API's slots between clients (:mod:`exo_core.api.admission`) and named API keys
(:mod:`exo_core.api.keys`): one client's flood leaves room for the others."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from exo_core.api.admission import Admission
from exo_core.api.errors import APIError
from exo_core.api.keys import CLIENT_SCOPE_KEY, client_of, load_api_keys
from exo_core.errors import ConfigError

from .support import FakeBackend, Script, running_api

MSG = [{"role": "user", "content": "hi"}]


async def test_a_client_holds_at_most_its_share_and_another_gets_a_slot_at_once() -> None:
    admission = Admission(max_in_flight=4, max_queued=8, client_share=0.75)
    assert (admission.client_in_flight, admission.client_queued) == (3, 6)
    release = anyio.Event()
    started: list[str] = []

    async def user(client: str, name: str) -> None:
        async with admission.slot(name, client):
            started.append(name)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(user, "a", f"a{i}")
        await anyio.sleep(0.05)
        assert started == ["a0", "a1", "a2"]  # its share; a3 and a4 wait though a slot is free
        assert (admission.in_flight, admission.queued) == (3, 2)
        tg.start_soon(user, "b", "b0")
        await anyio.sleep(0.05)
        assert started[-1] == "b0" and admission.in_flight == 4
        release.set()
    assert started[4:] == ["a3", "a4"]
    assert (admission.in_flight, admission.queued) == (0, 0)


async def test_a_freed_slot_goes_to_the_waiting_client_holding_fewest() -> None:
    admission = Admission(max_in_flight=2, max_queued=8, client_share=1.0)
    gates = {name: anyio.Event() for name in ("a0", "a1", "a2", "b0")}
    started: list[str] = []

    async def user(client: str, name: str) -> None:
        async with admission.slot(name, client):
            started.append(name)
            await gates[name].wait()

    async with anyio.create_task_group() as tg:
        for name in ("a0", "a1", "a2"):
            tg.start_soon(user, "a", name)
            await anyio.sleep(0.01)
        tg.start_soon(user, "b", "b0")  # arrives after a2, but holds nothing
        await anyio.sleep(0.05)
        assert started == ["a0", "a1"]
        gates["a0"].set()
        await anyio.sleep(0.05)
        assert started == ["a0", "a1", "b0"]  # b holds 0 slots, a holds 1: b first
        for gate in gates.values():
            gate.set()
    assert started == ["a0", "a1", "b0", "a2"]


async def test_one_client_filling_its_queue_share_leaves_places_for_others() -> None:
    admission = Admission(max_in_flight=1, max_queued=4, client_share=0.5)
    release = anyio.Event()

    async def user(client: str, name: str) -> None:
        async with admission.slot(name, client):
            await release.wait()

    async with anyio.create_task_group() as tg:
        for i in range(3):  # one generating, two waiting: its share of the 4 places
            tg.start_soon(user, "a", f"a{i}")
        await anyio.sleep(0.05)
        with pytest.raises(APIError) as refused:
            async with admission.slot("a3", "a"):
                pass
        assert refused.value.status == 429 and "this client" in refused.value.message
        tg.start_soon(user, "b", "b0")  # another client still finds a place
        await anyio.sleep(0.05)
        assert admission.queued == 3
        release.set()
    assert (admission.in_flight, admission.queued, admission.refused) == (0, 0, 1)


async def test_with_one_slot_requests_keep_their_arrival_order_across_clients() -> None:
    admission = Admission(max_in_flight=1, max_queued=5, client_share=1.0)
    order: list[str] = []

    async def user(client: str, name: str) -> None:
        async with admission.slot(name, client):
            order.append(name)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for name, client in [("a0", "a"), ("a1", "a"), ("a2", "a"), ("b0", "b"), ("a3", "a")]:
            tg.start_soon(user, client, name)
            await anyio.sleep(0.001)
    # each time the slot frees, every waiting client holds nothing: the earliest waiter goes first
    assert order == ["a0", "a1", "a2", "b0", "a3"]


def test_rejects_a_share_outside_zero_to_one() -> None:
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="client_share"):
            Admission(4, 4, client_share=share)


def test_load_api_keys_reads_names_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nalice  sk-alice   # laptop\n\n  bob sk-bob\n")
    assert load_api_keys(path) == {"sk-alice": "alice", "sk-bob": "bob"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("alice\n", ["line 1", "expected 'name key', got 1"]),
        ("alice sk-1 extra\n", ["line 1", "got 3"]),
        ("alice sk-1\nalice sk-2\n", ["line 2", "'alice' is used twice"]),
        ("alice sk-1\nbob sk-1\n", ["line 2", "also given to 'alice'"]),
        ("# nothing\n", ["no keys"]),
    ],
)
def test_load_api_keys_errors_name_the_line(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_api_keys(path)
    for word in ["--api-keys-file", str(path), *words]:
        assert word in str(err.value)


def test_load_api_keys_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_api_keys(tmp_path / "nope")


async def test_each_named_key_is_its_own_client_over_http() -> None:
    """Two named keys on a node with 2 slots and share 1/2: alice's second request waits while bob's runs
    at once; the single --api-key works beside them, and a wrong key is a 401."""
    gate = anyio.Event()
    backend = FakeBackend(lambda call: Script(tokens=[" x"], delay=0.0 if gate.is_set() else 1.0))
    keys = {"sk-alice": "alice", "sk-bob": "bob"}
    async with (
        running_api(backend, api_key="sk-single", api_keys=keys, max_in_flight=2, client_share=0.5) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        results: dict[str, tuple[int, float]] = {}

        async def post(name: str, key: str) -> None:
            t0 = time.monotonic()
            resp = await client.post(
                "/v1/chat/completions", json={"messages": MSG}, headers={"authorization": f"Bearer {key}"}
            )
            results[name] = (resp.status_code, time.monotonic() - t0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, "alice1", "sk-alice")
            with anyio.fail_after(5):
                await backend.first_call()
            tg.start_soon(post, "alice2", "sk-alice")
            await anyio.sleep(0.2)
            assert len(backend.calls) == 1  # alice's second waits: her share is one slot
            tg.start_soon(post, "bob", "sk-bob")
            await anyio.sleep(0.2)
            assert len(backend.calls) == 2  # bob took the free slot at once
            wrong = await client.post(
                "/v1/chat/completions", json={"messages": MSG}, headers={"authorization": "Bearer sk-nope"}
            )
            assert wrong.status_code == 401
        gate.set()
        single = await client.post(
            "/v1/chat/completions", json={"messages": MSG}, headers={"authorization": "Bearer sk-single"}
        )
    assert single.status_code == 200
    statuses = {name: status for name, (status, _) in results.items()}
    assert statuses == {"alice1": 200, "alice2": 200, "bob": 200}
    assert results["alice2"][1] > results["alice1"][1]  # it waited for alice's first to end


def test_a_client_is_its_key_name_else_its_address() -> None:
    keyed = {"type": "http", "client": ("127.0.0.2", 5000), CLIENT_SCOPE_KEY: "alice"}
    assert client_of(keyed) == "key:alice"
    assert client_of({"type": "http", "client": ("127.0.0.2", 5000)}) == "addr:127.0.0.2"
    assert client_of({"type": "http", "client": ("127.0.0.2", 6000)}) == "addr:127.0.0.2"  # any port
    assert client_of({"type": "http", "client": None}) == "addr:?"


async def test_with_the_single_api_key_clients_are_told_apart_by_address() -> None:
    """Everyone sends the same --api-key: it names no one, so two hosts (127.0.0.1 and 127.0.0.2) each get
    their own share."""
    gate = anyio.Event()
    backend = FakeBackend(lambda call: Script(tokens=[" x"], delay=0.0 if gate.is_set() else 1.0))
    auth = {"authorization": "Bearer sk-single"}
    other_host = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        running_api(backend, api_key="sk-single", max_in_flight=2, client_share=0.5) as url,
        httpx.AsyncClient(base_url=url, timeout=10, headers=auth) as here,
        httpx.AsyncClient(base_url=url, timeout=10, headers=auth, transport=other_host) as there,
    ):
        statuses: list[int] = []

        async def post(client: httpx.AsyncClient) -> None:
            statuses.append((await client.post("/v1/chat/completions", json={"messages": MSG})).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, here)
            with anyio.fail_after(5):
                await backend.first_call()
            tg.start_soon(post, here)
            await anyio.sleep(0.2)
            assert len(backend.calls) == 1  # this host's share is one slot: its second request waits
            tg.start_soon(post, there)
            await anyio.sleep(0.2)
            assert len(backend.calls) == 2  # the other host took the free slot at once
            gate.set()
    assert statuses == [200, 200, 200]
