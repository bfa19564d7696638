"""The part every stand-in shares: an aiohttp app served on a free 127.0.0.1 port over a real
socket, started and stopped by the test (or ``async with``)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web


class LoopbackServer:
    """Subclasses build their routes in :meth:`app`; :meth:`start` returns the base URL."""

    url: str = ""
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class FaultyServer(LoopbackServer):
    """A stand-in that records every request and can be told to misbehave on the next ones:
    an error status, a stall (until a timeout or :meth:`stop`), an HTML page instead of JSON,
    or JSON of the wrong shape. Each fault applies once, to the next request whose path starts
    with its ``path``. Subclasses route through :meth:`middleware` and word errors their way."""

    wrong_shape: Any = ["not", "the", "documented", "shape"]

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"path", "query", "headers"}
        self._faults: list[dict[str, Any]] = []
        self._release = asyncio.Event()

    def fail_next(self, n: int = 1, status: int = 500, message: str = "internal error", path: str = "") -> None:
        self._faults += [{"path": path, "status": status, "message": message}] * n

    def stall_next(self, n: int = 1, seconds: float = 30.0, path: str = "") -> None:
        self._faults += [{"path": path, "stall": seconds}] * n

    def garble_next(self, n: int = 1, path: str = "") -> None:
        """Answer 200 with an HTML page instead of JSON (a proxy's error page, say)."""
        self._faults += [{"path": path, "garble": True}] * n

    def reshape_next(self, n: int = 1, body: Any = None, path: str = "") -> None:
        """Answer 200 with JSON of the wrong shape."""
        self._faults += [{"path": path, "json": self.wrong_shape if body is None else body}] * n

    def error_response(self, status: int, message: str) -> web.Response:
        return web.Response(status=status, text=message)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.append({"path": request.path, "query": dict(request.query), "headers": dict(request.headers)})
        fault = next((f for f in self._faults if request.path.startswith(f["path"])), None)
        if fault is not None:
            self._faults.remove(fault)
            if "stall" in fault:
                try:
                    await asyncio.wait_for(self._release.wait(), fault["stall"])
                except TimeoutError:
                    pass
            elif "status" in fault:
                return self.error_response(fault["status"], fault["message"])
            elif "garble" in fault:
                return web.Response(text="<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            else:
                return web.json_response(fault["json"])
        return await handler(request)

    async def stop(self) -> None:
        self._release.set()  # wake stalled handlers so shutdown does not wait them out
        await super().stop()
