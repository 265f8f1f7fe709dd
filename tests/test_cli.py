from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from exo_core.cli import build_cli, main
from exo_core.components import RegisterComponent
from exo_core.errors import ConfigError
from exo_core.hookspecs import hookimpl
from exo_core.plugins import load_plugins

EXO = [sys.executable, "-m", "exo_core.cli"]
SEED_FLAGS = [
    ("--discovery-module", "EXO_DISCOVERY_MODULE", "udp"),
    ("--node-port", "EXO_NODE_PORT", "50051"),
    ("--node-host", "EXO_NODE_HOST", "0.0.0.0"),
    ("--chatgpt-api-port", "EXO_CHATGPT_API_PORT", "52415"),
    ("--node-id", "EXO_NODE_ID", "none"),
    ("--inference-engine", "EXO_INFERENCE_ENGINE", "auto"),
    ("--default-model", "EXO_DEFAULT_MODEL", "smollm2-135m"),
    ("--cluster-key", "EXO_CLUSTER_KEY", "none"),
    ("--log-level", "EXO_LOG_LEVEL", "INFO"),
    ("--compute-slots", "EXO_COMPUTE_SLOTS", "0"),
]


def _run(
    args: list[str], env: dict[str, str] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EXO_")}
    if tmp is not None:
        full_env["EXO_CONFIG_DIR"] = str(tmp)
    full_env.update(env or {})
    return subprocess.run(
        [*EXO, *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def test_help_lists_every_flag_with_env_and_default() -> None:
    out = _run(["--help"], env={"COLUMNS": "400"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for flag, env, default in SEED_FLAGS:
        start = text.index(f" {flag} ", text.index("node:"))
        line = text[start : text.index("]", start)]
        assert f"env {env}" in line, (flag, line)
        assert f"default {default}" in line, (flag, line)
    # flags contributed by plugins are there too, with their own env prefix
    assert "--discovery-config-path" in out.stdout and "EXO_DISCOVERY_MANUAL_" in out.stdout
    assert "--peer-host" in out.stdout and "--peer-port" in out.stdout


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = build_cli(load_plugins())
    monkeypatch.delenv("EXO_NODE_PORT", raising=False)
    assert cli.core_settings(cli.parser.parse_args([])).node_port == 50051
    monkeypatch.setenv("EXO_NODE_PORT", "50099")
    assert cli.core_settings(cli.parser.parse_args([])).node_port == 50099
    assert cli.core_settings(cli.parser.parse_args(["--node-port", "50098"])).node_port == 50098


def test_flag_env_order_through_the_real_command(tmp_path: Path) -> None:
    def port(args: list[str], env: dict[str, str]) -> str:
        out = _run(["capabilities", *args], env=env, tmp=tmp_path)
        assert out.returncode == 0, out.stderr
        (entry,) = json.loads(out.stdout)["peers"].values()
        return str(entry["address"]).rsplit(":", 1)[1]

    assert port([], {}) == "50051"
    assert port([], {"EXO_NODE_PORT": "50099"}) == "50099"
    assert port(["--node-port", "50098"], {"EXO_NODE_PORT": "50099"}) == "50098"


def test_invalid_value_names_flag_and_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXO_NODE_PORT", raising=False)
    assert main(["--node-port", "99999999", "capabilities"]) == 2
    err = capsys.readouterr().err
    assert "--node-port / EXO_NODE_PORT=" in err and "less than or equal to 65535" in err


def test_plugins_json_lists_first_party_and_builtins(tmp_path: Path) -> None:
    out = _run(["plugins"], tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    entries = {e["name"]: e for e in json.loads(out.stdout)}
    for name, dist in [
        ("discovery_manual", "exo-discovery-manual"),
        ("discovery_udp", "exo-discovery-udp"),
        ("discovery_tcp", "exo-discovery-tcp"),
        ("engine_numpy", "exo-engine-numpy"),
        ("engine_mlx", "exo-engine-mlx"),
    ]:
        assert entries[name]["distribution"] == dist
        assert entries[name]["version"]
        assert entries[name]["hooks"]
    assert entries["tcp_transport"]["builtin"] is True
    assert entries["tcp_transport"]["components"] == {"transport": ["tcp"]}
    assert entries["ring_partitioner"]["components"] == {"partitioner": ["ring-memory-weighted"]}
    assert set(entries["discovery_manual"]["components"]["discovery"]) == {"manual", "direct"}


def test_unknown_discovery_module(tmp_path: Path) -> None:
    out = _run(["--discovery-module", "nosuch"], tmp=tmp_path)
    assert out.returncode != 0
    assert "no discovery module 'nosuch' (installed: " in out.stderr
    for name in ("manual", "direct", "udp", "tcp"):
        assert name in out.stderr.split("installed: ", 1)[1]


def test_blocked_plugin_makes_module_unknown(tmp_path: Path) -> None:
    out = _run(["-p", "no:discovery_udp", "--discovery-module", "udp"], tmp=tmp_path)
    assert out.returncode == 2
    assert "no discovery module 'udp'" in out.stderr
    # it is installed, only blocked: the hint says so instead of asking to install it
    assert "exo-discovery-udp is installed" in out.stderr and "-p no:discovery_udp" in out.stderr
    assert "install exo-discovery-udp" not in out.stderr


def test_version_lists_plugins(tmp_path: Path) -> None:
    out = _run(["version"], tmp=tmp_path)
    assert out.returncode == 0
    assert out.stdout.splitlines()[0].startswith("exo-core ")
    assert "exo-engine-numpy " in out.stdout


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXO_TESTPLUG_")
    cli_prefix: ClassVar[str] = "testplug-"
    depth: int = Field(3, description="how deep")
    names: list[str] = Field(default_factory=list, description="some names")
    fast: bool = Field(False, description="go fast")


def _plugin_with_settings() -> types.ModuleType:
    @hookimpl
    def exo_register_discovery(register: RegisterComponent) -> None:
        register("testplug", lambda ctx: ctx.settings, settings=_Settings)

    mod = types.ModuleType("testplug")
    mod.exo_register_discovery = exo_register_discovery  # type: ignore[attr-defined]
    return mod


def test_plugin_settings_surface_as_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = build_cli(load_plugins(extra=[("testplug", _plugin_with_settings())]))
    help_text = cli.parser.format_help()
    assert "--testplug-depth" in help_text and "EXO_TESTPLUG_DEPTH" in help_text
    monkeypatch.setenv("EXO_TESTPLUG_DEPTH", "7")
    ns = cli.parser.parse_args(
        ["--discovery-module", "testplug", "--testplug-names", "a, b", "--testplug-fast"]
    )
    core = cli.core_settings(ns)
    component = cli.selected(core, "discovery")
    settings = component.build(cli.component_context(ns, core, component))
    assert (settings.depth, settings.names, settings.fast) == (7, ["a", "b"], True)
    ns = cli.parser.parse_args(["--testplug-depth", "9"])
    settings = component.build(cli.component_context(ns, core, component))
    assert settings.depth == 9
    with pytest.raises(ConfigError, match="--testplug-depth / EXO_TESTPLUG_DEPTH='x'"):
        component.build(
            cli.component_context(cli.parser.parse_args(["--testplug-depth", "x"]), core, component)
        )


class _Named(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXO_NAMED_")
    cli_prefix: ClassVar[str] = "named-"
    port: int = Field(1, description="a port")
    targets: str = Field("", description="targets", json_schema_extra={"cli_flag": "--discovery-targets"})


def test_field_can_name_its_own_flag() -> None:
    from exo_core.settings import cli_flag_name, env_var_name

    assert cli_flag_name(_Named, "port") == "--named-port"
    assert cli_flag_name(_Named, "targets") == "--discovery-targets"
    assert env_var_name(_Named, "targets") == "EXO_NAMED_TARGETS"


@pytest.mark.parametrize(
    ("args", "env", "debug"),
    [
        ([], {"EXO_LOG_LEVEL": "DEBUG"}, True),
        (["--log-level", "DEBUG"], {}, True),
        (["--log-level", "INFO"], {"EXO_LOG_LEVEL": "DEBUG"}, False),  # the flag wins
        ([], {}, False),
    ],
)
def test_log_level_comes_from_flag_then_env(args: list[str], env: dict[str, str], debug: bool) -> None:
    """A real command's logging (asyncio logs its selector at DEBUG when ``exo ping`` starts its loop)."""
    out = _run(["ping", "127.0.0.1:1", *args], env=env)
    assert out.returncode != 0 and "connection refused" in out.stderr
    assert ("DEBUG asyncio" in out.stderr) is debug, out.stderr


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`exo ... | head`: the reader going away is no traceback, just the exit status of SIGPIPE."""
    env = {**os.environ, "EXO_CONFIG_DIR": str(tmp_path)}
    proc = subprocess.Popen([*EXO, "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    proc.stdout.close()  # before the command writes: its first write fails with EPIPE
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 141


@pytest.mark.parametrize("which", ["--node-port", "--chatgpt-api-port"])
def test_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path, which: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        peers = tmp_path / "peers.json"
        peers.write_text('{"peers": {}}')
        args = ["--discovery-module", "manual", "--discovery-config-path", str(peers)]
        args += ["--node-host", "127.0.0.1", "--chatgpt-api-host", "127.0.0.1"]
        other = "--chatgpt-api-port" if which == "--node-port" else "--node-port"
        proc = _run([*args, which, port, other, "0"], tmp=tmp_path)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("exo: error:")]
    assert len(errors) == 1 and which in errors[0] and port in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_peers_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    args = ["--discovery-module", "manual", "--discovery-config-path", str(tmp_path / "nope.json")]
    args += ["--node-host", "127.0.0.1", "--node-port", "0", "--chatgpt-api-host", "127.0.0.1"]
    proc = _run([*args, "--chatgpt-api-port", "0"], tmp=tmp_path)
    assert proc.returncode == 2
    assert "exo: error:" in proc.stderr and "nope.json" in proc.stderr and "Traceback" not in proc.stderr


def test_capabilities_prints_an_address_a_peer_can_dial(tmp_path: Path) -> None:
    def entry(args: list[str]) -> tuple[str, str]:
        out = _run(["capabilities", *args], env={}, tmp=tmp_path)
        assert out.returncode == 0, out.stderr
        (peer,) = json.loads(out.stdout)["peers"].values()
        return str(peer["address"]), out.stderr

    address, note = entry([])  # listening on every interface: one of this machine's addresses, never 0.0.0.0
    assert not address.startswith("0.0.0.0") and address.endswith(":50051")
    assert "exo: note:" in note and "--transport-advertise-address" in note
    assert entry(["--node-host", "127.0.0.1", "--node-port", "6001"]) == ("127.0.0.1:6001", "")
    assert entry(["--transport-advertise-address", "vm.example.com:6000"]) == ("vm.example.com:6000", "")


def test_device_overrides_are_flags_with_their_old_variables(tmp_path: Path) -> None:
    def caps(args: list[str], env: dict[str, str]) -> dict[str, object]:
        out = _run(["capabilities", "--node-host", "127.0.0.1", *args], env=env, tmp=tmp_path)
        assert out.returncode == 0, out.stderr
        (peer,) = json.loads(out.stdout)["peers"].values()
        result: dict[str, object] = peer["device_capabilities"]
        return result

    got = caps(["--device-memory-mb", "4096", "--device-chip", "M9", "--device-flops-int8", "2.5"], {})
    assert got["memory"] == 4096 and got["chip"] == "M9" and got["flops"]["int8"] == 2.5  # type: ignore[index]
    assert caps([], {"EXO_DEVICE_MEMORY_MB": "2048"})["memory"] == 2048
    assert caps(["--device-memory-mb", "1024"], {"EXO_DEVICE_MEMORY_MB": "2048"})["memory"] == 1024
    bad = _run(["capabilities", "--device-memory-mb", "-1"], tmp=tmp_path)
    assert bad.returncode == 2 and "--device-memory-mb / EXO_DEVICE_MEMORY_MB" in bad.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_log_format_json_is_one_object_per_line(tmp_path: Path, how: str) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text("{bad")
    args = ["--discovery-module", "manual", "--discovery-config-path", str(peers), "--log-level", "DEBUG"]
    args += ["--node-host", "127.0.0.1", "--node-port", "0", "--chatgpt-api-host", "127.0.0.1"]
    args += ["--chatgpt-api-port", "0"]
    env = {"EXO_LOG_FORMAT": "json"} if how == "env" else {}
    out = _run([*args, *(["--log-format", "json"] if how == "flag" else [])], env=env, tmp=tmp_path)
    assert out.returncode == 2
    *logs, error = out.stderr.strip().splitlines()
    assert error.startswith("exo: error: ") and logs
    records = [json.loads(line) for line in logs]
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    assert any(r["logger"] == "exo_core.transport" and "listening" in r["message"] for r in records)
