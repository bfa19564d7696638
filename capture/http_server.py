"""What the agent's and the responder's HTTP servers share: constant-time credential checks,
bounded body reads, JSON error answers, and start-up/shut-down hooks."""
from __future__ import annotations

import base64
import hmac

from aiohttp import web


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than ``limit`` bytes.

    ``content.read(n)`` returns whatever is buffered (one TCP segment or HTTP chunk), not n
    bytes: keep reading until the end of the body or one byte past the limit."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await request.content.read(limit + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
    return None if len(buf) > limit else bytes(buf)


def bearer_ok(header: str | None, token: str | None) -> bool:
    if not token or not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def basic_ok(header: str | None, user: str | None, password: str | None) -> bool:
    if not user or not password or not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        got_user, _, got_pw = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
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
