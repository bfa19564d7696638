"""The lab's delaying TCP proxy: a user-space stand-in for netem (the kernel it was
built on has none: docs/probes.md).

The RAG service reaches each dependency (the provider, PostgreSQL) through one proxy *route*, a
listening port that forwards every connection to its target. The route is always in the path;
while healthy it adds no delay. ``set_delay(delay_ms, jitter_ms)`` delays every chunk read from
either side by ``delay_ms`` plus a uniform draw in ``[-jitter_ms, +jitter_ms]`` before it is
written to the other side, keeping the order of the bytes (a chunk never overtakes an earlier
one, as with netem's default). A request therefore sees ``2 * delay_ms`` more per round trip it
makes through the route (TLS handshake, request, response), while the TCP connections on either
side stay healthy: the kernel sees slow answers on good sockets, as with a slow network path
behind a middlebox.

What it owns:
- :class:`DelayProxy`: the asyncio proxy for one route (usable as a task in any event loop).
- ``python -m lab.proxy --route NAME=TARGET_HOST:TARGET_PORT ... --control-port P --token T
  --ready-file F``: every route in one process with a small control API (``PUT /routes/NAME/delay``
  ``{"delay_ms", "jitter_ms"}``, ``GET /stats``, bearer token), so the proxy neither shares the
  lab runner's event loop (a blocking call there would look like a network fault) nor the
  service's CPU budget (cgroup faults must not slow the "network").
- :class:`ProxyProcess` / :class:`ProxyRoute`: start that process and drive it from async code.

Resets propagate: when one side resets the connection the other side is reset too (SO_LINGER 0),
so a refused or reset upstream looks to the service as it would without the proxy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from lab import process

READ_SIZE = 64 * 1024
QUEUE_CHUNKS = 256  # per direction: past this the proxy stops reading, so TCP back-pressure still works
MAX_DELAY_MS = 60_000


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN (SO_LINGER on, timeout 0), so a peer sees a reset."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


@dataclass
class RouteStats:
    connections_total: int = 0
    connections_active: int = 0
    connect_failures: int = 0
    resets: int = 0
    bytes_to_target: int = 0
    bytes_from_target: int = 0


class DelayProxy:
    """Forward ``listen_host:listen_port`` (0: any free port) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1", listen_port: int = 0,
                 seed: int | None = None) -> None:
        self.target = (target_host, int(target_port))
        self.listen = (listen_host, int(listen_port))
        self.delay_s = 0.0
        self.jitter_s = 0.0
        self.stats = RouteStats()
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return self._server.sockets[0].getsockname()[1]

    def set_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        if not 0 <= delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be in 0..{MAX_DELAY_MS}, not {delay_ms}")
        if not 0 <= jitter_ms <= MAX_DELAY_MS:
            raise ValueError(f"jitter_ms must be in 0..{MAX_DELAY_MS}, not {jitter_ms}")
        self.delay_s, self.jitter_s = delay_ms / 1000.0, jitter_ms / 1000.0

    def _draw(self) -> float:
        if self.jitter_s <= 0:
            return self.delay_s
        return max(0.0, self.delay_s + self._rng.uniform(-self.jitter_s, self.jitter_s))

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen, reuse_address=True)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        try:
            try:
                u_reader, u_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self.stats.connect_failures += 1
                _reset(c_writer)  # as the target's refusal would look without the proxy
                return
            await self._relay(c_reader, c_writer, u_reader, u_writer)
        finally:
            self.stats.connections_active -= 1
            self._conns.discard(task)

    async def _relay(self, c_reader, c_writer, u_reader, u_writer) -> None:
        up = asyncio.create_task(self._pipe(c_reader, u_writer, "bytes_to_target"))
        down = asyncio.create_task(self._pipe(u_reader, c_writer, "bytes_from_target"))
        try:
            pending = {up, down}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() is not None for t in done if not t.cancelled()):
                    # One side reset or broke: reset the other, as a direct connection would see.
                    self.stats.resets += 1
                    for t in pending:
                        t.cancel()
                    _reset(c_writer)
                    _reset(u_writer)
                    return
            for w in (c_writer, u_writer):
                w.close()
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            for w in (c_writer, u_writer):
                if not w.transport.is_closing():
                    w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str) -> None:
        """Copy one direction, each chunk released ``_draw()`` after it was read, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | OSError]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            last = 0.0
            while True:
                try:
                    data: bytes | OSError = await reader.read(READ_SIZE)
                except OSError as e:  # a reset travels behind the bytes before it, like a packet
                    data = e
                release = max(last, loop.time() + self._draw())
                last = release
                await queue.put((release, data))
                if not data or isinstance(data, OSError):
                    return

        async def write_side() -> None:
            while True:
                release, data = await queue.get()
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if isinstance(data, OSError):
                    raise data
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()  # half-close: the other direction may still be talking
                    return
                writer.write(data)
                await writer.drain()
                setattr(self.stats, counter, getattr(self.stats, counter) + len(data))

        reading = asyncio.create_task(read_side())
        try:
            await write_side()
            await reading
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)


# --- the proxy process ---------------------------------------------------------------------------

def _parse_route(text: str) -> tuple[str, str, int, str]:
    """NAME=HOST:PORT[@LISTEN_HOST] (the route listens on LISTEN_HOST, default 127.0.0.1)."""
    name, _, rest = text.partition("=")
    target, _, listen = rest.partition("@")
    host, _, port = target.rpartition(":")
    if not name or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--route expects NAME=HOST:PORT[@LISTEN_HOST], got {text!r}")
    return name, host, int(port), listen or "127.0.0.1"


async def _serve(args: argparse.Namespace) -> None:
    proxies: dict[str, DelayProxy] = {}
    for i, (name, host, port, listen) in enumerate(args.route):
        proxies[name] = await DelayProxy(host, port, listen_host=listen,
                                         seed=None if args.seed is None else args.seed + i).start()

    def authorized(request: web.Request) -> bool:
        return secrets.compare_digest(request.headers.get("Authorization", ""), f"Bearer {args.token}")

    async def put_delay(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        proxy = proxies.get(request.match_info["name"])
        if proxy is None:
            return web.json_response({"error": f"no route {request.match_info['name']!r}"}, status=404)
        try:
            body = await request.json()
            proxy.set_delay(float(body.get("delay_ms", 0)), float(body.get("jitter_ms", 0)))
        except (ValueError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"delay_ms": proxy.delay_s * 1000, "jitter_ms": proxy.jitter_s * 1000})

    async def get_stats(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({name: {"port": p.port, "target": f"{p.target[0]}:{p.target[1]}",
                                         "delay_ms": p.delay_s * 1000, "jitter_ms": p.jitter_s * 1000,
                                         **p.stats.__dict__} for name, p in proxies.items()})

    app = web.Application()
    app.router.add_put("/routes/{name}/delay", put_delay)
    app.router.add_get("/stats", get_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = runner.addresses[0][1]
    ready = {"pid": os.getpid(), "control_port": control_port, "routes": {n: p.port for n, p in proxies.items()}}
    tmp = Path(str(args.ready_file) + ".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.rename(args.ready_file)  # atomic: the launcher never reads half a file

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for p in proxies.values():
        await p.stop()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.proxy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--route", type=_parse_route, action="append", required=True,
                    help="NAME=TARGET_HOST:PORT[@LISTEN_HOST]")
    ap.add_argument("--token", required=True, help="bearer token of the control API")
    ap.add_argument("--ready-file", type=Path, required=True, help="written (JSON: ports) once listening")
    ap.add_argument("--seed", type=int, default=None, help="seed of the jitter draws")
    asyncio.run(_serve(ap.parse_args(argv)))


# --- driving the process ----------------------------------------------------------------------------

@dataclass
class ProxyRoute:
    """One route of a running :class:`ProxyProcess`: the service connects to ``port``."""

    name: str
    port: int
    target: tuple[str, int]
    process: ProxyProcess = field(repr=False)

    async def set_delay(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        await self.process._put(f"/routes/{self.name}/delay", {"delay_ms": delay_ms, "jitter_ms": jitter_ms})

    async def stats(self) -> dict:
        return (await self.process.stats())[self.name]


class ProxyProcess:
    """``python -m lab.proxy`` with one route per target (``{name: (host, port)}``, or
    ``(host, port, listen_host)``), run under ``prefix`` (e.g. ``ip netns exec NS``) when given."""

    def __init__(self, targets: dict[str, tuple[str, int]] | dict[str, tuple[str, int, str]], work_dir: Path,
                 seed: int | None = None, preexec_fn=None, prefix: list[str] | None = None) -> None:
        self.targets: dict[str, tuple[str, int]] = {n: (t[0], t[1]) for n, t in targets.items()}
        self.listen = {n: t[2] for n, t in targets.items() if len(t) > 2}
        self.prefix = list(prefix or [])
        self.work_dir = Path(work_dir)
        self.seed = seed
        self.preexec_fn = preexec_fn
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.routes: dict[str, ProxyRoute] = {}
        self.control_url = ""
        self.log_path = self.work_dir / "proxy.log"

    async def start(self, timeout_s: float = 20.0) -> ProxyProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ready_file = self.work_dir / f"proxy-ready-{secrets.token_hex(4)}.json"
        argv = [*self.prefix, sys.executable, "-m", "lab.proxy", f"--token={self.token}", f"--ready-file={ready_file}"]
        for name, (host, port) in self.targets.items():
            argv += ["--route", f"{name}={host}:{port}" + (f"@{self.listen[name]}" if name in self.listen else "")]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=self.preexec_fn, cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + timeout_s
        while not ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"lab.proxy exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"lab.proxy not ready after {timeout_s}s; see {self.log_path}")
            await asyncio.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        ready_file.unlink()
        self.control_url = f"http://127.0.0.1:{ready['control_port']}"
        self.routes = {name: ProxyRoute(name, port, self.targets[name], self)
                       for name, port in ready["routes"].items()}
        return self

    async def _put(self, path: str, body: dict) -> dict:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as s:
            async with s.put(self.control_url + path, json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
                answer = await r.json()
                if r.status != 200:
                    raise ValueError(f"lab.proxy refused {path}: {answer.get('error')}")
                return answer

    async def stats(self) -> dict:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as s:
            async with s.get(self.control_url + "/stats", timeout=aiohttp.ClientTimeout(total=10)) as r:
                return await r.json()

    def stop(self) -> None:
        process.stop(self.proc)


if __name__ == "__main__":
    main()
