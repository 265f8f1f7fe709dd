"""Which BLAS MLX's CPU backend uses on Linux, and how to give it a fast one (Intel MKL or OpenBLAS).

The Linux ``mlx[cpu]`` wheel links its dense matmul (``cblas_sgemm``) against a bundled copy of the
reference netlib BLAS (``mlx_cpu.libs/libblas-*.so``): single-threaded and unblocked, ~5 GFLOP/s. Debian's
``libopenblas0-pthread`` exports the same ABI and runs ~30x faster. Two ways to make MLX use it:

* in-process (what :func:`preload_openblas` does): ``dlopen`` OpenBLAS with ``RTLD_GLOBAL`` *before* the
  first ``import mlx.core``. The dynamic linker then binds libmlx's undefined ``cblas_*``/LAPACK symbols to
  the first global definition, OpenBLAS, instead of the bundled library. After ``mlx.core`` is imported it is
  too late (its symbols are bound at load time), and nothing re-executes the process to fix that;
* for the whole process tree: ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0``.

NumPy's own OpenBLAS cannot serve: its symbols carry a suffix (``scipy_cblas_sgemm64_``), so it never
interposes, and the two libraries live side by side without conflict.

Intel MKL (the ``mkl`` wheel from PyPI, installed by the plugin's ``mkl`` extra) exports the same CBLAS
names from ``libmkl_rt`` and is preferred when installed: MLX's CPU matmul calls ``cblas_sgemm`` even for
one-row (decode) products, and MKL streams the weight matrix for those where OpenBLAS repacks it
(measured ~1.5x faster decode, see docs/engines.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Where Debian/Ubuntu put the threaded OpenBLAS (package ``libopenblas0-pthread``), then generic names.
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
#: MKL's single dynamic library (``mkl`` wheel: ``<prefix>/lib/libmkl_rt.so.N``).
MKL_PATTERNS = ("lib/libmkl_rt.so.*", "lib/libmkl_rt.so")
#: Dense float32 matmul below this rate means the reference BLAS (measured: ~5 vs ~170 GFLOP/s here).
SLOW_GFLOPS = 25.0

_state: dict[str, str | None] = {"preloaded": None}


def fix_command() -> str:
    """The commands that give MLX a fast BLAS on Debian/Ubuntu (for logs and docs)."""
    return (
        "install the plugin's MKL extra (pip install 'exo-engine-mlx[mkl]'), or "
        "apt-get install libopenblas0-pthread, then start exo with "
        "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 "
        "(or let the mlx engine load it: EXO_ENGINE_MLX_BLAS=auto, the default, works when nothing "
        "imported mlx before the engine)"
    )


def find_openblas(explicit: str = "") -> str | None:
    """Path of a system OpenBLAS: ``explicit`` if given (must exist), else the first known location."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for candidate in OPENBLAS_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = ctypes.util.find_library("openblas")
    return found


def find_mkl() -> str | None:
    """Path of the MKL runtime library installed in this Python environment (the ``mkl`` wheel), if any."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for pattern in MKL_PATTERNS:
            found = sorted(glob.glob(os.path.join(prefix, pattern)))
            if found:
                return found[-1]
    return None


def find_fast_blas(explicit: str = "") -> str | None:
    """The library to load for MLX: ``explicit`` if given (must exist), else MKL, else a system OpenBLAS."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return find_mkl() or find_openblas()


def preloaded() -> str | None:
    """The OpenBLAS this module loaded, or ``None``."""
    return _state["preloaded"]


def preload_openblas(explicit: str = "") -> str | None:
    """Load a fast BLAS (:func:`find_fast_blas`: MKL, else a system OpenBLAS) globally so MLX binds to it;
    returns its path, or ``None`` if not done.

    Only acts on Linux, before ``mlx.core`` is imported, and once per process. A preload already given through
    ``LD_PRELOAD`` is left alone. Never raises: a library that fails to load is logged and skipped.
    """
    if not sys.platform.startswith("linux") or _state["preloaded"]:
        return _state["preloaded"]
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("openblas", "mkl")):
        return None
    if "mlx.core" in sys.modules:
        log.debug("mlx.core is already imported; too late to preload OpenBLAS in-process")
        return None
    path = find_fast_blas(explicit)
    if path is None:
        if explicit:
            log.warning("EXO_ENGINE_MLX_BLAS_PATH=%s does not exist; MLX keeps its bundled BLAS", explicit)
        return None
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("could not load %s (%s); MLX keeps its bundled reference BLAS", path, exc)
        return None
    _state["preloaded"] = path
    log.info("loaded %s globally so MLX's CPU matmul uses it", path)
    return path


@dataclass(frozen=True)
class BlasReport:
    """What the dense matmul of MLX's CPU backend runs on.

    Attributes:
        library: a short description (``openblas (LD_PRELOAD)``, ``reference netlib BLAS (bundled)``, ...).
        gflops: measured float32 matmul rate.
        slow: ``True`` when the rate says reference BLAS (see :data:`SLOW_GFLOPS`).
    """

    library: str
    gflops: float
    slow: bool


def measure_gflops() -> float:
    """Time a small float32 matmul on MLX's CPU (a few ms with OpenBLAS, ~30 ms with the reference BLAS)."""
    import mlx.core as mx

    n = 256
    with mx.stream(mx.cpu):
        a = mx.random.normal((n, n), key=mx.random.key(0))
        b = mx.random.normal((n, n), key=mx.random.key(1))
        mx.eval(a, b)
        mx.eval(a @ b)  # warm-up (thread pool start)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


def cpu_blas_report() -> BlasReport:
    """Measure and describe the BLAS MLX's CPU backend uses in this process."""
    gflops = measure_gflops()
    slow = gflops < SLOW_GFLOPS
    loaded, ld_preload = _state["preloaded"], os.environ.get("LD_PRELOAD", "")
    if loaded:
        library = f"{'mkl' if 'mkl' in Path(loaded).name else 'openblas'} ({loaded}, loaded by exo)"
    elif "mkl" in ld_preload:
        library = "mkl (LD_PRELOAD)"
    elif "openblas" in ld_preload:
        library = "openblas (LD_PRELOAD)"
    elif sys.platform == "darwin":
        library = "Accelerate"
    else:
        library = "reference netlib BLAS (bundled with the mlx wheel)" if slow else "unknown fast BLAS"
    return BlasReport(library=library, gflops=round(gflops, 1), slow=slow)
