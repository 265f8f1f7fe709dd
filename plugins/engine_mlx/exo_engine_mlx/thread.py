"""The one thread that runs a process's MLX work.

MLX keeps its streams per thread: a stream made on one thread (the second CPU stream that split matmuls
use, see :class:`exo_engine_mlx.weights.Linear`) does not exist on another, and evaluating a graph that
names it there fails (``There is no Stream(cpu, N) in current thread``). ``anyio.to_thread`` hands each
call to whichever worker thread is free, so the engine sends all of its MLX work here instead: loading and
every forward pass run on one long-lived thread, one at a time, in the order they were submitted.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

log = logging.getLogger(__name__)

#: the thread's name
NAME = "exo-mlx"
#: how long the exit hook waits for the MLX thread to finish its job and park
EXIT_WAIT_S = 10.0

_lock = threading.Lock()
_jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[object, ...]]] | None = None


def _serve(jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[object, ...]]]) -> None:
    while True:
        future, fn, args = jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)
        del future, fn, args  # hold no engine, cache or array while idle


def _park_at_exit() -> None:
    """``atexit``: leave the MLX thread blocked for good before the interpreter finalizes.

    MLX keeps each thread's compiled graphs in that thread's C++ thread-local storage, and destroying them
    takes the GIL. A daemon thread that wakes while the interpreter finalizes is made to exit there, its
    thread-locals are destroyed, and the process aborts (``terminate called without an active exception``,
    exit status 134: measured in 3 of 12 runs of a script whose last MLX call had just returned). So the
    last job parks the thread in a lock that is never released (waiting without the GIL), and this waits
    until it got there, at most :data:`EXIT_WAIT_S` (a job still running at exit delays it).
    """
    jobs = _jobs
    if jobs is None:
        return
    parked = threading.Event()
    never = threading.Lock()
    never.acquire()

    def park() -> None:
        parked.set()
        never.acquire()  # blocks until the process ends; the GIL is released while it waits

    jobs.put((Future(), park, ()))
    if not parked.wait(EXIT_WAIT_S):
        log.warning("the MLX thread is still busy at exit; the process may abort while it ends")


def _submit(fn: Callable[..., T], args: tuple[object, ...]) -> Future[T]:
    """Queue ``fn(*args)`` for the MLX thread, starting the thread on first use.

    The thread is a daemon that lives as long as the process and is parked before the interpreter
    finalizes (:func:`_park_at_exit`): it is never joined, because a thread that ends destroys MLX's
    thread-local compiled graphs, which needs the GIL (with a joined worker thread, every process that had
    compiled a decode step aborted at exit: ``terminate called without an active exception``).
    """
    global _jobs
    with _lock:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(_jobs,), name=NAME, daemon=True).start()
            atexit.register(_park_at_exit)
        jobs = _jobs
    future: Future[T] = Future()
    jobs.put((future, fn, args))
    return future


def on_mlx_thread() -> bool:
    """The caller runs on the MLX thread."""
    return threading.current_thread().name.startswith(NAME)


def call(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` on the MLX thread and return its result (blocking; for start-up code and tests)."""
    if on_mlx_thread():
        return fn(*args)
    return _submit(fn, args).result()


async def run(fn: Callable[..., T], *args: object) -> T:
    """Await ``fn(*args)`` on the MLX thread (the node's asyncio event loop).

    Once submitted, the call is waited for even if the caller is cancelled, as ``anyio.to_thread.run_sync``
    does: the engine's caches must not be left half-updated while the next call begins.
    """
    future = asyncio.wrap_future(_submit(fn, args))
    with anyio.CancelScope(shield=True):
        result = await future
    return result
