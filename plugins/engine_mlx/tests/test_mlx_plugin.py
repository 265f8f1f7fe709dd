"""The plugin: registration, availability, settings, the factory, and which BLAS MLX ends up on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from exo_engine_mlx import blas, plugin
from exo_engine_mlx.engine import MlxEngine

from exo_core.components import ComponentContext
from exo_core.settings import CoreSettings


def test_registers_mlx_engine(exo_load_plugins: Callable[..., Any]) -> None:
    plugins = exo_load_plugins(("engine_mlx", plugin))
    component = plugins.registry.get("engine", "mlx")
    assert component.settings is plugin.MlxEngineSettings
    assert component.unavailable_reason() is None  # mlx[cpu] is installed here


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXO_ENGINE_MLX_REPRESENTATION", "quantized")
    monkeypatch.setenv("EXO_ENGINE_MLX_CACHE_STEP", "64")
    s = plugin.MlxEngineSettings()
    assert (s.representation, s.cache_step, s.blas) == ("quantized", 64, "auto")
    monkeypatch.setenv("EXO_ENGINE_MLX_REPRESENTATION", "int3")
    with pytest.raises(ValueError, match="representation"):
        plugin.MlxEngineSettings()


def test_factory_builds_configured_engine() -> None:
    settings = plugin.MlxEngineSettings(representation="dense", max_context=128, cache_step=16)
    engine = plugin.build(ComponentContext(core=CoreSettings(), settings=settings, node_id="n"))
    assert isinstance(engine, MlxEngine)
    assert (engine.representation_choice, engine.max_context, engine.cache_step) == ("dense", 128, 16)
    assert engine.shard() is None and engine.memory().total == 0


_PROBE = """
import json, sys
from exo_engine_mlx.runtime import import_mlx
from exo_engine_mlx import blas
assert import_mlx(sys.argv[1]) is None
r = blas.cpu_blas_report()
print(json.dumps({"library": r.library, "slow": r.slow, "gflops": r.gflops, "preloaded": blas.preloaded()}))
"""


def _probe(choice: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, choice],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bundled reference BLAS is Linux-only")
def test_bundled_blas_is_the_slow_reference_blas() -> None:
    report = _probe("bundled")
    assert report["preloaded"] is None
    # the reference BLAS cannot reach the threshold however idle the machine is
    assert report["slow"] and "reference" in report["library"], report


@pytest.mark.skipif(
    blas.find_fast_blas() is None,
    reason="no MKL (the plugin's mkl extra) and no system OpenBLAS (libopenblas0-pthread)",
)
def test_auto_blas_preloads_the_fast_blas() -> None:
    report = _probe("auto")
    expected = blas.find_fast_blas()
    assert expected is not None and report["preloaded"] == expected
    kind = "mkl" if "mkl" in Path(expected).name else "openblas"
    assert report["library"].startswith(kind) and not report["slow"], report


def test_fast_blas_prefers_mkl_then_openblas() -> None:
    mkl = blas.find_mkl()
    assert blas.find_fast_blas() == (mkl or blas.find_openblas())
    if mkl is not None:
        assert Path(mkl).is_file() and "libmkl_rt" in Path(mkl).name
    assert blas.find_fast_blas("/nonexistent/libmkl_rt.so.2") is None


def test_preload_is_refused_after_mlx_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlx.core  # noqa: F401  (already imported by the engine fixtures or the factory test)

    monkeypatch.setitem(blas._state, "preloaded", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert blas.preload_openblas() is None


def test_find_openblas_explicit_missing_path() -> None:
    assert blas.find_openblas("/nonexistent/libopenblas.so.0") is None
    assert "LD_PRELOAD=" in blas.fix_command()
