"""one_blas_thread: one BLAS thread inside, the previous count back when the last concurrent user leaves."""

from __future__ import annotations

import threading

import numpy as np
from exo_engine_numpy.blas_threads import _blas, one_blas_thread
from threadpoolctl import threadpool_limits


def _blas_threads() -> list[int]:
    """Threads of NumPy's own BLAS (other BLAS libraries in the process, e.g. MLX's, are left alone)."""
    return [int(c.num_threads) for c in _blas()]


def test_limits_and_restores_when_the_last_user_leaves() -> None:
    with threadpool_limits(2, user_api="blas"):
        np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded
        assert _blas_threads() and all(n == 2 for n in _blas_threads())
        seen: list[list[int]] = []

        def other() -> None:
            with one_blas_thread():
                seen.append(_blas_threads())

        with one_blas_thread():
            assert all(n == 1 for n in _blas_threads())
            t = threading.Thread(target=other)
            t.start()
            t.join(10)
            assert seen == [[1] * len(_blas_threads())]
            assert all(n == 1 for n in _blas_threads())  # the other user left, this one has not
        assert all(n == 2 for n in _blas_threads())
