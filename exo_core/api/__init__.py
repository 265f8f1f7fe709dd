"""The OpenAI-compatible HTTP API and the web chat page.

Public API::

    from exo_core.api import create_app, serve_api, ChatBackend
    app = create_app(backend, api_key=None)
    port = await task_group.start(serve_api, app, "0.0.0.0", 52415)

The backend protocol (:class:`ChatBackend` and its events) lives in :mod:`exo_core.api.backend`.
"""

from __future__ import annotations

from exo_core.api.app import create_app
from exo_core.api.backend import (
    BackendError,
    BackendEvent,
    ChatBackend,
    Finished,
    FinishReason,
    ModelInfo,
    Progress,
    Started,
    TokenEvent,
    TopologyReport,
)
from exo_core.api.server import serve_api
from exo_core.params import SamplingParams

__all__ = [
    "BackendError",
    "BackendEvent",
    "ChatBackend",
    "FinishReason",
    "Finished",
    "ModelInfo",
    "Progress",
    "SamplingParams",
    "Started",
    "TokenEvent",
    "TopologyReport",
    "create_app",
    "serve_api",
]
