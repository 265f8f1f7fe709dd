"""The starlette application: OpenAI routes, cluster info routes, API key check, the web chat page."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exo_core.api import formats
from exo_core.api.backend import BackendError, ChatBackend
from exo_core.api.errors import APIError, api_error_handler, http_exception_handler, internal_error_handler
from exo_core.api.keys import APIKeyMiddleware
from exo_core.api.metrics import Metrics, MetricsMiddleware, metrics_route
from exo_core.api.origin import OriginMiddleware, parse_allowed_hosts, parse_cors_origins
from exo_core.api.routes import Limits, OpenAIRoutes

log = logging.getLogger("exo_core.api")

STATIC_DIR = Path(__file__).parent / "static"

#: The page loads nothing from elsewhere and runs no inline script: rendered model output cannot run code.
_PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def create_app(
    backend: ChatBackend,
    *,
    api_key: str | None = None,
    api_keys: Mapping[str, str] | None = None,
    idle_timeout: float | None = 300.0,
    max_body_bytes: int = 8 * 1024 * 1024,
    body_timeout: float | None = 30.0,
    max_in_flight: int = 8,
    max_queued: int = 32,
    client_share: float = 0.75,
    bind_host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    cors_origins: Sequence[str] = (),
) -> Starlette:
    """Build the HTTP app: the OpenAI-compatible API over ``backend`` and the web chat page at ``/``.

    Args:
        backend: what generates tokens and knows the cluster.
        api_key: when set, every ``/v1/`` route requires ``Authorization: Bearer <api_key>`` (401 otherwise);
            ``/healthcheck`` and the page itself stay open (the page asks the user for the key).
        api_keys: more accepted keys, each with its client's name (``{key: name}``,
            :func:`exo_core.api.keys.load_api_keys`); a key's name is its client for admission.
        idle_timeout: longest wait in seconds for the backend's next event (``None``: unbounded); past
            it the request is cancelled and fails with 504.
        max_body_bytes: largest accepted request body (413 beyond).
        body_timeout: longest time in seconds a request body may take to arrive (408 beyond).
        max_in_flight: generating requests served at once (:class:`~exo_core.api.admission.Admission`).
        max_queued: requests waiting for a generation slot; beyond, 429 with ``Retry-After``.
        client_share: the fraction of those slots and queue places one client (the name of its key in
            ``api_keys``, else its address) may hold, so others always find room.
        bind_host: the address the server listens on: bound to loopback, requests must name a loopback
            host (or one of ``allowed_hosts``) in ``Host`` (:mod:`exo_core.api.origin`).
        allowed_hosts: further ``Host`` names accepted (``name`` or ``name:port``; ``*``: any), e.g. a
            reverse proxy's; when given, the Host check applies whatever the bind address.
        cors_origins: browser origins (``scheme://host[:port]``; ``*``: any) allowed to call the API
            cross-origin, with CORS; other foreign origins get 403.

    Returns:
        A starlette app; serve it with :func:`exo_core.api.serve_api`.

    Raises:
        ValueError: an entry of ``allowed_hosts`` or ``cors_origins`` is malformed.
    """
    parse_allowed_hosts(allowed_hosts)  # fail here: starlette builds its middleware at the first request
    parse_cors_origins(cors_origins)
    limits = Limits(
        idle_timeout=idle_timeout,
        max_body_bytes=max_body_bytes,
        body_timeout=body_timeout,
        max_in_flight=max_in_flight,
        max_queued=max_queued,
        client_share=client_share,
    )
    metrics = Metrics()
    openai = OpenAIRoutes(backend, limits, metrics)
    info = _InfoRoutes(backend)
    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai.completions, methods=["POST"]),
        Route("/v1/models", info.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", info.get_model, methods=["GET"]),
        Route("/v1/topology", info.topology, methods=["GET"]),
        Route("/healthcheck", info.health, methods=["GET"]),
        Route(
            "/metrics",
            metrics_route(
                metrics,
                lambda: {
                    "exo_requests_generating": openai.admission.in_flight,
                    "exo_requests_queued": openai.admission.queued,
                },
                backend.health,
            ),
            methods=["GET"],
        ),
        Route("/", _PageHeaders(_index_page), methods=["GET", "HEAD"]),
        Mount("/static", app=_PageHeaders(StaticFiles(directory=STATIC_DIR)), name="static"),
    ]
    # Origin checks and CORS preflights come before the API-key check: a preflight never carries the key.
    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics),
        Middleware(NoTrailingSlash),
        Middleware(
            OriginMiddleware, bind_host=bind_host, allowed_hosts=allowed_hosts, cors_origins=cors_origins
        ),
    ]
    keys: dict[str, str | None] = {**(api_keys or {}), **({api_key: None} if api_key else {})}
    if keys:
        middleware.append(Middleware(APIKeyMiddleware, keys=keys))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            APIError: api_error_handler,
            HTTPException: http_exception_handler,
            Exception: internal_error_handler,
        },
    )


class NoTrailingSlash:
    """Serve ``/v1/chat/completions/`` as ``/v1/chat/completions``: starlette would answer a trailing slash
    with a 307 redirect, which OpenAI clients do not follow for a POST."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                scope = {**scope, "path": path.rstrip("/") or "/"}
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


class _InfoRoutes:
    """Routes that describe the cluster (no generation)."""

    def __init__(self, backend: ChatBackend) -> None:
        self._backend = backend

    async def _call(self, what: str, fn: Any) -> Any:
        # Called on the event loop: these read the node's in-memory state, which the loop owns.
        try:
            return fn()
        except BackendError as exc:
            raise APIError.from_backend(exc) from exc
        except Exception as exc:
            log.exception("backend %s failed", what)
            raise APIError(
                500, f"backend {what} failed: {type(exc).__name__}: {exc}", code="internal_error"
            ) from exc

    async def _model_entries(self, *, everything: bool = True) -> list[dict[str, Any]]:
        models = await self._call("models()", self._backend.models)
        default = await self._call("default_model()", self._backend.default_model)
        entries = [formats.model_entry(m) for m in models if everything or m.ready]
        entries.sort(key=lambda e: e["id"] != default)  # stable: the default first, then backend order
        return entries

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: the models the cluster can serve now, the default first; with ``?all=true``
        also those that need a download first (marked ``"needs_download": true``)."""
        everything = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        return JSONResponse({"object": "list", "data": await self._model_entries(everything=everything)})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{id}``."""
        model_id = request.path_params["model_id"]
        for entry in await self._model_entries():
            if entry["id"] == model_id:
                return JSONResponse(entry)
        raise APIError(404, f"model '{model_id}' not found", code="model_not_found", param="model")

    async def topology(self, request: Request) -> Response:
        """``GET /v1/topology``: nodes, capabilities, connections, current layer plan."""
        return JSONResponse(await self._call("topology()", self._backend.topology))

    async def health(self, request: Request) -> Response:
        """``GET /healthcheck``: 200 when the backend's ``status`` is ``"ok"``, else 503."""
        try:
            body = dict(await self._call("health()", self._backend.health))
        except APIError as exc:
            body = {"status": "error", "error": exc.message}
        body.setdefault("status", "ok")
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def _index_page(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /``: the chat page."""
    await FileResponse(STATIC_DIR / "index.html", media_type="text/html")(scope, receive, send)


class _PageHeaders:
    """Adds the page's security headers to every static file response."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_PAGE_HEADERS]}
            await send(message)

        await self._app(scope, receive, send_with_headers)
