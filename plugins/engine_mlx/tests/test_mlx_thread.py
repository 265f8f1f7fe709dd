"""All MLX work runs on one thread: in order, shielded from cancellation, and processes still exit cleanly."""

from __future__ import annotations

import subprocess
import sys
import threading

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from exo_engine_mlx import thread as mlx_thread

# a forward pass right before the interpreter exits: while the MLX thread was a joined worker, or a daemon
# left unparked, such processes aborted at exit ("terminate called without an active exception", status
# 134) in 2-3 of 10 runs (MLX's thread-local compiled graphs were destroyed while the interpreter finalized)
SCRIPT = r"""
import anyio, numpy as np
from exo_core.models.source import load_config, resolve_model
from exo_engine_mlx.engine import MlxEngine

source = resolve_model("smollm2-135m")
n = load_config(source).n_layers

async def go():
    engine = MlxEngine()
    await engine.load(source, 0, n - 1, n)
    await engine.forward("r", np.arange(1, 10))
    await engine.forward("r", np.array([5]))

anyio.run(go)
print("served")
"""


@pytest.mark.timeout(300)
def test_processes_that_ran_compiled_mlx_steps_exit_cleanly() -> None:
    for _ in range(4):
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "served" in out.stdout and "terminate called" not in out.stderr


async def test_calls_run_in_order_on_one_thread() -> None:
    seen: list[tuple[str, str]] = []

    def work(tag: str) -> str:
        seen.append((tag, threading.current_thread().name))
        return tag

    assert await mlx_thread.run(work, "a") == "a"
    assert mlx_thread.call(work, "b") == "b"
    assert mlx_thread.call(lambda: mlx_thread.call(work, "nested")) == "nested"  # no deadlock on the thread
    async with anyio.create_task_group() as tg:
        for tag in "cdef":
            tg.start_soon(mlx_thread.run, work, tag)
    assert [tag for tag, _ in seen] == ["a", "b", "nested", "c", "d", "e", "f"]
    assert {name for _, name in seen} == {mlx_thread.NAME}
    np.testing.assert_equal(await mlx_thread.run(np.add, 1, 2), 3)


async def test_errors_reach_the_caller_and_the_thread_keeps_serving() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await mlx_thread.run(fail)
    assert await mlx_thread.run(lambda: 7) == 7


async def test_a_cancelled_caller_waits_for_its_call_to_finish() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    with anyio.move_on_after(0.05) as scope:
        threading.Timer(0.3, release.set).start()
        await mlx_thread.run(slow)
        assert finished.is_set()  # the shielded call was waited for, past the deadline
        await anyio.lowlevel.checkpoint()  # the next checkpoint delivers the cancellation
    assert scope.cancelled_caught
