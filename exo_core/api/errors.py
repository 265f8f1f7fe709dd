"""Errors in OpenAI's JSON format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from exo_core.api.backend import BackendError

log = logging.getLogger("exo_core.api")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_error",
}


#: Names pydantic gives union branches in an error location (our field names never look like these).
_BRANCH_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


class APIError(Exception):
    """An error the API answers with, in OpenAI's format.

    Attributes:
        status: HTTP status.
        message: what went wrong and what to do.
        code: machine-readable code (``error.code``), e.g. ``"model_not_found"``.
        param: the request field at fault (``error.param``).
        headers: extra response headers (e.g. ``Retry-After`` of a 429).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    @classmethod
    def from_backend(cls, exc: BackendError) -> APIError:
        """The API error for a :class:`BackendError` (a 503 says when to retry: ``Retry-After: 1``)."""
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return cls(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)

    @property
    def type(self) -> str:
        """OpenAI's ``error.type``: ``invalid_request_error`` for 4xx, ``server_error`` for 5xx."""
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The HTTP response (with :attr:`headers`, then ``headers``)."""
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def validation_error(exc: ValidationError) -> APIError:
    """A 400 naming the first invalid field, e.g. ``messages[0].role: Input should be 'system', ...``."""
    errors = exc.errors(include_url=False)
    # For a union (content: str | list of parts) pydantic reports every branch; the deepest error is the
    # one that says what is wrong inside the value the client meant.
    first = max(errors, key=lambda e: len(_dotted(e.get("loc", ()))))
    param = _dotted(first.get("loc", ()))
    cause = (first.get("ctx") or {}).get("error")
    blamed = getattr(cause, "param", None)  # a check across fields names the one at fault
    if isinstance(blamed, str) and not param:
        param = blamed
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "field required"
    text = f"{param}: {message}" if param else message
    others = {_dotted(e.get("loc", ())) for e in errors} - {param}
    if others:
        text += f" (also invalid: {', '.join(sorted(o or '(body)' for o in others))})"
    return APIError(400, text, param=param or None)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "role")`` -> ``"messages[0].role"`` (union-branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _BRANCH_NAMES or "[" in part or "-" in part:
            continue  # pydantic names the union branch it tried; not a field name
        else:
            out += f".{part}" if out else part
    return out


async def api_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette handler for :class:`APIError`: logs the bad input and answers in OpenAI format."""
    assert isinstance(exc, APIError)
    level = logging.WARNING if exc.status < 500 else logging.ERROR
    log.log(level, "%s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
    return exc.response()


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown path, wrong method) in OpenAI format."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (
            f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
        )
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, message)
    return APIError(exc.status_code, message).response(headers=dict(exc.headers or {}))


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    """Any other exception: a 500 in OpenAI format (the traceback goes to the log)."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error").response()
