"""Core settings (env prefix ``EXO_``) and this node's persistent id.

Every field is a CLI flag (``--node-port``) and an environment variable (``EXO_NODE_PORT``); a flag wins
over the environment, which wins over the default. Plugins bring their own settings models
(see :mod:`exo_core.components`), surfaced the same way.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def default_config_dir() -> Path:
    """The user's config dir for exo: ``$XDG_CONFIG_HOME/exo`` (``~/.config/exo``), or
    ``~/Library/Application Support/exo`` on macOS, ``%APPDATA%\\exo`` on Windows."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "exo"
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "exo"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "exo"


class CoreSettings(BaseSettings):
    """Settings of the exo core."""

    model_config = SettingsConfigDict(env_prefix="EXO_", extra="ignore", validate_default=True)
    cli_prefix: ClassVar[str] = ""

    node_id: str | None = Field(
        None, description="this node's id; default: a UUID created once and kept in the config dir"
    )
    node_host: str = Field("0.0.0.0", description="address the node (transport) listens on")
    node_port: int = Field(
        50051, ge=0, le=65535, description="port the node (transport) listens on (0: any free port)"
    )
    chatgpt_api_host: str = Field(
        "0.0.0.0", description="address the OpenAI-compatible API and web page bind"
    )
    chatgpt_api_port: int = Field(
        52415,
        ge=0,
        le=65535,
        description="port of the OpenAI-compatible API and web chat page (0: any free port)",
    )
    discovery_module: str = Field(
        "udp", description="how peers are found: manual, direct, udp, tcp, or a plugin's"
    )
    transport: str = Field("tcp", description="how nodes talk to each other")
    partitioner: str = Field("ring-memory-weighted", description="how layers are split between nodes")
    inference_engine: str = Field(
        "auto", description="numpy, mlx, a plugin's, or auto (fastest available here)"
    )
    default_model: str = Field("smollm2-135m", description="model served when a request names none")
    model_path: Path | None = Field(
        None,
        description="a .gguf file or Hugging Face folder to serve, under the id of its file or folder name "
        "(it then becomes the default model); every node of the cluster needs the same file",
    )
    api_key: SecretStr | None = Field(
        None, description="require 'Authorization: Bearer KEY' on the API's /v1/ routes"
    )
    api_keys_file: Path | None = Field(
        None,
        description="a file of API keys, one 'name key' per line (# comments): any of them opens the /v1/ "
        "routes, and each name is a client with its own share of the API's slots (--api-client-share)",
    )
    api_allowed_hosts: str = Field(
        "",
        description="Host names the API answers to besides loopback ones, comma-separated (name or "
        "name:port; * for any), e.g. a reverse proxy's; bound to loopback, other Hosts get 403",
    )
    api_cors_origins: str = Field(
        "",
        description="browser origins allowed to call the API from their pages, comma-separated "
        "(scheme://host[:port]; * for any); requests from other foreign origins get 403",
    )
    api_max_in_flight: int = Field(
        8, ge=1, description="chat/completion requests this node's API serves at once (more wait in a queue)"
    )
    api_max_queued: int = Field(
        32, ge=0, description="requests waiting for an API slot; beyond, 429 with Retry-After"
    )
    api_client_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="the share of --api-max-in-flight and --api-max-queued one client may hold (a client is "
        "its key's name in --api-keys-file, else its address), so one client's flood leaves room for the "
        "others; 1: no limit",
    )
    api_max_connections: int = Field(
        512,
        ge=1,
        description="open HTTP connections at most; beyond, the oldest one that has waited over 1 s for its "
        "request is closed (else the new one gets 503)",
    )
    api_header_timeout: float = Field(
        10.0, gt=0, description="seconds an HTTP client gets to send a request's headers"
    )
    api_body_timeout: float = Field(30.0, gt=0, description="seconds an HTTP request body may take to arrive")
    compute_slots: int = Field(
        0,
        ge=0,
        description="forward passes this node runs at once (0: CPU cores / BLAS threads); several nodes on "
        "one machine: give each cores/nodes",
    )
    prefill_chunk: int = Field(
        512,
        ge=1,
        description="prompts longer than this many tokens are processed in chunks of it: other requests run "
        "between chunks, and a cancelled request stops at the next one",
    )
    request_timeout: float = Field(
        120.0,
        gt=0,
        description="seconds a request waits for its first token without progress (loading the model, or "
        "between two chunks of a long prompt)",
    )
    token_timeout: float = Field(30.0, gt=0, description="seconds a request waits for each later token")
    drain_timeout: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM/SIGINT: seconds in-flight requests get to finish while new ones get 503 and "
        "peers move their requests elsewhere (a second signal stops at once)",
    )
    failover_retries: int = Field(
        2,
        ge=0,
        description="times a request moves to a new plan when a node of its plan is lost, resuming where "
        "it was (0: fail at once)",
    )
    device_model: str | None = Field(
        None, description="this device's model as peers see it (default: detected, e.g. 'Linux x86_64')"
    )
    device_chip: str | None = Field(
        None, description="this device's chip as peers see it (default: detected)"
    )
    device_memory_mb: int | None = Field(
        None,
        ge=0,
        description="memory this node reports, in MB (default: detected); the plan gives each node layers in "
        "proportion to it, so a smaller figure lends the cluster only part of a shared machine",
    )
    device_flops_fp32: float | None = Field(
        None, ge=0, description="reported fp32 TFLOPS (default: estimated)"
    )
    device_flops_fp16: float | None = Field(
        None, ge=0, description="reported fp16 TFLOPS (default: estimated)"
    )
    device_flops_int8: float | None = Field(
        None, ge=0, description="reported int8 TFLOPS (default: estimated)"
    )
    cluster_key: SecretStr | None = Field(
        None, description="shared secret: peers must prove they know it (HMAC challenge-response)"
    )
    config_dir: Path = Field(
        default_factory=default_config_dir, description="where the persistent node id is kept"
    )
    log_level: LogLevel = Field("INFO", description="logging verbosity")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object per line (time, level, logger, message)"
    )

    @field_validator("api_allowed_hosts", "api_cors_origins")
    @classmethod
    def _check_origin_lists(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():  # import the API only when it is configured: `exo --help` stays quick
            from exo_core.api import origin

            entries = origin.split_list(value)
            if info.field_name == "api_allowed_hosts":
                origin.parse_allowed_hosts(entries)
            else:
                origin.parse_cors_origins(entries)
        return value

    def device_overrides(self) -> dict[str, str]:
        """The ``--device-*`` settings that are set, as the ``EXO_DEVICE_*`` mapping
        :func:`exo_core.topology.device.device_capabilities` applies."""
        values = {
            "EXO_DEVICE_MODEL": self.device_model,
            "EXO_DEVICE_CHIP": self.device_chip,
            "EXO_DEVICE_MEMORY_MB": self.device_memory_mb,
            "EXO_DEVICE_FLOPS_FP32": self.device_flops_fp32,
            "EXO_DEVICE_FLOPS_FP16": self.device_flops_fp16,
            "EXO_DEVICE_FLOPS_INT8": self.device_flops_int8,
        }
        return {k: str(v) for k, v in values.items() if v is not None}

    def cluster_key_text(self) -> str | None:
        """The cluster key as plain text, or ``None`` when no key is set."""
        return self.cluster_key.get_secret_value() if self.cluster_key is not None else None

    def resolve_node_id(self) -> str:
        """``--node-id`` if given, else the UUID kept in ``config_dir/node_id`` (created on first use)."""
        if self.node_id:
            return self.node_id
        return persistent_node_id(self.config_dir)


def persistent_node_id(config_dir: Path) -> str:
    """Read this machine's node id from ``config_dir/node_id``, creating it (a UUID4) the first time."""
    path = config_dir / "node_id"
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    node_id = str(uuid.uuid4())
    config_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: two nodes starting at once never see a half-written id
    return path.read_text(encoding="utf-8").strip()


def env_var_name(settings_cls: type[BaseSettings], field_name: str) -> str:
    """The environment variable a settings field is read from (its own, when the field names one with
    ``Field(..., json_schema_extra={"env_var": "NAME"})`` and reads it through a ``validation_alias``)."""
    info = settings_cls.model_fields.get(field_name)
    extra = info.json_schema_extra if info is not None else None
    if isinstance(extra, dict) and isinstance(extra.get("env_var"), str):
        return str(extra["env_var"])
    prefix = str(settings_cls.model_config.get("env_prefix") or "")
    return (prefix + field_name).upper()


def cli_flag_name(settings_cls: type[BaseSettings], field_name: str) -> str:
    """The CLI flag of a settings field: ``--`` + the model's ``cli_prefix`` + the field name, kebab-case,
    unless the field names its own flag with ``Field(..., json_schema_extra={"cli_flag": "--name"})``."""
    info = settings_cls.model_fields.get(field_name)
    extra = info.json_schema_extra if info is not None else None
    if isinstance(extra, dict) and isinstance(extra.get("cli_flag"), str):
        return str(extra["cli_flag"])
    prefix = str(getattr(settings_cls, "cli_prefix", "") or "")
    return "--" + (prefix + field_name).replace("_", "-")
