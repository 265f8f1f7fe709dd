"""Handler tasks are reused, yet a handler that blocks never holds up the next one."""

from __future__ import annotations

import anyio
import anyio.lowlevel

from exo_core.transport.workers import TaskPool


async def test_jobs_reuse_idle_tasks() -> None:
    pool = TaskPool(max_idle=2)
    seen: list[int] = []

    async def job(i: int) -> None:
        seen.append(i)

    async with anyio.create_task_group() as tg:
        pool.submit(tg, job, 0)
        await anyio.sleep(0.01)
        assert pool.idle == 1  # the task that ran job 0 waits for more
        for i in range(1, 5):
            pool.submit(tg, job, i)
            await anyio.lowlevel.checkpoint()
        await anyio.sleep(0.01)
        assert seen == [0, 1, 2, 3, 4]
        assert pool.idle == 1
        tg.cancel_scope.cancel()
    assert pool.idle == 0  # cancelled idle tasks leave the pool


async def test_a_blocked_job_does_not_hold_up_others() -> None:
    pool = TaskPool(max_idle=1)
    release = anyio.Event()
    done: list[str] = []

    async def slow() -> None:
        await release.wait()
        done.append("slow")

    async def fast(name: str) -> None:
        done.append(name)

    async with anyio.create_task_group() as tg:
        pool.submit(tg, slow)
        pool.submit(tg, fast, "a")
        pool.submit(tg, fast, "b")
        with anyio.fail_after(2):
            while len(done) < 2:  # noqa: ASYNC110 - polls the jobs' output
                await anyio.sleep(0.005)
        assert done == ["a", "b"]
        release.set()
        with anyio.fail_after(2):
            while len(done) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        assert pool.idle == 1  # capped: the other tasks exited
        tg.cancel_scope.cancel()
