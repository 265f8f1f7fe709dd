"""Reading and checking request bodies: size limit, JSON, schema, model name."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from exo_core.api.backend import BackendError, ChatBackend
from exo_core.api.errors import APIError, validation_error

M = TypeVar("M", bound=BaseModel)

#: a JSON escape of a UTF-16 surrogate (``\\ud800``-``\\udfff``)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json_object(
    request: Request, max_bytes: int, body_timeout: float | None = None
) -> dict[str, Any]:
    """The request body as a JSON object (any content type: ``curl -d`` sends form encoding).

    Args:
        request: the request.
        max_bytes: largest accepted body.
        body_timeout: seconds the whole body may take to arrive (``None``: unbounded).

    Raises:
        APIError: 413 when the body exceeds ``max_bytes``; 408 when it takes longer than ``body_timeout``;
            400 when it is not a JSON object.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise APIError(
            413,
            f"request body of {declared} bytes is larger than {max_bytes} bytes",
            code="request_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(body_timeout) as scope:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise APIError(413, f"request body larger than {max_bytes} bytes", code="request_too_large")
            chunks.append(chunk)
    if scope.cancelled_caught:
        raise APIError(
            408,
            f"the request body did not arrive within {body_timeout:g} s ({size} bytes came)",
            code="timeout",
        )
    raw = b"".join(chunks)
    if not raw.strip():
        raise APIError(400, "empty request body: send a JSON object")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"could not parse the JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "could not parse the JSON body: nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    # a surrogate can only come from a JSON escape (valid UTF-8 holds none), so the scan of the parsed body
    # for a lone one (no text: it can be neither encoded nor tokenized) runs only when the raw bytes hold one
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise APIError(
                400,
                f"the JSON body holds a lone surrogate ({exc.reason}): not valid text",
                code="invalid_json",
            ) from None
        except RecursionError:
            raise APIError(
                400, "could not parse the JSON body: nested too deeply", code="invalid_json"
            ) from None
    return body


def validate(model: type[M], body: dict[str, Any]) -> M:
    """``body`` validated against ``model``; a 400 naming the bad field otherwise."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def resolve_model(backend: ChatBackend, requested: str | None) -> str:
    """The model to use: the requested one if the backend knows it, the default when none was named.

    Raises:
        APIError: 404 ``model_not_found`` listing the known models.
    """
    try:
        known = [m.id for m in backend.models()]
        name = requested or backend.default_model()
    except BackendError as exc:
        raise APIError.from_backend(exc) from exc
    if name not in known:
        listing = ", ".join(known) or "none"
        raise APIError(
            404,
            f"model '{name}' not found; available: {listing} (GET /v1/models lists them)",
            code="model_not_found",
            param="model",
        )
    return name
