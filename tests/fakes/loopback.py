"""The transport every fake exchange shares: an aiohttp app on 127.0.0.1:<port>, served by an event loop in a
background thread, started and stopped as a context manager. A fake adds its routes (``_routes``) and anything to
close before the server goes (``_before_stop``); ``_closing`` is set first, so held ("timeout") requests return."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiohttp import web

START_TIMEOUT_S = 60.0


class LoopbackServer:
    """Base of the fakes: ``with Fake(...) as fake: fake.base_url``."""

    name = "fake"

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError  # each fake names its own routes

    async def _before_stop(self) -> None:
        """Close what must go before the server (open websockets)."""

    def __enter__(self) -> Any:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fake-{self.name}:{self.port}",
                                        daemon=True)
        self._thread.start()
        try:
            self._call(self._start(sock), timeout=START_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            sock.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is None:
            return
        try:
            self._call(self._stop(), timeout=START_TIMEOUT_S)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        self._loop.close()
        self._loop = None

    def _call(self, coro: Any, timeout: float = 60.0) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not running; use it as a context manager")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, sock: socket.socket) -> None:
        self._closing = asyncio.Event()
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _stop(self) -> None:
        assert self._closing is not None and self._runner is not None
        self._closing.set()  # releases held ("timeout") requests at once
        await self._before_stop()
        await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
