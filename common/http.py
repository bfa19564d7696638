"""What the agent's and the responder's HTTP servers share: constant-time credential checks,
bounded body reads with a deadline, strict JSON parsing, JSON error answers, start-up/shut-down
hooks, and the server runner (a header deadline and a bound on connections per client)."""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

# A request's body must arrive within this many seconds of its handler asking for it.
BODY_TIMEOUT_S = 30.0
# A connection must deliver a request's headers this soon after it opens or after its last
# response (also how long an idle keep-alive connection is kept).
HEADER_TIMEOUT_S = 15.0
# Open connections one client address may hold; more are closed at once.
MAX_CONNECTIONS_PER_CLIENT = 64


class _ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a control character in a header, a broken request
    line) at ERROR with a traceback, though the client is at fault and got its 400. Keep one
    warning line for those; leave every other record as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (getattr(exc, "code", 0) or 0) < 500:
            record.msg, record.args = "event=bad_http_request error=%s", (" ".join(str(exc).split())[:200],)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("aiohttp.server").addFilter(_ClientMistakes())


class BodyTimeout(Exception):
    """The client did not send its whole body within BODY_TIMEOUT_S."""


class BodyTooLarge(Exception):
    """A request body longer than its endpoint allows (declared or as it arrived): a 413 whose
    message names the limit and, where the endpoint gives one, what to do about it."""

    def __init__(self, message: str, declared: bool) -> None:
        super().__init__(message)
        self.declared = declared  # Content-Length said so, before any byte was read


class BodyUnreadable(Exception):
    """The body could not be read as sent (e.g. Content-Encoding gzip over bytes that are not)."""


class JsonBodyError(ValueError):
    """The body is not JSON this service takes; the message says why (and where)."""


# A JSON escape that can make a lone surrogate or a NUL: only then are the strings walked.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")


