"""Pure ASGI middleware: the gate every request passes first (token, body size, signed media
links), cross-origin reads (CORS), the HTTP metrics, whose labels come from closed sets, and HEAD
wherever GET is."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable

from fastapi import HTTPException  # re-raised as such by FastAPI while it reads a body
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carn_stream.server import media_links
from carn_stream.server.deps import bearer_matches
from carn_stream.server.metrics import Metrics

#: Paths anyone may open, token or not: health, readiness, metrics and the page shell (pages,
#: their scripts, styles and player library, the API docs and their assets).
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/", "/live", "/watch", "/docs", "/docs/oauth2-redirect",
     "/redoc", "/openapi.json"}
)  # fmt: skip
PUBLIC_PREFIXES = ("/static/", "/docs-assets/", "/player/")
#: Request body limits in bytes: an SDP offer (a browser's is 3-10 KB), and every other body
#: (a job request is a URL of at most 4096 characters and a few fields).
OFFER_BODY_LIMIT = 64 * 1024
BODY_LIMIT = 16 * 1024
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def body_limit(path: str) -> int:
    return OFFER_BODY_LIMIT if path == "/webrtc/offer" else BODY_LIMIT


async def _send_error(send: Send, status: int, detail: str, headers=()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class Gate:
    """Checks what can be checked before a request's body is read: the token (or a signed
    media link), and the body's declared size; a body that grows past its limit while being
    read ends with 413 too. Nothing behind it parses a body it has not let through."""

    def __init__(
        self,
        app: ASGIApp,
        token: Callable[[], str | None],
        scopes: media_links.Scopes = (),
        now=time.time,
        hosts: tuple[str, ...] = (),
    ) -> None:
        """``scopes``: the media a signed link may open (see :mod:`media_links`); ``hosts``:
        the names a service without a token answers besides IP addresses and localhost
        (``*``: any)."""
        self.app, self._token, self._scopes, self._now = app, token, scopes, now
        self._hosts = frozenset(hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = self._token()
        path: str = scope["path"]
        if token and path.startswith(media_links.PREFIX):
            opened = media_links.verify(path, token, self._scopes, self._now())
            if opened is None or scope["method"] not in ("GET", "HEAD"):
                await _send_error(send, 401, "this media link is invalid or has expired; get "
                                  "fresh links from GET /jobs/{id} or /videos/{id}")  # fmt: skip
                return
            scope["path"], scope["raw_path"] = opened, opened.encode()
        elif token and not self._public(path) and not self._bearer_ok(scope, token):
            await _send_error(
                send, 401, "this server needs an API token: send 'Authorization: Bearer <token>'",
                [(b"www-authenticate", b"Bearer")],
            )  # fmt: skip
            return
        elif not token and not self._public(path) and not self._host_ok(scope):
            await _send_error(send, 403, (
                "this service has no API token, so it answers only requests addressed to an IP "
                "address, localhost or a name in CARN_STREAM_ALLOWED_HOSTS (a page on another "
                "site could otherwise reach it through its own name); set one of those two"))
            return
        limit = body_limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_error(send, 413, f"request body over the limit of {limit} bytes")
            return
        await self.app(scope, _capped(receive, limit), send)

    def _host_ok(self, scope: Scope) -> bool:
        """Whether the request is addressed to this service by a name it answers to."""
        host = _header(scope, b"host")
        if host is None or "*" in self._hosts:  # (no browser sends a request without one)
            return True
        name = host.decode("latin-1").strip().lower()
        name = name[1 : name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0]
        if name == "localhost" or name.endswith(".localhost") or name in self._hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    @staticmethod
    def _bearer_ok(scope: Scope, token: str) -> bool:
        return bearer_matches(_header(scope, b"authorization") or b"", token)


#: What a page on another origin may send (its token, a JSON body, a byte range) and read.
CORS_REQUEST_HEADERS = b"Authorization, Content-Type, Range"
CORS_EXPOSED_HEADERS = b"Content-Length, Content-Range, Accept-Ranges, Retry-After"
#: How long a browser may keep a preflight's answer.
CORS_PREFLIGHT_SECONDS = b"600"


class CrossOrigin:
    """Cross-origin reads (CORS), so that pages on other sites can use the service: a signed
    media link from any origin (the link is its own credential, and the service sets no
    cookie), so that a player embedded anywhere plays a link its site got from the API; the
    rest (and every media path on a service without a token) from ``origins`` only
    (``CARN_STREAM_CORS_ORIGINS``; ``*``: any). Preflights are answered here, before the gate."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...], signed_links: Callable[[], bool]):
        """``signed_links``: whether media links are signed (a token is set)."""
        self.app, self._signed = app, signed_links
        self._any = "*" in origins
        self._origins = frozenset(_as_sent(o).encode("latin-1") for o in origins)
        #: whether an answer depends on the request's origin (caches must keep them apart)
        self._varies = bool(self._origins) and not self._any

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        media = self._signed() and scope["path"].startswith(media_links.PREFIX)
        allowed = self._allowed(origin, media)
        vary = [(b"vary", b"Origin")] if self._varies and not media else []
        if origin is not None and scope["method"] == "OPTIONS" and _header(
            scope, b"access-control-request-method"
        ):
            await self._preflight(send, origin, allowed, vary, b"GET, HEAD" if media else
                                  b"GET, HEAD, POST, DELETE")  # fmt: skip
            return
        headers = [*vary]
        if allowed is not None:  # (else the browser keeps the answer from the page)
            headers += [(b"access-control-allow-origin", allowed),
                        (b"access-control-expose-headers", CORS_EXPOSED_HEADERS)]  # fmt: skip
        if not headers:
            await self.app(scope, receive, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *headers])
            await send(message)

        await self.app(scope, receive, with_cors)

    def _allowed(self, origin: bytes | None, media: bool) -> bytes | None:
        """What ``Access-Control-Allow-Origin`` says, if anything: ``*`` for a signed link
        whoever asks (so that a cached answer serves every origin alike)."""
        if media or self._any:
            return b"*"
        return origin if origin in self._origins else None

    @staticmethod
    async def _preflight(send: Send, origin: bytes, allowed: bytes | None, vary, methods: bytes):
        if allowed is None:
            shown = origin.decode("latin-1")
            await _send_error(send, 403, f"pages from {shown} may not call this service; its "
                              "operator lists the origins that may in CARN_STREAM_CORS_ORIGINS",
                              vary)  # fmt: skip
            return
        await send({
            "type": "http.response.start",
            "status": 204,
            "headers": [(b"access-control-allow-origin", allowed), *vary,
                        (b"access-control-allow-methods", methods),
                        (b"access-control-allow-headers", CORS_REQUEST_HEADERS),
                        (b"access-control-max-age", CORS_PREFLIGHT_SECONDS)],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": b""})


def _as_sent(origin: str) -> str:
    """An origin as a browser sends it: without its scheme's default port."""
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin.removesuffix(port)
    return origin


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value
    return None


def _capped(receive: Receive, limit: int) -> Receive:
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body over the limit of {limit} bytes")
        return message

    return wrapped


class RequestMetrics:
    """Counts requests and their latency by method (a fixed set, else ``other``), route
    template (``unmatched`` when none) and status class."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = _route_template(scope)
            self.metrics.http_requests.labels(method, route, f"{status // 100}xx").inc()
            self.metrics.http_seconds.labels(method, route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template:
        return template
    return "/static" if scope["path"].startswith("/static/") else "unmatched"


class HeadAsGet:
    """HEAD answered wherever GET is (RFC 9110: what GET would send, without the body), for
    uptime checks and players that ask before they fetch. A HEAD that no route takes itself
    (``output.mp4``'s does, and static files') runs the GET route; its body is dropped."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app, self._routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or self._taken(scope):
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        as_get = dict(scope, method="GET")
        try:
            await self.app(as_get, receive, without_body)
        finally:
            if "route" in as_get:  # the metrics label HEAD by the route GET took
                scope["route"] = as_get["route"]

    def _taken(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] == Match.FULL for route in self._routes())
