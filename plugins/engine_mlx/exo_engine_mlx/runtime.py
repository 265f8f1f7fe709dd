"""Importing MLX the one right way: on Linux, load a system OpenBLAS first (see :mod:`exo_engine_mlx.blas`).

Every entry point that may be the first to touch MLX (the availability check, the factory, the engine's
constructor) goes through :func:`import_mlx`; the other modules import ``mlx.core`` lazily after it.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import mlx.core as mx

log = logging.getLogger(__name__)

BlasChoice = Literal["auto", "bundled"]

_result: dict[str, str | None] = {}
_streams: list[mx.Stream] = []
_streams_lock = threading.Lock()


def import_mlx(blas: BlasChoice = "auto", blas_path: str = "") -> str | None:
    """Import ``mlx.core`` once per process; ``None`` on success, else why it failed (with an install hint).

    With ``blas="auto"`` a system OpenBLAS is loaded first when one is installed and ``mlx.core`` is not
    imported yet; ``bundled`` leaves MLX on the wheel's own BLAS. Later calls return the first result.
    """
    if "mlx" in _result:
        return _result["mlx"]
    if blas == "auto":
        from exo_engine_mlx.blas import preload_openblas

        preload_openblas(blas_path)
    try:
        import mlx.core  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a missing native library
        hint = "pip install 'mlx[cpu]'" if sys.platform.startswith("linux") else "pip install mlx"
        _result["mlx"] = f"mlx is not importable ({type(exc).__name__}: {exc}); {hint}"
        log.debug("mlx import failed: %s", _result["mlx"])
    else:
        _result["mlx"] = None
    return _result["mlx"]


def check_blas() -> None:
    """Log which BLAS MLX's CPU backend uses; a warning with the fix when it is the slow reference BLAS."""
    import mlx.core as mx

    if mx.default_device() == mx.gpu or not sys.platform.startswith("linux"):
        return
    from exo_engine_mlx.blas import cpu_blas_report, fix_command

    report = cpu_blas_report()
    if report.slow:
        log.warning(
            "mlx: dense matmul runs on %s at %.1f GFLOP/s (~30x slower than OpenBLAS); fix: %s",
            report.library,
            report.gflops,
            fix_command(),
        )
    else:
        log.info("mlx: dense matmul runs on %s at %.1f GFLOP/s", report.library, report.gflops)


def second_cpu_stream() -> mx.Stream:
    """A CPU stream besides the default one, created once per process and shared by every engine (MLX
    runs each stream's work on its own thread, so ops on it run beside the default stream's)."""
    import mlx.core as mx

    with _streams_lock:
        if not _streams:
            _streams.append(mx.new_stream(mx.cpu))
        return _streams[0]


def release_freed_memory() -> None:
    """Give memory that freed arrays left behind back to the system: MLX's buffer cache, then on glibc the
    C heap's free pages (MLX allocates CPU buffers with ``malloc``; glibc keeps freed blocks of a few MB in
    its heap). Called after a shard is replaced."""
    import mlx.core as mx

    mx.clear_cache()
    if sys.platform == "linux":
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass
