"""API keys and who a client is.

A node takes one key (``--api-key``) and/or a file of named keys (``--api-keys-file``), one client per line::

    # name   key
    alice    sk-alice-6f1c...
    laptop   sk-laptop-90ab...

Every ``/v1/`` route then needs ``Authorization: Bearer <key>`` with one of them (401 otherwise). The key's
name is the client's identity for admission (:mod:`exo_core.api.admission`: each client holds at most its
share of the node's slots), so several people sharing one node through SSH tunnels, where every connection
comes from 127.0.0.1, still get their own share. A request with the single ``--api-key``, or on a node
without keys, is the client its address names (one key shared by everyone tells no one apart).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from exo_core.api.errors import APIError
from exo_core.errors import ConfigError

log = logging.getLogger("exo_core.api")

#: The ASGI scope entry holding the name of the key a request authenticated with.
CLIENT_SCOPE_KEY = "exo.client"


def load_api_keys(path: Path) -> dict[str, str]:
    """Read a keys file (see module docstring): ``{key: name}``.

    Raises:
        ConfigError: the file cannot be read, a line is not ``name key``, or a name or key repeats.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-keys-file {path}: cannot read it: {exc}") from None
    keys: dict[str, str] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"--api-keys-file {path} line {number}"
        if len(fields) != 2:
            raise ConfigError(f"{where}: expected 'name key', got {len(fields)} field(s)")
        name, key = fields
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        if key in keys:
            raise ConfigError(f"{where}: this key is also given to {keys[key]!r}")
        keys[key] = name
        names.add(name)
    if not keys:
        raise ConfigError(f"--api-keys-file {path}: no keys in it (lines are 'name key')")
    return keys


def client_of(scope: Scope) -> str:
    """The client a request comes from: the name of its API key, else its address (``"?"`` when unknown)."""
    name = scope.get(CLIENT_SCOPE_KEY)
    if isinstance(name, str):
        return f"key:{name}"
    peer = scope.get("client")
    return f"addr:{peer[0]}" if peer else "addr:?"


class APIKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` with one of ``keys`` on ``/v1/`` routes (401 in OpenAI format
    otherwise) and records the key's name in the scope for :func:`client_of`.

    Args:
        app: the wrapped app.
        keys: accepted keys (compared in constant time), each with its client's name, or ``None`` for a key
            that names no one (the single ``--api-key``: its requests are told apart by address).
    """

    def __init__(self, app: ASGIApp, keys: Mapping[str, str | None]) -> None:
        self._app = app
        self._keys = [(key.encode(), name) for key, name in keys.items()]

    def _match(self, token: bytes) -> tuple[bool, str | None]:
        found: tuple[bool, str | None] = (False, None)
        for key, name in self._keys:  # every key is compared: the time does not tell which one was close
            if hmac.compare_digest(token, key):
                found = (True, name)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await self._app(scope, receive, send)
            return
        auth = ""
        for header, value in scope.get("headers", []):
            if header == b"authorization":
                auth = value.decode("latin-1")
                break
        scheme, _, token = auth.partition(" ")
        ok, name = (
            self._match(token.strip().encode("latin-1")) if scheme.lower() == "bearer" else (False, None)
        )
        if ok:
            await self._app(scope if name is None else {**scope, CLIENT_SCOPE_KEY: name}, receive, send)
            return
        reason = "no API key given" if not auth else "incorrect API key"
        client = scope.get("client") or ("?", 0)
        log.warning("%s %s from %s -> 401 (%s)", scope.get("method"), path, client[0], reason)
        error = APIError(
            401,
            f"{reason}: send the node's --api-key as 'Authorization: Bearer <key>'",
            code="invalid_api_key",
        )
        response = error.response(headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)
