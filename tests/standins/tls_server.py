"""A local HTTPS server that answers a scripted sequence of HTTP statuses, like a throttling LLM
provider: 429 with ``retry-after``, 529 "overloaded", 503, then 200.

Real TLS over a real socket on 127.0.0.1 (HTTP/1.1, keep-alive), with a self-signed certificate
made for the test (:func:`lab.tls.self_signed`) in a temporary directory that is removed on stop.
Clients trust it with ``ssl.create_default_context(cafile=server.certfile)``.

Tests read back what was answered, in order (:attr:`TLSServer.served`), and how many TLS
connections were accepted (:attr:`TLSServer.handshakes`).
"""
from __future__ import annotations

import json
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab.tls import self_signed, server_context

_REASONS = {529: "Site Overloaded"}  # not in http.HTTPStatus


@dataclass
class Reply:
    """One scripted answer. ``delay_s`` (None: the server's default) is slept before answering,
    after the request has been read: the client waits that long for the first response byte."""

    status: int
    delay_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # None: a small JSON body naming the status


def default_body(status: int) -> bytes:
    if status < 400:
        return json.dumps({"status": status, "ok": True}).encode() + b"\n"
    return json.dumps({"status": status, "error": {"type": "rate_limit_error" if status == 429 else "api_error",
                                                   "message": f"scripted {status}"}}).encode() + b"\n"


class TLSServer:
    """``with TLSServer([429, 429, 200]) as srv:`` serves ``https://127.0.0.1:{srv.port}``.

    Statuses in the script are answered in order, one per request, across all connections;
    after the script, every request gets ``then`` (200). A 429 carries ``retry-after: 0`` unless
    its Reply says otherwise, so SDK retries do not wait.
    """

    def __init__(self, script: Iterable[int | Reply] = (), *, delay_s: float = 0.0, then: int = 200):
        self._script = [r if isinstance(r, Reply) else Reply(int(r)) for r in script]
        self.delay_s = delay_s
        self.then = then
        self.served: list[int] = []  # statuses answered, in order
        self.requests: list[tuple[str, str]] = []  # (method, path), in order
        self.handshakes = 0  # TLS connections accepted and past the handshake
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.certfile = ""
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def next_reply(self, method: str, path: str) -> Reply:
        with self._lock:
            self.requests.append((method, path))
            reply = self._script.pop(0) if self._script else Reply(self.then)
            return reply

    def start(self) -> TLSServer:
        self._dir = Path(tempfile.mkdtemp(prefix="llmslo-tls-"))
        try:
            cert, key = self_signed(self._dir, ["127.0.0.1", "localhost"])
            self.certfile = str(cert)
            ctx = server_context(cert, key)
            self._httpd = _Server(("127.0.0.1", 0), _Handler, self, ctx)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"tls-standin-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> TLSServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr, handler, standin: TLSServer, ctx: ssl.SSLContext):
        self.standin = standin
        self.ssl_context = ctx
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: requests share one TLS connection
    disable_nagle_algorithm = True  # head and body are written apart: no delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        # The handshake runs in this connection's own thread, not in the accept loop.
        self.request.settimeout(30)
        self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        with self.server.standin._lock:
            self.server.standin.handshakes += 1
        super().setup()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        standin = self.server.standin
        reply = standin.next_reply(self.command, self.path)
        delay = standin.delay_s if reply.delay_s is None else reply.delay_s
        if delay > 0:
            time.sleep(delay)
        body = default_body(reply.status) if reply.body is None else reply.body
        self.send_response(reply.status, _REASONS.get(reply.status))
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if reply.status == 429:
            headers["retry-after"] = "0"
        headers.update(reply.headers)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        with standin._lock:
            standin.served.append(reply.status)

    do_GET = do_POST = _answer

    def log_message(self, format, *args) -> None:  # quiet: tests read `served` instead
        pass
