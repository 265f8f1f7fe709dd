"""Read deadlines: idle between frames, slow sender inside one, the backpressure pause, the GOAWAY cutoff."""

from __future__ import annotations

from exo_core.transport.deadlines import ReadDeadlines
from exo_core.transport.settings import TransportSettings

SETTINGS = TransportSettings(
    idle_timeout=10.0, frame_timeout=5.0, min_transfer_rate=1000, write_timeout=30.0, max_write_backlog=65536
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_between_frames() -> None:
    clock = Clock()
    d = ReadDeadlines(SETTINGS, clock)
    assert d.next(0) == (110.0, "nothing received for 10s (peer dead or unreachable)")
    d.received(103.0, 50, in_frame=False)
    assert d.next(0)[0] == 113.0


def test_slow_sender_inside_a_frame_gets_time_per_byte() -> None:
    clock = Clock()
    d = ReadDeadlines(SETTINGS, clock)
    d.received(101.0, 1000, in_frame=True)
    d.received(102.0, 3000, in_frame=True)  # the frame started at 101: 4000 bytes buy 4 more seconds
    clock.now = 102.0
    deadline, why = d.next(0)
    assert deadline == 101.0 + 5.0 + 4.0
    assert why == "slow sender: a frame is still incomplete after 1.0s (4000 bytes received)"
    d.received(103.0, 10, in_frame=False)  # the frame completed: back to the idle deadline
    assert d.frame_start is None
    assert d.next(0)[0] == 113.0


def test_pause_bounds_by_write_timeout_and_resume_forgives_the_pause() -> None:
    clock = Clock()
    d = ReadDeadlines(SETTINGS, clock)
    d.received(100.0, 10, in_frame=True)
    clock.now = 101.0
    d.pause()
    deadline, why = d.next(123456)
    assert deadline == 131.0
    assert "123456 bytes queued for it (max_write_backlog 65536)" in why
    clock.now = 121.0
    d.resume()
    assert d.paused_at is None
    assert (d.last_recv, d.frame_start) == (120.0, 120.0)  # 20 s paused are not the peer's silence
    d.resume()  # not paused: nothing moves
    assert d.last_recv == 120.0


def test_close_deadline_applies_only_when_earlier() -> None:
    d = ReadDeadlines(SETTINGS, Clock())
    d.close_at = 105.0
    assert d.next(0) == (105.0, "peer did not answer GOAWAY in time")
    d.close_at = 200.0
    assert d.next(0)[0] == 110.0
