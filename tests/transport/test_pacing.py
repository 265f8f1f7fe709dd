"""Fragment sizes follow the link: grow only on proven fast drains, shrink at once on slow ones."""

from __future__ import annotations

from exo_core.transport.pacing import TARGET_SECONDS, FragmentPacer


def _fragment(p: FragmentPacer, seconds: float, *, waited: bool) -> int:
    p.started(100.0)
    if waited:
        p.waited()
    p.finished(100.0 + seconds)
    return p.size


def test_grows_on_fast_drains_up_to_the_cap() -> None:
    p = FragmentPacer(256 * 1024, 1 << 20)
    sizes = [_fragment(p, TARGET_SECONDS / 10, waited=True) for _ in range(4)]
    assert sizes == [512 * 1024, 1 << 20, 1 << 20, 1 << 20]


def test_a_fragment_absorbed_by_an_empty_buffer_proves_nothing() -> None:
    p = FragmentPacer(256 * 1024, 8 << 20)
    for _ in range(10):
        _fragment(p, 0.0, waited=False)
    assert p.size == 256 * 1024


def test_shrinks_on_slow_drains_but_not_below_the_minimum() -> None:
    p = FragmentPacer(64 * 1024, 1 << 20)
    for _ in range(4):
        _fragment(p, TARGET_SECONDS / 10, waited=True)
    assert p.size == 1 << 20
    sizes = [_fragment(p, TARGET_SECONDS * 20, waited=True) for _ in range(8)]
    assert sizes == sorted(sizes, reverse=True)  # only ever shrinks
    assert sizes[-1] == 64 * 1024


def test_one_stall_on_a_fast_link_does_not_collapse_the_size() -> None:
    p = FragmentPacer(256 * 1024, 8 << 20)
    for _ in range(6):
        _fragment(p, 0.0005, waited=True)  # 8 MiB in 0.5 ms and faster
    assert p.size == 8 << 20
    _fragment(p, TARGET_SECONDS * 1.5, waited=True)
    assert p.size >= 4 << 20


def test_slow_link_stays_at_the_minimum() -> None:
    p = FragmentPacer(256 * 1024, 8 << 20)
    for _ in range(10):
        _fragment(p, 0.025, waited=True)  # 10 MB/s
    assert p.size == 256 * 1024


def test_max_below_min_means_fixed_size() -> None:
    p = FragmentPacer(256 * 1024, 4096)
    assert _fragment(p, 0.0, waited=True) == 256 * 1024
    assert not p.busy
    p.finished(5.0)  # no fragment in flight: ignored
    assert p.size == 256 * 1024
