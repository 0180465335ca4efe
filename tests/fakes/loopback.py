"""The part every fake upstream shares: an aiohttp app on loopback, started and stopped the same
way, and a queue of scripted behaviours (one per request) that each fake defines the shape of."""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Any, Self

from aiohttp import web


class LoopbackServer:
    """Subclasses add their routes in `routes`; `port` is the real one once `start()` returned."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._script: deque[Any] = deque()
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def script(self, *behaviours: Any) -> None:
        """Queue behaviours for the next requests, one each, in order."""
        self._script.extend(behaviours)

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        # Like a real server, stop working on a request whose client has gone (a timeout).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
