"""Origin safety: which ``Host``, which browser ``Origin`` and which POST bodies the API accepts.

A web page on another site can make the user's browser send requests to a node on ``localhost``: directly
(cross-site requests) or through a name it controls that resolves to 127.0.0.1 (DNS rebinding). Three rules,
applied by :class:`OriginMiddleware` before the API-key check:

1. **Host**: when the API is bound to a loopback address (127.0.0.0/8, ``::1``, ``localhost``), a request
   whose ``Host`` is neither a loopback name or address (``localhost``, ``*.localhost``, 127.x.y.z,
   ``[::1]``; any port) nor listed in ``--api-allowed-hosts`` is refused with 403. Bound to any other
   address, the check applies only when hosts are listed (loopback names are then still accepted). A request
   without a ``Host`` header (HTTP/1.0; browsers always send one) passes.
2. **Origin and CORS**: on the API routes (everything but the page at ``/`` and ``/static/``), a request
   with an ``Origin`` header that is neither the node's own origin (the request's scheme and ``Host``) nor
   listed in ``--api-cors-origins`` (``*``: any) is refused with 403. Listed origins get CORS: preflights
   (``OPTIONS`` with ``Access-Control-Request-Method``) are answered here, so they never need the API key,
   and every response (streams and errors included) carries ``Access-Control-Allow-Origin``, the origin
   echoed.
3. **Content type**: a POST from a browser (it carries ``Origin`` or ``Sec-Fetch-*`` headers) must be
   ``application/json``, else 415: browsers send JSON cross-site only after a preflight, so no page can slip
   a "simple" ``text/plain`` or form POST past rule 2. Clients that are not browsers (curl, SDKs) may send
   any content type; the body is parsed as JSON all the same.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exo_core.api.errors import APIError

log = logging.getLogger("exo_core.api")

#: How long a browser may cache a preflight answer (seconds; Chromium caps it at 7200).
PREFLIGHT_MAX_AGE = 600
ALLOWED_METHODS = "GET, POST, OPTIONS"
#: Request headers every listed origin may send; a preflight's own list is allowed on top of these.
ALLOWED_HEADERS = ("authorization", "content-type")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


def split_list(value: str) -> list[str]:
    """Split a comma-separated setting (``"a.example, b.example"``) into its non-empty entries."""
    return [part.strip() for part in value.split(",") if part.strip()]


def split_host(value: str) -> tuple[str, int | None] | None:
    """Split a ``Host`` value into a lower-case name or address and a port: ``"[::1]:80"`` ->
    ``("::1", 80)``, ``"Example.COM."`` -> ``("example.com", None)``; ``None`` when it is malformed."""
    value = value.strip().lower()
    port_text = ""
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
        if not _is_ip(name) or ":" not in name:
            return None
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    else:
        name = value  # a name, an IPv4 address, or a bare IPv6 address (no port possible then)
        if ":" in name and not _is_ip(name):
            return None
    if port_text or value.endswith(":"):
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
    name = name.removesuffix(".")
    if not name or not (_HOST_NAME.match(name) or _is_ip(name)):
        return None
    return name, int(port_text) if port_text else None


def is_loopback(name: str) -> bool:
    """Whether a host name or address (no port) always means this machine: ``localhost``, ``*.localhost``
    (browsers never ask DNS for those), 127.0.0.0/8, ``::1`` and ``::ffff:127.x.y.z``."""
    name = name.strip().lower().removesuffix(".").removeprefix("[").removesuffix("]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[tuple[str, int | None], ...]:
    """Check and normalize ``--api-allowed-hosts`` entries: ``name``, ``name:port``, an address, or ``*``
    (any host: the check is off).

    Raises:
        ValueError: an entry is not a host name (a URL, a path, bad characters), naming it.
    """
    out: list[tuple[str, int | None]] = []
    for entry in entries:
        if entry == "*":
            out.append(("*", None))
            continue
        parsed = split_host(entry)
        if parsed is None:
            raise ValueError(
                f"{entry!r} is not a host name: list names as clients write them in the URL, "
                "e.g. exo.example.com or exo.example.com:8443 (no scheme, no path)"
            )
        out.append(parsed)
    return tuple(out)


def normalize_origin(value: str) -> str | None:
    """An ``Origin`` (``scheme://host[:port]``) in canonical form: lower case, no default port, no
    trailing slash; ``None`` when it is not one (a path, credentials, ``null``)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not _SCHEME.match(scheme) or parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    name = parts.hostname.removesuffix(".")  # lower case, without the brackets of an IPv6 address
    if not (_HOST_NAME.match(name) or _is_ip(name)):
        return None
    name = f"[{name}]" if ":" in name else name
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{name}"
    return f"{scheme}://{name}:{port}"


def parse_cors_origins(entries: Iterable[str]) -> tuple[str, ...]:
    """Check and normalize ``--api-cors-origins`` entries: ``scheme://host[:port]`` or ``*`` (any origin).

    Raises:
        ValueError: an entry is not an origin, naming it.
    """
    out: list[str] = []
    for entry in entries:
        if entry == "*":
            out.append(entry)
            continue
        if entry.strip().lower() == "null":
            raise ValueError(
                "'null' is the origin of sandboxed pages and local files of every site; "
                "list '*' if you mean any origin"
            )
        origin = normalize_origin(entry)
        if origin is None:
            raise ValueError(
                f"{entry!r} is not an origin: write scheme://host[:port] as the browser shows it, "
                "e.g. http://localhost:3000 (no path)"
            )
        out.append(origin)
    return tuple(out)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_page(path: str) -> bool:
    return path == "/" or path == "/static" or path.startswith("/static/")


class OriginMiddleware:
    """Applies the Host, Origin/CORS and content-type rules of this module; refusals are answered in
    OpenAI's error format, with one log line each.

    Args:
        app: the wrapped app (the API-key check and the routes).
        bind_host: the address the API listens on; on a loopback address the Host check is always on.
        allowed_hosts: ``--api-allowed-hosts`` entries (see :func:`parse_allowed_hosts`).
        cors_origins: ``--api-cors-origins`` entries (see :func:`parse_cors_origins`).

    Raises:
        ValueError: an entry of ``allowed_hosts`` or ``cors_origins`` is malformed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        bind_host: str,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
    ) -> None:
        self._app = app
        hosts = parse_allowed_hosts(allowed_hosts)
        origins = parse_cors_origins(cors_origins)
        self._bind_host = bind_host
        self._check_host = ("*", None) not in hosts and (bool(hosts) or is_loopback(bind_host))
        self._hosts = frozenset(hosts)
        self._any_origin = "*" in origins
        self._origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host")
        if self._check_host and host is not None and not self._host_allowed(host):
            await self._refuse(
                scope,
                receive,
                send,
                APIError(
                    403,
                    f"Host {host!r} is not allowed: this API (bound to {self._bind_host}) answers to "
                    "loopback names and to the names listed with --api-allowed-hosts "
                    "(EXO_API_ALLOWED_HOSTS), e.g. a reverse proxy's",
                    code="host_not_allowed",
                ),
            )
            return
        if _is_page(scope["path"]):
            await self._app(scope, receive, send)
            return
        origin = headers.get("origin")
        cors: str | None = None
        if origin is not None and not self._same_origin(origin, scope, host):
            cors = self._listed(origin)
            if cors is None:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    APIError(
                        403,
                        f"origin {origin!r} is not allowed to call this API; list it with "
                        "--api-cors-origins (EXO_API_CORS_ORIGINS)",
                        code="origin_not_allowed",
                    ),
                )
                return
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                await self._preflight(cors, headers, send)
                return
        if cors is not None:
            send = _with_cors(send, cors)
        if scope["method"] == "POST" and _from_browser(headers):
            media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "application/json":
                await self._refuse(
                    scope,
                    receive,
                    send,
                    APIError(
                        415,
                        f"a browser must POST with 'Content-Type: application/json' "
                        f"(got {media_type or 'none'!r})",
                        code="unsupported_media_type",
                    ),
                )
                return
        if cors is None:
            await self._app(scope, receive, send)
            return
        await _run_with_cors_on_crash(self._app, scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return is_loopback(name) or (name, None) in self._hosts or (name, port) in self._hosts

    def _same_origin(self, origin: str, scope: Scope, host: str | None) -> bool:
        if host is None:
            return False
        own = normalize_origin(f"{scope.get('scheme', 'http')}://{host}")
        return own is not None and normalize_origin(origin) == own

    def _listed(self, origin: str) -> str | None:
        """The origin to echo in ``Access-Control-Allow-Origin``, or ``None`` when it is not allowed."""
        if self._any_origin:
            return origin.strip()
        normal = normalize_origin(origin)
        return origin.strip() if normal is not None and normal in self._origins else None

    async def _preflight(self, origin: str, headers: Headers, send: Send) -> None:
        asked = split_list(headers.get("access-control-request-headers", "").lower())
        extra = [h for h in asked[:64] if _HEADER_NAME.match(h) and h not in ALLOWED_HEADERS]
        allowed = [*ALLOWED_HEADERS, *extra]
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                    (b"access-control-allow-headers", ", ".join(allowed).encode()),
                    (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
                    (b"vary", b"Origin"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
        client = scope.get("client") or ("?", 0)
        log.warning(
            "%s %s from %s -> %d (%s)",
            scope.get("method"),
            scope["path"],
            client[0],
            error.status,
            error.message,
        )
        await error.response()(scope, receive, send)


def _from_browser(headers: Headers) -> bool:
    """Browsers send ``Origin`` on every cross-origin request and on POSTs, and ``Sec-Fetch-*`` on all
    requests; other clients send neither."""
    return "origin" in headers or "sec-fetch-site" in headers or "sec-fetch-mode" in headers


def _with_cors(send: Send, origin: str) -> Send:
    """``send`` that adds ``Access-Control-Allow-Origin``, ``Vary: Origin`` and
    ``Access-Control-Expose-Headers`` (so a page can read a 429's ``Retry-After``) to the response."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"vary"]
            vary = [v for k, v in message.get("headers", []) if k.lower() == b"vary"]
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
            headers.append((b"vary", b", ".join([*vary, b"Origin"])))
            headers.append((b"access-control-expose-headers", b"retry-after, x-request-id"))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cors


async def _run_with_cors_on_crash(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app``; if it raises before answering, answer the 500 here so it carries the CORS headers too
    (starlette's outermost error handler answers with the server's own ``send``, outside this middleware)."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as exc:
        if not started:
            # the same answer as errors.internal_error_handler, which still logs it once
            error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
            await error.response()(scope, receive, tracking_send)
        raise
