"""``--inference-engine auto``: the fastest engine available on this machine.

MLX first on Apple silicon (Metal); elsewhere NumPy first, because on Linux CPUs the NumPy engine decodes
faster than MLX's CPU backend (see benchmarks/engine.py and docs/engines.md). Engines a plugin adds come
after those two; engines whose library is missing here are skipped.
"""

from __future__ import annotations

import platform
import sys

from exo_core.components import Component, Registry
from exo_core.errors import ComponentUnavailableError


def preference() -> list[str]:
    """First-party engine names in order of preference on this platform."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return ["mlx", "numpy"]
    return ["numpy", "mlx"]


def auto_engine(registry: Registry) -> Component:
    """The first available engine in :func:`preference` order, then any other available one."""
    names = registry.names("engine")
    ordered = [n for n in preference() if n in names] + [n for n in names if n not in preference()]
    reasons = []
    for name in ordered:
        component = registry.get("engine", name)
        reason = component.unavailable_reason()
        if reason is None:
            return component
        reasons.append(f"{name}: {reason}")
    detail = "; ".join(reasons) if reasons else "no engine plugin is installed"
    raise ComponentUnavailableError(
        f"--inference-engine auto found no engine that can run here ({detail}); install exo-engine-numpy"
    )
