"""A local stand-in for the Slack Web API, served over a real socket.

Implements ``chat.postMessage``, ``chat.update`` and ``auth.test`` the way Slack documents them:
form-encoded or JSON bodies, ``Authorization: Bearer`` tokens (or a ``token`` form field),
errors as HTTP 200 with ``{"ok": false, "error": ...}``, channel names resolved to ids, and
``ts`` values that increase. It also checks the Block Kit limits Slack enforces (50 blocks,
3000-character sections, 150-character headers) so a rendering bug fails here as ``invalid_blocks``.

Tests read back what landed (:meth:`SlackStandin.threads`, :attr:`SlackStandin.calls`) and inject
faults (:meth:`SlackStandin.fail_next`, :meth:`SlackStandin.stall_next`).
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.standins.loopback import LoopbackServer

DEFAULT_TOKEN = "xoxb-0000000000-llmslo-standin"
DEFAULT_CHANNELS: Mapping[str, str] = {"#llm-incidents": "C0LLMSLO", "llm-incidents": "C0LLMSLO",
                                       "C0LLMSLO": "C0LLMSLO"}
BOT_USER = "U0LLMSLOBOT"
BOT_ID = "B0LLMSLO"
TEAM_ID = "T0LLMSLO"

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_TEXT_CHARS = 40000


class SlackStandin(LoopbackServer):
    """A Slack Web API stand-in; ``await start()`` returns a base URL ending in ``/api/``."""

    def __init__(self, token: str = DEFAULT_TOKEN,
                 channels: Mapping[str, str] | Iterable[str] | None = None) -> None:
        self.token = token
        self.channels = self._channel_map(channels)
        self.calls: list[dict[str, Any]] = []
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}  # (channel id, ts) -> message
        self._order: list[tuple[str, str]] = []
        self._next_ts = 1732700000_000100  # microseconds
        self._faults: list[dict[str, Any]] = []
        self.base_url = ""

    # -- lifecycle

    def app(self) -> web.Application:
        app = web.Application()
        for method in ("chat.postMessage", "chat.update", "auth.test"):
            app.router.add_post(f"/api/{method}", self._handler(method))
        return app

    async def start(self) -> str:
        """The Web API base URL (what slack-sdk takes as ``base_url``)."""
        self.base_url = await super().start() + "/api/"
        return self.base_url

    # -- fault injection

    def fail_next(self, n: int = 1, status: int = 429, retry_after: float | None = 1,
                  error: str | None = None) -> None:
        """Answer the next ``n`` API calls with HTTP ``status`` (429 carries ``Retry-After``)."""
        code = error or ("ratelimited" if status == 429 else "fatal_error" if status >= 500 else "invalid_request")
        for _ in range(n):
            self._faults.append({"status": status, "error": code,
                                 "retry_after": retry_after if status == 429 else None})

    def stall_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Hold the next ``n`` calls for ``seconds`` before answering (to exercise client timeouts)."""
        for _ in range(n):
            self._faults.append({"stall": seconds})

    # -- read-back helpers

    def threads(self) -> dict[str, dict[str, Any]]:
        """``{root_ts: {"root": latest root message, "replies": [messages, oldest first]}}``."""
        out: dict[str, dict[str, Any]] = {}
        for key in self._order:
            msg = self._messages[key]
            if "thread_ts" not in msg:
                out[msg["ts"]] = {"root": msg, "replies": []}
        for key in self._order:
            msg = self._messages[key]
            if "thread_ts" in msg and msg["thread_ts"] in out:
                out[msg["thread_ts"]]["replies"].append(msg)
        return out

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] == method]

    # -- HTTP

    def _handler(self, method: str):
        async def handle(request: web.Request) -> web.Response:
            body = await self._parse_body(request)
            call: dict[str, Any] = {"method": method, "body": body,
                                    "content_type": request.headers.get("Content-Type", "")}
            self.calls.append(call)
            if self._faults:
                fault = self._faults.pop(0)
                if "stall" in fault:
                    await asyncio.sleep(fault["stall"])
                else:
                    call["status"] = fault["status"]
                    headers = {}
                    if fault["retry_after"] is not None:
                        headers["Retry-After"] = f"{fault['retry_after']:g}"
                    return web.json_response({"ok": False, "error": fault["error"]},
                                             status=fault["status"], headers=headers)
            if body is None:
                result = {"ok": False, "error": "invalid_form_data"}
            else:
                result = self._authorize(request, body) or getattr(self, "_" + method.replace(".", "_"))(body)
            call["status"] = 200
            call["response"] = result
            return web.json_response(result)  # Slack answers API errors with HTTP 200 too

        return handle

    async def _parse_body(self, request: web.Request) -> dict[str, Any] | None:
        ctype = request.content_type
        try:
            if ctype == "application/json":
                data = await request.json()
                return data if isinstance(data, dict) else None
            form = await request.post()
            body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            for key in ("blocks", "attachments", "metadata"):  # JSON-encoded inside the form
                if isinstance(body.get(key), str):
                    body[key] = json.loads(body[key])
            return body
        except (ValueError, json.JSONDecodeError):
            return None

    def _authorize(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any] | None:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else body.get("token")
        if not token:
            return {"ok": False, "error": "not_authed"}
        if token != self.token:
            return {"ok": False, "error": "invalid_auth"}
        return None

    # -- methods

    def _auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://llmslo-standin.slack.com/", "team": "LLM SLO stand-in",
                "user": "llmslo", "team_id": TEAM_ID, "user_id": BOT_USER, "bot_id": BOT_ID}

    def _chat_postMessage(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(body.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        problem = self._check_content(body)
        if problem:
            return problem
        thread_ts = body.get("thread_ts")
        if thread_ts:
            parent = self._messages.get((channel, str(thread_ts)))
            if parent is None:
                # Stricter than Slack, so a lost thread root shows up in tests.
                return {"ok": False, "error": "thread_not_found"}
            thread_ts = parent.get("thread_ts", parent["ts"])  # a reply to a reply joins its thread
        ts = self._new_ts()
        msg: dict[str, Any] = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "team": TEAM_ID,
                               "channel": channel, "ts": ts, "text": body.get("text") or "",
                               "blocks": list(body.get("blocks") or [])}
        if thread_ts:
            msg["thread_ts"] = str(thread_ts)
        self._messages[(channel, ts)] = msg
        self._order.append((channel, ts))
        return {"ok": True, "channel": channel, "ts": ts, "message": _public(msg)}

    def _chat_update(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve(body.get("channel"))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        ts = str(body.get("ts") or "")
        msg = self._messages.get((channel, ts))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        problem = self._check_content(body)
        if problem:
            return problem
        if "text" in body:
            msg["text"] = body.get("text") or ""
        if "blocks" in body:
            msg["blocks"] = list(body.get("blocks") or [])
        msg["edited"] = {"user": BOT_USER, "ts": self._new_ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": msg["text"], "message": _public(msg)}

    # -- helpers

    def _resolve(self, channel: Any) -> str | None:
        return self.channels.get(str(channel)) if channel else None

    def _new_ts(self) -> str:
        self._next_ts += 100
        return f"{self._next_ts // 1_000_000}.{self._next_ts % 1_000_000:06d}"

    @staticmethod
    def _check_content(body: dict[str, Any]) -> dict[str, Any] | None:
        text, blocks = body.get("text"), body.get("blocks")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if text and len(text) > MAX_TEXT_CHARS:
            return {"ok": False, "error": "msg_too_long"}
        if blocks is None:
            return None
        errors = _block_errors(blocks)
        if errors:
            return {"ok": False, "error": "invalid_blocks", "errors": errors,
                    "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
        return None

    @staticmethod
    def _channel_map(channels: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
        if channels is None:
            return dict(DEFAULT_CHANNELS)
        if isinstance(channels, Mapping):
            out = dict(channels)
            out.update({cid: cid for cid in channels.values()})
            return out
        out = {}
        for name in channels:  # a bare set: ids answer to themselves, names get a made-up id
            cid = name if not name.startswith("#") else "C" + name.lstrip("#").upper().replace("-", "")[:10]
            out[name] = cid
            out[cid] = cid
        return out


def _public(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != "channel"}


def _block_errors(blocks: Any) -> list[str]:
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    errors = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or "type" not in block:
            errors.append(f"missing required field: type [json-pointer:/blocks/{i}]")
            continue
        text = block.get("text")
        if block["type"] == "section":
            if not isinstance(text, dict) and not block.get("fields"):
                errors.append(f"missing required field: text [json-pointer:/blocks/{i}]")
            elif isinstance(text, dict) and len(text.get("text", "")) > MAX_SECTION_CHARS:
                errors.append(f"must be less than {MAX_SECTION_CHARS + 1} characters "
                              f"[json-pointer:/blocks/{i}/text/text]")
        elif block["type"] == "header":
            if not isinstance(text, dict) or text.get("type") != "plain_text":
                errors.append(f"must be a plain_text object [json-pointer:/blocks/{i}/text]")
            elif len(text.get("text", "")) > MAX_HEADER_CHARS:
                errors.append(f"must be less than {MAX_HEADER_CHARS + 1} characters "
                              f"[json-pointer:/blocks/{i}/text/text]")
        elif block["type"] == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                errors.append(f"elements must have 1 to 10 items [json-pointer:/blocks/{i}/elements]")
        elif block["type"] not in ("divider", "actions", "image", "rich_text", "input", "file", "video"):
            errors.append(f"unknown block type {block['type']!r} [json-pointer:/blocks/{i}/type]")
    return errors
