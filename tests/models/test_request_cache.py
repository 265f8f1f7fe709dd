"""Per-request KV cache bookkeeping shared by the engines: create on first use, limit, free, clear, bytes."""

from __future__ import annotations

import pytest

from exo_core.models.request_cache import RequestCaches, check_room


class FakeCache:
    """A cache as an engine's: ``pos`` and ``nbytes``, plus the limit it was created with."""

    def __init__(self, limit: int, nbytes: int = 100) -> None:
        self.limit = limit
        self.pos = 0
        self.nbytes = nbytes


def test_a_cache_is_created_once_per_request_with_the_context_limit() -> None:
    caches: RequestCaches[FakeCache] = RequestCaches()
    made: list[int] = []

    def new(limit: int) -> FakeCache:
        made.append(limit)
        return FakeCache(limit)

    a = caches.get_or_create("a", 2048, new)
    assert caches.get_or_create("a", 2048, new) is a
    assert made == [2048] and a.limit == 2048
    b = caches.get_or_create("b", 2048, new)
    assert b is not a and len(caches) == 2 and "a" in caches and "b" in caches


@pytest.mark.parametrize(
    ("max_context", "context_length", "limit"), [(0, 2048, 2048), (16, 2048, 16), (4096, 2048, 2048)]
)
def test_max_context_caps_the_limit_only_when_set(max_context: int, context_length: int, limit: int) -> None:
    caches: RequestCaches[FakeCache] = RequestCaches(max_context)
    assert caches.max_context == max_context and caches.limit(context_length) == limit
    assert caches.get_or_create("r", context_length, FakeCache).limit == limit


def test_a_negative_max_context_is_refused() -> None:
    with pytest.raises(ValueError, match="max_context must be >= 0"):
        RequestCaches(-1)


def test_position_follows_the_cache_and_is_zero_for_unknown_ids() -> None:
    caches: RequestCaches[FakeCache] = RequestCaches()
    assert caches.position("r") == 0
    cache = caches.get_or_create("r", 64, FakeCache)
    cache.pos = 7
    assert caches.position("r") == 7
    assert "nobody" not in caches and len(caches) == 1  # asking for a position creates nothing


def test_free_drops_one_request_and_ignores_unknown_ids() -> None:
    caches: RequestCaches[FakeCache] = RequestCaches()
    first = caches.get_or_create("a", 64, FakeCache)
    first.pos = 5
    caches.get_or_create("b", 64, FakeCache)
    caches.free("a")
    caches.free("never-seen")
    assert "a" not in caches and "b" in caches and caches.position("a") == 0
    again = caches.get_or_create("a", 64, FakeCache)  # a freed id starts over at position 0
    assert again is not first and caches.position("a") == 0


def test_clear_drops_every_cache_and_nbytes_sums_them() -> None:
    caches: RequestCaches[FakeCache] = RequestCaches()
    assert caches.nbytes() == 0
    caches.get_or_create("a", 64, lambda limit: FakeCache(limit, nbytes=100))
    caches.get_or_create("b", 64, lambda limit: FakeCache(limit, nbytes=23))
    assert caches.nbytes() == 123
    caches.clear()
    assert len(caches) == 0 and caches.nbytes() == 0 and caches.position("a") == 0


def test_check_room_allows_up_to_the_limit_and_names_the_overflow() -> None:
    check_room(0, 8, 8)
    check_room(7, 1, 8)
    with pytest.raises(ValueError, match=r"^context overflow: 7 cached \+ 2 new positions > limit 8$"):
        check_room(7, 2, 8)
