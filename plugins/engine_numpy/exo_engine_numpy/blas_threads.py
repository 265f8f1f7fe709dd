"""One BLAS thread while the quantized path runs, so OpenBLAS's idle threads do not fight onnxruntime's.

The quantized path multiplies on onnxruntime's thread pool and uses NumPy's BLAS only for attention's small
products. OpenBLAS's worker threads spin for a while after each call, and on a machine with as many cores
as onnxruntime has threads they take those cores from its kernels: measured here (2 cores), a 104-token
prefill ran at 119-156 tok/s with NumPy's default 2 BLAS threads and 430-518 tok/s with 1 (decode 54-66
vs 65-70 tok/s). :func:`one_blas_thread` sets one thread on entry and restores the count when the last
concurrent user leaves, so a float32 engine in the same process (benchmarks) keeps its threads.

NumPy's OpenBLAS (0.3.31 here) ignores a raise of the count from a thread other than the one that lowered
it, so the count comes back only when the last user is the first one's thread: always so when forwards
run one at a time (one compute slot, the default with several BLAS threads); concurrent slots come with
``OPENBLAS_NUM_THREADS=1``, where there is nothing to restore.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_users = 0
_saved: list[tuple[Any, int]] = []
_controllers: list[Any] | None = None


def _blas() -> list[Any]:
    """threadpoolctl's controllers of NumPy's own BLAS (the one attention's products call), found once:
    the libraries shipped inside the numpy package, else (a NumPy linked to a system BLAS) every BLAS
    loaded. Another BLAS in the process (MLX's system OpenBLAS) is left alone."""
    global _controllers
    if _controllers is None:
        import os

        import numpy
        from threadpoolctl import ThreadpoolController

        found = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        home = os.path.dirname(os.path.dirname(os.path.realpath(numpy.__file__)))
        own = [c for c in found if os.path.realpath(c.filepath).startswith(os.path.join(home, "numpy"))]
        _controllers = own or found
    return _controllers


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the body with BLAS limited to one thread (re-entrant across threads)."""
    global _users
    with _lock:
        if _users == 0:
            _saved[:] = [(c, c.num_threads) for c in _blas()]
            for c, n in _saved:
                if n != 1:
                    c.set_num_threads(1)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                for c, n in _saved:
                    if n != 1:
                        c.set_num_threads(n)
                _saved.clear()
