"""Token checks shared by the agent's and the responder's HTTP servers: constant-time compare."""
from __future__ import annotations

import base64
import hmac


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
