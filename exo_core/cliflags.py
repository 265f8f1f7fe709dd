"""Turning pydantic-settings models into argparse flags, and flags back into settings.

Every field of a settings model becomes ``--<cli_prefix><field>`` (kebab-case) with its environment
variable and default in the help text. Flags default to ``argparse.SUPPRESS``, so only the flags a user
typed reach the model, as init arguments: pydantic-settings then ranks them above environment variables,
which rank above defaults (flag > env > default).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from exo_core.errors import ConfigError
from exo_core.settings import cli_flag_name, env_var_name

S = TypeVar("S", bound=BaseSettings)


@dataclass(frozen=True)
class Flag:
    """One CLI flag bound to one settings field."""

    flag: str
    dest: str
    settings_cls: type[BaseSettings]
    field: str
    owner: str


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(_unwrap_optional(annotation)) in (list, tuple, set, frozenset)


def _default_text(settings_cls: type[BaseSettings], name: str) -> str:
    info = settings_cls.model_fields[name]
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except Exception:
            return "computed at start"
    else:
        value = info.default
    if value is None:
        return "none"
    if isinstance(value, SecretStr):
        return "set"
    if isinstance(value, Path):
        home = str(Path.home())
        text = str(value)
        return "~" + text[len(home) :] if text.startswith(home) else text
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings_cls: type[BaseSettings],
    *,
    owner: str,
    taken: dict[str, str],
) -> list[Flag]:
    """Add one flag per field of ``settings_cls``; ``taken`` maps flags already used to their owner."""
    flags: list[Flag] = []
    for name, info in settings_cls.model_fields.items():
        flag = cli_flag_name(settings_cls, name)
        if flag in taken:
            raise ConfigError(f"flag {flag} is defined twice: by {taken[flag]} and by {owner}")
        taken[flag] = owner
        dest = f"{owner}.{name}"
        env = env_var_name(settings_cls, name)
        desc = (info.description or name.replace("_", " ")).replace("%", "%%")
        help_text = f"{desc} [env {env}; default {_default_text(settings_cls, name)}]".replace("%%%%", "%%")
        annotation = _unwrap_optional(info.annotation)
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
            kwargs["metavar"] = "{" + ",".join(kwargs["choices"]) + "}"
        else:
            kwargs["metavar"] = "LIST" if _is_list(info.annotation) else name.split("_")[-1].upper()
        parser.add_argument(flag, **kwargs)
        flags.append(Flag(flag, dest, settings_cls, name, owner))
    return flags


def given_values(
    namespace: argparse.Namespace, flags: list[Flag], settings_cls: type[BaseSettings]
) -> dict[str, Any]:
    """The field values the user typed on the command line for ``settings_cls``."""
    values: dict[str, Any] = {}
    for f in flags:
        if f.settings_cls is not settings_cls or not hasattr(namespace, f.dest):
            continue
        value = getattr(namespace, f.dest)
        if isinstance(value, str) and _is_list(settings_cls.model_fields[f.field].annotation):
            value = [part.strip() for part in value.split(",") if part.strip()]
        values[f.field] = value
    return values


def build_settings(settings_cls: type[S], values: dict[str, Any]) -> S:
    """Instantiate a settings model from typed flags (then env, then defaults), with errors naming the
    flag and the environment variable of each invalid field."""
    try:
        return settings_cls(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            name = str(loc[0])
            if name in settings_cls.model_fields:
                where = f"{cli_flag_name(settings_cls, name)} / {env_var_name(settings_cls, name)}"
            else:
                where = name
            value = values.get(name, err.get("input"))
            problems.append(f"{where}={value!r}: {err.get('msg')}")
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
