"""The daemon's one lifecycle: every part registered as soon as it runs, stopped in reverse.

Two kinds of part, one way to stop each (``async def stop(self) -> None``)::

    Service    run() works in a task of its own until stop() asks it to finish what it holds
    Listener   start() binds its sockets; stop() closes them and lets requests in flight end

``Lifecycle`` is an ``AsyncExitStack``: a part's stop is pushed when it starts (a listener's
just before, so that one bound on some addresses and refused on the next is closed too), and
leaving the ``async with`` stops them last-started-first, each step bounded. A start-up that
fails half way therefore stops what already runs and re-raises the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import structlog

log = structlog.get_logger("gateway.app")


class Service(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class Listener(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def bounded(step: Awaitable[object], seconds: float | None, what: str) -> None:
    """One shutdown step, given ``seconds`` (None: as long as it takes); past that it is
    cancelled and we go on."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("gateway.shutdown_step_timed_out", step=what, seconds=seconds)
    except Exception as exc:  # a task that already died: it was reported; the stop goes on
        log.error("gateway.shutdown_step_failed", step=what, error_type=type(exc).__name__)


class Lifecycle:
    """The running parts, in the order they started; ``failed`` is set with a reason when a
    service's task ends on its own (the daemon cannot go on serving)."""

    def __init__(self, step_seconds: float) -> None:
        self.step_seconds = step_seconds
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Lifecycle:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.failed.cancel()  # from here on, tasks ending is the plan
        await self._stack.__aexit__(kind, exc, tb)  # its callbacks never swallow an error

    def on_stop(self, what: str, stop: Callable[[], Awaitable[object]], *,
                bounded_by: float | None = None) -> None:
        """Run ``stop`` at shutdown, before whatever was registered earlier; ``bounded_by``
        seconds, else the lifecycle's step bound."""
        seconds = self.step_seconds if bounded_by is None else bounded_by
        self._stack.push_async_callback(lambda: bounded(stop(), seconds, what))

    def on_close(self, close: Callable[[], Awaitable[object]]) -> None:
        """Release a resource (a pool, a resolver, the engine) at shutdown, unbounded."""
        self._stack.push_async_callback(close)

    def run(self, name: str, service: Service) -> asyncio.Task[None]:
        """Start ``service`` in a task; at shutdown ask it to stop, then wait for the task."""
        task = asyncio.create_task(service.run(), name=name)
        task.add_done_callback(self._died)

        async def stop() -> None:
            # Each step bounded: a stop that hangs or fails must not keep the parts started
            # before this one running; the task is then given its bound and cancelled.
            await bounded(service.stop(), self.step_seconds, f"{name}.stop")
            await bounded(task, self.step_seconds, name)

        self._stack.push_async_callback(stop)
        return task

    async def listen(self, name: str, listener: Listener, *,
                     stop_within: float | None = None) -> None:
        """Start ``listener``; at shutdown stop it (within the step bound, or ``stop_within``:
        a listener with a grace period of its own)."""
        self.on_stop(name, listener.stop, bounded_by=stop_within)
        await listener.start()

    async def until(self, trigger: Awaitable[object]) -> str | None:
        """Wait for ``trigger`` (a shutdown asked for) or for a part to fail: the failure's
        reason, or None."""
        asked: asyncio.Future[object] = asyncio.ensure_future(trigger)
        waits: list[asyncio.Future[Any]] = [asked, self.failed]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
        return self.failed.result() if self.failed.done() and not self.failed.cancelled() \
            else None

    def _died(self, finished: asyncio.Task[None]) -> None:
        """A service's task that ends on its own (not cancelled, not asked to) is fatal."""
        if self.failed.done() or finished.cancelled():
            return
        error = finished.exception()
        log.critical("gateway.task_died", task=finished.get_name(),
                     error_type=type(error).__name__ if error else None)
        self.failed.set_result(f"{finished.get_name()} stopped")
