"""A TCP proxy on 127.0.0.1 that a test controls, put between gateways and their PostgreSQL:
``down()`` is the server gone (every connection cut, new ones closed at once, as a restart
does), ``pause()`` the network gone quiet (connections stay open, no byte passes either way
until ``resume()``), ``up()`` both ended."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._refusing = False
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()
        if self._server is not None:
            await self._server.wait_closed()

    def down(self) -> None:
        """As a server restarting: every connection closed, new ones closed on arrival."""
        self._refusing = True
        self._flowing.set()
        self._cut()

    def pause(self) -> None:
        """As a network pause: nothing passes, nothing is closed."""
        self._flowing.clear()

    def up(self) -> None:
        self._refusing = False
        self._flowing.set()

    def _cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                side.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: so does the other