def _no_constants(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON number")


def load_json(body: bytes) -> Any:
    """Parse a request body as strict JSON: UTF-8, no NaN/Infinity, nested at most as deep as
    the parser goes, integers of at most 4,300 digits, and strings that are valid Unicode text
    without NUL (a lone surrogate such as ``"\\ud800"`` is valid JSON but cannot be stored,
    printed or sent on). Raises JsonBodyError naming the problem and, for a bad string, its path."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonBodyError(f"body is not UTF-8 text (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise JsonBodyError(f"invalid JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    except RecursionError:
        raise JsonBodyError("invalid JSON: nested too deeply") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise JsonBodyError(f"invalid JSON: {str(e).split(';')[0]}") from None
    if _SUSPECT_ESCAPE.search(body):
        bad = _bad_string(doc)
        if bad:
            raise JsonBodyError(bad)
    return doc


def _bad_string(doc: Any) -> str | None:
    """The first string (value or key) that is not clean Unicode text, as 'path: why'."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            why = _string_problem(v)
            if why:
                return f"{path or 'body'}: {why}"
        elif isinstance(v, dict):
            for k, x in v.items():
                why = _string_problem(k)
                sub = f"{path}.{k}" if path else str(k)
                if why:
                    return f"{path or 'body'}: a key {why}"
                stack.append((sub, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
    return None


def _string_problem(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return None


def json_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None, advice: str = "") -> bytes:
    """The whole body. BodyTooLarge when it says (Content-Length) or turns out to be longer than
    ``limit`` bytes, with ``advice`` after the limit; BodyTimeout when it has not all arrived
    within ``timeout_s`` (a slow or unfinished body never holds a handler).

    ``content.read(n)`` returns whatever is buffered (one TCP segment or HTTP chunk), not n
    bytes: keep reading until the end of the body or one byte past the limit."""
    then = f"; {advice}" if advice else ""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body is {request.content_length} bytes; the limit is {limit} bytes{then}", declared=True)
    buf = bytearray()
    timeout_s = BODY_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            while len(buf) <= limit:
                chunk = await request.content.read(limit + 1 - len(buf))
                if not chunk:
                    break
                buf += chunk
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except web.RequestPayloadError as e:  # aiohttp's own decoding (gzip, chunks) failed
        # Nothing more can be read: mark the stream ended, or aiohttp's lingering read after the
        # answer meets the same error again and logs it as unhandled.
        request.content.feed_eof()
        raise BodyUnreadable(f"body could not be read: {str(e).splitlines()[-1].strip()}") from None
    if len(buf) > limit:
        raise BodyTooLarge(f"body is over the limit of {limit} bytes{then}", declared=False)
    return bytes(buf)


@web.middleware
async def guard(request: web.Request, handler):
    """Outermost middleware of both servers: a body over its endpoint's limit is a 413, one that
    does not arrive in time a 408, one that cannot be decoded a 400, and an unexpected error a
    500 without a traceback in the answer (the log keeps it)."""
    try:
        return await handler(request)
    except BodyTooLarge as e:
        resp = json_error(413, str(e))
        resp.force_close()  # the rest of the body is not read
        return resp
    except (BodyTimeout, BodyUnreadable) as e:
        # The rest of the body is not read: the connection closes after the answer.
        resp = json_error(408 if isinstance(e, BodyTimeout) else 400, str(e))
        resp.force_close()
        return resp
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:  # the boundary of every request: the log has it, the client a sentence
        log.exception("event=request_failed method=%s path=%s", request.method, request.path)
        return json_error(500, "internal error; the server's log has the details")


def bearer_ok(header: str | None, token: str | None) -> bool:
    if not token or not header:
        return False
    scheme, _, value = header.partition(" ")
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: a value that is not UTF-8
    # holds lone surrogates, which cannot be encoded back (and cannot be the token anyway).
    try:
        got = value.strip().encode()
    except UnicodeEncodeError:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(got, token.encode())


def basic_ok(header: str | None, user: str | None, password: str | None) -> bool:
    if not user or not password or not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        got_user, _, got_pw = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeError):  # not base64, not UTF-8, or a header that was not UTF-8
        return False
    # Both compared, always, so the time taken does not tell which one was wrong.
    u = hmac.compare_digest(got_user.encode(), user.encode())
    p = hmac.compare_digest(got_pw.encode(), password.encode())
    return u and p


def with_lifecycle(app, start, stop) -> None:
    """Run ``await start()`` when ``app`` starts serving and ``await stop()`` when it shuts down."""

    async def lifecycle(_app):
        await start()
        yield
        await stop()

    app.cleanup_ctx.append(lifecycle)


class ClientLimit:
    """Counts a server's open connections per client address and closes those over the bound
    (before any byte of theirs is read). ``install`` hooks it into a running aiohttp server."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.open: Counter[str] = Counter()
        self.refused = 0

    def install(self, server) -> None:
        made, lost = server.connection_made, server.connection_lost
        clients: dict[object, str] = {}  # handler -> client address (handlers have __slots__)

        def connection_made(handler, transport):
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            client = peer[0] if isinstance(peer, (tuple, list)) and peer else "?"
            clients[handler] = client
            self.open[client] += 1
            if self.open[client] > self.per_client:
                self.refused += 1
                log.warning("event=connection_refused client=%s open=%s limit=%s", client, self.open[client],
                            self.per_client)
                # Once aiohttp has set the connection up (closing it inside connection_made would
                # leave aiohttp's own request task to find it half torn down).
                asyncio.get_running_loop().call_soon(transport.close)

        def connection_lost(handler, exc=None):
            client = clients.pop(handler, None)
            if client is not None:
                self.open[client] -= 1
                if self.open[client] <= 0:
                    del self.open[client]
            lost(handler, exc)

        server.connection_made = connection_made
        server.connection_lost = connection_lost


CLIENT_LIMIT = web.AppKey("client_limit", ClientLimit)


async def serve(app: web.Application, host: str, port: int, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                handle_signals: bool = True) -> web.AppRunner:
    """Start serving ``app`` (its start-up hooks run first); the runner, to ``cleanup()`` later.

    aiohttp closes a connection whose next request has not been parsed ``keepalive_timeout``
    after it opened or after its last response; that is the header deadline here. The app's
    ``CLIENT_LIMIT`` key holds the per-client connection bound."""
    limit = app[CLIENT_LIMIT] = ClientLimit(max_connections_per_client)
    runner = web.AppRunner(app, handle_signals=handle_signals, keepalive_timeout=header_timeout_s,
                           access_log=None, shutdown_timeout=5)
    await runner.setup()
    limit.install(runner.server)
    await web.TCPSite(runner, host, port).start()
    return runner


def run(app: web.Application, host: str, port: int, **limits: Any) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut it down (its clean-up hooks run)."""

    async def main() -> None:
        runner = await serve(app, host, port, **limits)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except (web.GracefulExit, KeyboardInterrupt):
        pass
