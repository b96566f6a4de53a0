"""An aiohttp application on the configured addresses, HTTPS when a certificate is given."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web


class HttpListener:
    def __init__(self, app: web.Application, listen: Sequence[tuple[str, int]], *,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._listen = list(listen)
        self._tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None \
            else None
        #: Where it listens (the real ports, when the config says 0).
        self.addresses: list[tuple[str, int]] = []

    async def start(self) -> None:
        await self._runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls[0], self._tls[1])
        for host, port in self._listen:
            site = web.TCPSite(self._runner, host, port, ssl_context=context)
            await site.start()
            server = site._server
            assert server is not None
            for sock in getattr(server, "sockets", ()):
                self.addresses.append(sock.getsockname()[:2])

    async def stop(self) -> None:
        await self._runner.cleanup()
