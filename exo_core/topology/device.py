"""This device's capabilities, in the seed's peers.json ``device_capabilities`` format.

``{"model": str, "chip": str, "memory": int (MB), "flops": {"fp32": TFLOPS, "fp16": TFLOPS, "int8": TFLOPS}}``

Detected on Linux (``/proc``, ``/sys``) and macOS (``sysctl``); every field can be overridden with the
flags ``--device-model``, ``--device-chip``, ``--device-memory-mb``, ``--device-flops-fp32``,
``--device-flops-fp16`` and ``--device-flops-int8`` (environment variables ``EXO_DEVICE_MODEL`` to
``EXO_DEVICE_FLOPS_INT8``; see :meth:`~exo_core.settings.CoreSettings.device_overrides`), e.g. to give a
shared machine a smaller share of the layers.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Peak TFLOPS of Apple silicon GPUs (fp32, fp16, int8), from Apple's published figures.
_APPLE_CHIP_TFLOPS: dict[str, tuple[float, float, float]] = {
    "Apple M1": (2.29, 4.58, 9.16),
    "Apple M1 Pro": (5.30, 10.60, 21.20),
    "Apple M1 Max": (10.60, 21.20, 42.40),
    "Apple M1 Ultra": (21.20, 42.40, 84.80),
    "Apple M2": (3.55, 7.10, 14.20),
    "Apple M2 Pro": (5.68, 11.36, 22.72),
    "Apple M2 Max": (13.49, 26.98, 53.96),
    "Apple M2 Ultra": (26.98, 53.96, 107.92),
    "Apple M3": (3.55, 7.10, 14.20),
    "Apple M3 Pro": (4.97, 9.94, 19.88),
    "Apple M3 Max": (14.20, 28.40, 56.80),
    "Apple M4": (4.26, 8.52, 17.04),
    "Apple M4 Pro": (9.22, 18.44, 36.88),
    "Apple M4 Max": (18.43, 36.86, 73.72),
}


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _linux_memory_mb() -> int:
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return int(match.group(1)) // 1024 if match else 0


def _linux_chip() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def _cpu_tflops() -> tuple[float, float, float]:
    """A rough CPU peak: cores x clock x FMA throughput (AVX2: 32 fp32 flops per cycle per core)."""
    cores = os.cpu_count() or 1
    mhz = 0.0
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", _read("/proc/cpuinfo"), re.MULTILINE)
    if match:
        mhz = float(match.group(1))
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_khz.isdigit():
        mhz = max(mhz, int(max_khz) / 1000)
    ghz = (mhz or 2000.0) / 1000
    flags = _read("/proc/cpuinfo")
    per_cycle = 32 if " avx2" in flags else 16 if " avx" in flags else 8
    fp32 = round(cores * ghz * per_cycle / 1000, 3)
    return fp32, fp32, round(fp32 * 2, 3)


def detect() -> dict[str, Any]:
    """Detect this device's capabilities (no overrides applied)."""
    if sys.platform == "darwin":
        chip = _sysctl("machdep.cpu.brand_string") or platform.processor() or "Apple"
        memory = int(_sysctl("hw.memsize") or 0) // (1024 * 1024)
        model = _sysctl("hw.model") or "Mac"
        tflops = _APPLE_CHIP_TFLOPS.get(chip) or _cpu_tflops()
    else:
        chip = _linux_chip()
        memory = _linux_memory_mb()
        model = (
            _read("/sys/devices/virtual/dmi/id/product_name") or f"{platform.system()} {platform.machine()}"
        )
        tflops = _cpu_tflops()
    return {
        "model": model,
        "chip": chip,
        "memory": memory,
        "flops": {"fp32": tflops[0], "fp16": tflops[1], "int8": tflops[2]},
    }


def apply_overrides(caps: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``EXO_DEVICE_*`` overrides; a malformed number is an error naming the variable."""
    from exo_core.errors import ConfigError

    out = {**caps, "flops": dict(caps.get("flops") or {})}
    if env.get("EXO_DEVICE_MODEL"):
        out["model"] = env["EXO_DEVICE_MODEL"]
    if env.get("EXO_DEVICE_CHIP"):
        out["chip"] = env["EXO_DEVICE_CHIP"]

    def number(var: str) -> float | None:
        raw = env.get(var)
        if raw is None or raw == "":
            return None
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a number") from None
        if value < 0:
            raise ConfigError(f"{var}={raw!r} must not be negative")
        return value

    memory = number("EXO_DEVICE_MEMORY_MB")
    if memory is not None:
        out["memory"] = int(memory)
    for key in ("fp32", "fp16", "int8"):
        value = number(f"EXO_DEVICE_FLOPS_{key.upper()}")
        if value is not None:
            out["flops"][key] = value
    return out


def device_capabilities(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """This device's capabilities with ``EXO_DEVICE_*`` overrides applied (from ``env``; default: the
    process environment)."""
    return apply_overrides(detect(), os.environ if env is None else env)
