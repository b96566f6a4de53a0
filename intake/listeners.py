"""An aiohttp application on the configured addresses, HTTPS when a certificate is given.

Every listener (public, console, admin) answers the edges of HTTP the same way: a ``405``
names the methods the resource allows (RFC 9110 section 15.5.6), no response names the server's
software versions, and a request aiohttp's parser refuses before any handler runs (a NUL in a
header, a bad request line, an over-long header) gets the gateway's own short answer with
security headers, echoing nothing of the request, logged at info.

It lives in ``intake`` because the public listener is intake's and intake may import nothing of
``gateway`` but the store; the console and the admin endpoints, higher up, use it from here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import structlog
from aiohttp import web

log = structlog.get_logger("intake.listeners")

#: What every response says in ``Server``: the product, never a version.
SERVER = "hotline-gateway"


def security_headers(csp: str, *, permissions: str | None = None,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers on every response of the gateway's own, whichever listener: the page's
    Content-Security-Policy, no sniffing, no framing, no referrer, no cross-origin opener or
    embedding, never cached; ``permissions`` as Permissions-Policy, then ``extra``."""
    headers = {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "no-store",
    }
    if permissions is not None:
        headers["Permissions-Policy"] = permissions
    return {**headers, **(extra or {})}


def load_assets(
    package: str, templates: Sequence[str], static: Iterable[str], *,
    filters: Mapping[str, Callable[..., Any]] | None = None, **options: Any,
) -> tuple[jinja2.Environment, dict[str, bytes]]:
    """A package's ``templates/`` (with their ``base.html``) compiled and the named files of
    its ``static/`` read, once before serving: nothing is read from disk while serving.
    ``options`` go to the Jinja environment (autoescaping and strict undefined are fixed)."""
    folder = resources.files(package)
    sources = {name: (folder / "templates" / name).read_text("utf-8")
               for name in ("base.html", *templates)}
    environment = jinja2.Environment(
        loader=jinja2.DictLoader(sources), autoescape=True, auto_reload=False,
        undefined=jinja2.StrictUndefined, **options,
    )
    environment.filters.update(filters or {})
    for name in templates:
        environment.get_template(name)
    return environment, {name: (folder / "static" / name).read_bytes() for name in static}


#: On the answers that no application rendered (a request that could not be parsed).
ERROR_HEADERS = security_headers(
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'", extra={"Server": SERVER})



def client_address(peer: str | None, forwarded: Iterable[str],
                   trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address: ``X-Forwarded-For`` is read only when the peer is a trusted proxy.

    Hops are read from the nearest: the first that is not one of our proxies is the client.
    Every header line counts (a proxy may append its own line after a forged one), and a hop
    that is not an address ends the walk at the last good one.
    """
    chain = [hop.strip() for line in forwarded for hop in line.split(",") if hop.strip()]
    chain.append(peer or "")
    client = peer or ""
    for hop in reversed(chain):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return client
        client = str(address)
        if not any(address in network for network in trusted):
            return client
    return client


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in the gateway's words.

    ``handle_error`` is public and is what aiohttp calls for a request its parser refused
    (and for a handler that failed outside the applications' own error handling).
    """

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 tls: bool) -> None:
        # None turns access logging off, as AppRunner(access_log=None) does (the stub says
        # Logger only).
        super().__init__(manager, loop=loop, access_log=None)  # type: ignore[arg-type]
        self._tls = tls

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        error_type = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("http.request_failed", status=status, error_type=error_type)
        else:  # the client's doing: worth a line, not a traceback (nor what it sent)
            log.info("http.malformed_request", status=status, error_type=error_type)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already under way")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        response = web.Response(status=status, text=f"{status} {phrase}\n",
                                headers=ERROR_HEADERS)
        if self._tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        response.force_close()
        return response


async def _edges(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: ``Server`` without versions, and ``Allow`` on a router's 405."""
    response.headers["Server"] = SERVER
    if response.status == 405 and "Allow" not in response.headers:
        refused = request.match_info.http_exception
        if refused is not None and "Allow" in refused.headers:
            response.headers["Allow"] = refused.headers["Allow"]


class HttpListener:
    def __init__(self, app: web.Application, listen: Sequence[tuple[str, int]], *,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        app.on_response_prepare.append(_edges)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._listen = list(listen)
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None \
            else None
        self._servers: list[asyncio.Server] = []
        #: Where it listens (the real ports, when the config says 0).
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls[0], self._tls[1])
        loop = asyncio.get_running_loop()
        tls = context is not None

        def connection() -> GatewayRequestHandler:
            return GatewayRequestHandler(server, loop=loop, tls=tls)

        for host, port in self._listen:
            # What web.TCPSite does, with our connection handler.
            listening = await loop.create_server(connection, host, port, ssl=context,
                                                 backlog=128)
            self._servers.append(listening)
            for sock in listening.sockets:
                self.addresses.append(sock.getsockname()[:2])

    async def stop(self) -> None:
        for listening in self._servers:
            listening.close()
        self._servers.clear()
        # Closes the connections (bounded by the runner's shutdown timeout), then the app.
        await self._runner.cleanup()
