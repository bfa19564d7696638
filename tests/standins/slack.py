"""A local stand-in for the Slack Web API, served over a real socket.

Implements ``chat.postMessage`` (with message ``metadata``), ``chat.update``, ``auth.test``,
``conversations.history``, ``conversations.replies`` and ``conversations.list`` (ids only, cursor
pagination, ``include_all_metadata``), the file upload flow
(``files.getUploadURLExternal``, a POST of the bytes to the URL it hands out,
``files.completeUploadExternal``) and Socket Mode (``apps.connections.open`` with an app-level
token, then a WebSocket that says ``hello`` and carries envelopes the client must acknowledge
with their ``envelope_id``) the way Slack documents them: form-encoded or JSON bodies,
``Authorization: Bearer`` tokens (or a ``token`` form field), errors as HTTP 200 with
``{"ok": false, "error": ...}``, channel names resolved to ids, and ``ts`` values that increase.
It checks the Block Kit limits Slack enforces (50 blocks, 3000-character sections, 150-character
headers, 25 buttons of at most 75 characters) so a rendering bug fails here as
``invalid_blocks``. ``response_url`` posts (how an app answers a button) land in
:attr:`SlackStandin.responses`.

Tests read back what landed (:meth:`SlackStandin.threads`, :attr:`SlackStandin.calls`,
:attr:`SlackStandin.files`), build signed requests like Slack's (:func:`signed_headers`) and
inject faults (:meth:`SlackStandin.fail_next`, :meth:`SlackStandin.stall_next`,
:meth:`SlackStandin.hang_after_next`: the call is carried out, then its answer never comes).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from tests.standins.loopback import LoopbackServer

DEFAULT_TOKEN = "xoxb-0000000000-llmslo-standin"
APP_TOKEN = "xapp-1-llmslo-standin"
SIGNING_SECRET = "llmslo-standin-signing-secret-0001"
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
        self.root_url = ""
        self.files: dict[str, dict[str, Any]] = {}  # file id -> {"content", "title", "channel", "thread_ts", ...}
        self.responses: list[dict[str, Any]] = []  # what apps posted to response_url
        self._file_ids = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._acks: dict[str, asyncio.Future] = {}
        self._connected = asyncio.Event()

    # -- lifecycle

    def app(self) -> web.Application:
        app = web.Application()
        for method in ("chat.postMessage", "chat.update", "auth.test", "files.getUploadURLExternal",
                       "files.completeUploadExternal", "apps.connections.open", "conversations.history",
                       "conversations.replies", "conversations.list"):
            app.router.add_post(f"/api/{method}", self._handler(method))
            app.router.add_get(f"/api/{method}", self._handler(method))  # Slack takes GET with a query too
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/respond/{ref}", self._respond)
        app.router.add_get("/socket", self._socket)
        return app

    async def start(self) -> str:
        """The Web API base URL (what slack-sdk takes as ``base_url``)."""
        self.root_url = await super().start()
        self.base_url = self.root_url + "/api/"
        return self.base_url

    def response_url(self, ref: str = "1") -> str:
        return f"{self.root_url}/respond/{ref}"

    # -- Socket Mode

    async def wait_socket(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def send_envelope(self, kind: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send one envelope (``events_api``, ``slash_commands`` or ``interactive``) over the open
        socket and return the client's acknowledgement."""
        await self.wait_socket(timeout)
        envelope_id = f"env-{next(self._file_ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = fut
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": kind, "payload": payload,
                                           "accepts_response_payload": kind != "events_api",
                                           "retry_attempt": 0, "retry_reason": ""})
        return await asyncio.wait_for(fut, timeout)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": len(self._sockets),
                            "connection_info": {"app_id": "A0LLMSLO"}})
        self._connected.set()
        async for msg in ws:
            try:
                data = json.loads(msg.data)
            except (TypeError, ValueError):
                continue
            fut = self._acks.pop(str(data.get("envelope_id")), None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        self._sockets.remove(ws)
        return ws

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await super().stop()

    # -- response_url and uploads

    async def _respond(self, request: web.Request) -> web.Response:
        self.responses.append({"ref": request.match_info["ref"], **(await request.json())})
        return web.Response(text="ok")

    async def _upload(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["file_id"])
        if f is None or f.get("content") is not None:
            return web.Response(status=404, text="unknown or used upload URL")
        f["content"] = await request.read()
        if len(f["content"]) != f["length"]:
            return web.Response(status=400, text=f"expected {f['length']} bytes, got {len(f['content'])}")
        return web.Response(text=f"OK - {len(f['content'])}")

    # -- fault injection

    def fail_next(self, n: int = 1, status: int = 429, retry_after: float | None = 1,
                  error: str | None = None) -> None:
        """Answer the next ``n`` API calls with HTTP ``status`` (429 carries ``Retry-After``)."""
        code = error or ("ratelimited" if status == 429 else "fatal_error" if status >= 500 else "invalid_request")
        for _ in range(n):
            self._faults.append({"status": status, "error": code,
                                 "retry_after": retry_after if status == 429 else None})

    def stall_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Hold the next ``n`` calls for ``seconds``, then drop them unexecuted with a 503 (a request
        lost on the way: it exercises client timeouts without a late duplicate landing)."""
        for _ in range(n):
            self._faults.append({"stall": seconds})

    def hang_after_next(self, method: str, seconds: float = 3600.0) -> None:
        """Carry out the next call of ``method``, then hold its answer for ``seconds`` (the
        client sees a post that may or may not have happened: a crash or timeout right there)."""
        self._faults.append({"hang_after": method, "seconds": seconds})

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
            call: dict[str, Any] = {"method": method, "body": body, "at": time.monotonic(),
                                    "content_type": request.headers.get("Content-Type", "")}
            self.calls.append(call)
            hang = None
            if self._faults and "hang_after" in self._faults[0]:
                if self._faults[0]["hang_after"] == method:
                    hang = self._faults.pop(0)["seconds"]
            elif self._faults:
                fault = self._faults.pop(0)
                if "stall" in fault:
                    await asyncio.sleep(fault["stall"])
                    call["status"] = 503
                    return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
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
            if hang is not None:
                call["hung"] = True
                await asyncio.sleep(hang)
            return web.json_response(result)  # Slack answers API errors with HTTP 200 too

        return handle

    async def _parse_body(self, request: web.Request) -> dict[str, Any] | None:
        ctype = request.content_type
        try:
            if ctype == "application/json":
                data = await request.json()
                return data if isinstance(data, dict) else None
            form = await request.post()
            # Arguments may come in the query string too (slack-sdk sends some methods' that way).
            body: dict[str, Any] = {**{k: v for k, v in request.query.items()},
                                    **{k: v for k, v in form.items() if isinstance(v, str)}}
            for key in ("blocks", "attachments", "metadata", "files"):  # JSON-encoded inside the form
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
        expected = APP_TOKEN if request.path.endswith("/apps.connections.open") else self.token
        if token != expected:
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
        if isinstance(body.get("metadata"), dict):
            meta = body["metadata"]
            if not isinstance(meta.get("event_type"), str) or not isinstance(meta.get("event_payload"), dict):
                return {"ok": False, "error": "invalid_metadata_format"}
            msg["metadata"] = {"event_type": meta["event_type"], "event_payload": meta["event_payload"]}
        self._messages[(channel, ts)] = msg
        self._order.append((channel, ts))
        return {"ok": True, "channel": channel, "ts": ts, "message": _public(msg)}

    def _apps_connections_open(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.root_url.replace("http://", "ws://") + "/socket"}

    def _files_getUploadURLExternal(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            length = int(body.get("length"))
        except (TypeError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        if not body.get("filename") or length <= 0:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._file_ids):08d}"
        self.files[file_id] = {"id": file_id, "filename": body["filename"], "length": length, "content": None,
                               "shared": False}
        return {"ok": True, "upload_url": f"{self.root_url}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, body: dict[str, Any]) -> dict[str, Any]:
        files = body.get("files")
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        channel = self._resolve(body.get("channel_id")) if body.get("channel_id") else None
        if body.get("channel_id") and channel is None:
            return {"ok": False, "error": "channel_not_found"}
        thread_ts = body.get("thread_ts")
        if thread_ts and (channel is None or (channel, str(thread_ts)) not in self._messages):
            return {"ok": False, "error": "invalid_thread_ts"}
        out = []
        for item in files:
            f = self.files.get(str((item or {}).get("id")))
            if f is None or f["content"] is None:
                return {"ok": False, "error": "file_not_found"}
            f.update(title=item.get("title") or f["filename"], channel=channel, thread_ts=thread_ts,
                     initial_comment=body.get("initial_comment"), shared=channel is not None)
            out.append({"id": f["id"], "title": f["title"], "name": f["filename"]})
        return {"ok": True, "files": out}

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

    def _conversations_list(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = sorted({cid for cid in self.channels.values()})
        names = {cid: next((n.lstrip("#") for n in self.channels if n != cid and self.channels[n] == cid), cid.lower())
                 for cid in ids}
        return self._page([{"id": cid, "name": names[cid], "is_channel": True} for cid in ids], body, "channels")

    def _conversations_history(self, body: dict[str, Any]) -> dict[str, Any]:
        channel = str(body.get("channel") or "")
        if channel not in self.channels.values():  # Slack wants the id here, never a #name
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(body.get("oldest") or 0)
        msgs = [self._messages[k] for k in reversed(self._order)
                if k[0] == channel and "thread_ts" not in self._messages[k] and float(k[1]) >= oldest]
        return self._page([_public(m, _truthy(body.get("include_all_metadata"))) for m in msgs], body, "messages")

    def _conversations_replies(self, body: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(body.get("channel") or ""), str(body.get("ts") or "")
        root = self._messages.get((channel, ts))
        if root is None:
            return {"ok": False, "error": "thread_not_found"}
        oldest = float(body.get("oldest") or 0)
        msgs = [root] + [self._messages[k] for k in self._order
                         if k[0] == channel and self._messages[k].get("thread_ts") == ts and float(k[1]) >= oldest]
        return self._page([_public(m, _truthy(body.get("include_all_metadata"))) for m in msgs], body, "messages")

    @staticmethod
    def _page(items: list[dict[str, Any]], body: dict[str, Any], key: str) -> dict[str, Any]:
        """Cursor pagination as Slack does it: ``limit`` items, then ``next_cursor`` (empty: done)."""
        limit = max(1, min(int(body.get("limit") or 100), 1000))
        start = int(body.get("cursor") or 0)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return {"ok": True, key: page, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    # -- helpers

    def _resolve(self, channel: Any) -> str | None:
        return self.channels.get(str(channel)) if channel else None

    def _new_ts(self) -> str:
        # Unix time in microseconds, as Slack's ts is, and strictly increasing.
        self._next_ts = max(self._next_ts + 100, int(time.time() * 1_000_000))
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


def _truthy(v: Any) -> bool:
    return v is True or str(v).lower() in ("1", "true")


def _public(msg: dict[str, Any], with_metadata: bool = False) -> dict[str, Any]:
    """A message as the API returns it; its metadata only when asked for (include_all_metadata)."""
    return {k: v for k, v in msg.items() if k != "channel" and (with_metadata or k != "metadata")}


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
        elif block["type"] == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                errors.append(f"elements must have 1 to 25 items [json-pointer:/blocks/{i}/elements]")
                continue
            for j, el in enumerate(elements):
                label = ((el or {}).get("text") or {}).get("text", "")
                if el.get("type") == "button" and (not label or len(label) > 75 or len(el.get("value", "")) > 2000
                                                   or not el.get("action_id")):
                    errors.append(f"invalid button [json-pointer:/blocks/{i}/elements/{j}]")
        elif block["type"] not in ("divider", "image", "rich_text", "input", "file", "video"):
            errors.append(f"unknown block type {block['type']!r} [json-pointer:/blocks/{i}/type]")
    return errors


def signed_headers(body: bytes, secret: str = SIGNING_SECRET, timestamp: float | None = None) -> dict[str, str]:
    """The headers Slack signs a request with: ``v0=`` HMAC-SHA256 of ``v0:{ts}:{body}``."""
    ts = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}
