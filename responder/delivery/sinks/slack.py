"""The Slack chat sink: one thread per incident through the Slack Web API.

Built on slack-sdk's ``AsyncWebClient`` with its retry handlers turned off: the responder's outbox
owns retrying, so one call here is one HTTP request, and a failure comes back as
:class:`SinkRetryableError` (with Slack's ``Retry-After`` when it sent one) or
:class:`SinkPermanentError` (with what to fix).
"""
from __future__ import annotations

import re
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from responder.delivery.sinks.base import SinkPermanentError, SinkRetryableError, ThreadRef
from responder.render.thread import Message

# ``ok: false`` errors that a later attempt can get past (Slack's documented transient errors).
RETRYABLE_ERRORS = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout", "team_added_to_org",
})

# What to do about the permanent errors a responder is likely to meet.
_HINTS = {
    "not_authed": "set LLMSLO_SLACK_BOT_TOKEN to the bot token (xoxb-...)",
    "invalid_auth": "check LLMSLO_SLACK_BOT_TOKEN: the token was not accepted",
    "token_revoked": "the bot token was revoked; reinstall the app and update LLMSLO_SLACK_BOT_TOKEN",
    "account_inactive": "the bot token belongs to a deleted app or workspace",
    "channel_not_found": "check LLMSLO_SLACK_CHANNEL or the playbook's channel, and that the bot can see it",
    "not_in_channel": "invite the bot to the channel (/invite @bot)",
    "is_archived": "the channel is archived; choose another channel",
    "missing_scope": "add the chat:write, files:write and channels:history (groups:history for a private "
                     "channel) scopes to the Slack app and reinstall it",
    "invalid_blocks": "the message's Block Kit blocks were rejected; this is a rendering bug",
    "msg_too_long": "the message text is too long; this is a rendering bug",
    "message_not_found": "the thread's root message is gone (deleted?)",
    "cant_update_message": "the root message was not posted by this bot",
}


class SlackSink:
    name = "slack"

    def __init__(self, token: str, default_channel: str, base_url: str = "https://slack.com/api/",
                 timeout: float = 10) -> None:
        if not token:
            raise ValueError("SlackSink: token is empty; set LLMSLO_SLACK_BOT_TOKEN")
        self.default_channel = default_channel
        self.timeout = timeout
        # slack_sdk hints timeout as int, but only hands it to aiohttp.ClientTimeout, which takes seconds as float
        self._client = AsyncWebClient(token=token, base_url=base_url, timeout=timeout,  # type: ignore[arg-type]
                                      retry_handlers=[])
        self._session: aiohttp.ClientSession | None = None
        self._channel_ids: dict[str, str] = {}

    async def check(self) -> dict[str, Any]:
        """Verify the token with ``auth.test``; returns Slack's answer (team, user, bot_id)."""
        resp = await self._call("auth.test", self._client.auth_test)
        return dict(resp.data)

    def _channel(self, channel: str | None) -> str:
        channel = channel or self.default_channel
        if not channel:
            raise SinkPermanentError("Slack: no channel given and no default; set LLMSLO_SLACK_CHANNEL",
                                     code="channel_not_found")
        return channel

    async def post_root(self, channel: str | None, message: Message, key: str | None = None) -> ThreadRef:
        resp = await self._call("chat.postMessage", self._client.chat_postMessage,
                                channel=self._channel(channel), text=message.text, blocks=message.blocks or None,
                                metadata=_metadata(key))
        return ThreadRef(channel=resp["channel"], ts=resp["ts"])

    async def find_root(self, channel: str | None, key: str, since: float) -> ThreadRef | None:
        channel_id = await self._channel_id(self._channel(channel))
        cursor = None
        for _ in range(LOOKUP_PAGES):
            resp = await self._call("conversations.history", self._client.conversations_history, channel=channel_id,
                                    oldest=f"{max(0.0, since):.6f}", include_all_metadata=True, limit=200,
                                    cursor=cursor)
            for m in resp.get("messages") or []:
                if _has_key(m, key) and m.get("thread_ts") in (None, m.get("ts")):
                    return ThreadRef(channel=channel_id, ts=str(m["ts"]))
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def find_reply(self, thread: ThreadRef, key: str, since: float) -> str | None:
        cursor = None
        for _ in range(LOOKUP_PAGES):
            resp = await self._call("conversations.replies", self._client.conversations_replies,
                                    channel=thread.channel, ts=thread.ts, oldest=f"{max(0.0, since):.6f}",
                                    include_all_metadata=True, limit=200, cursor=cursor)
            for m in resp.get("messages") or []:
                if _has_key(m, key) and m.get("ts") != thread.ts:
                    return str(m["ts"])
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
        return None

    async def _channel_id(self, channel: str) -> str:
        """conversations.history wants a channel id; a configured ``#name`` is looked up once."""
        if _CHANNEL_ID.fullmatch(channel):
            return channel
        name = channel.lstrip("#")
        if name in self._channel_ids:
            return self._channel_ids[name]
        cursor = None
        for _ in range(LOOKUP_PAGES):
            resp = await self._call("conversations.list", self._client.conversations_list,
                                    types="public_channel,private_channel", exclude_archived=True, limit=200,
                                    cursor=cursor)
            for c in resp.get("channels") or []:
                if c.get("name") == name:
                    self._channel_ids[name] = str(c["id"])
                    return self._channel_ids[name]
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                break
        raise SinkPermanentError(f"Slack conversations.list: no channel named {channel!r} the bot can see",
                                 code="channel_not_found")

    async def edit(self, thread: ThreadRef, message: Message, ts: str | None = None) -> None:
        # An empty list clears the old blocks; None would leave them in place.
        await self._call("chat.update", self._client.chat_update, channel=thread.channel, ts=ts or thread.ts,
                         text=message.text, blocks=message.blocks)

    async def reply(self, thread: ThreadRef, message: Message, key: str | None = None) -> str:
        resp = await self._call("chat.postMessage", self._client.chat_postMessage, channel=thread.channel,
                                thread_ts=thread.ts, text=message.text, blocks=message.blocks or None,
                                metadata=_metadata(key))
        return resp["ts"]

    async def upload_file(self, thread: ThreadRef, filename: str, content: bytes, title: str,
                          comment: str) -> str:
        # files_upload_v2: files.getUploadURLExternal, the bytes to the URL it gives, then
        # files.completeUploadExternal sharing the file into the thread (files.upload is retired).
        resp = await self._call("files.upload_v2", self._client.files_upload_v2, channel=thread.channel,
                                thread_ts=thread.ts, content=content, filename=filename, title=title,
                                initial_comment=comment)
        files = resp.get("files") or [resp.get("file") or {}]
        return str((files[0] or {}).get("id") or "")

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._client.session = None

    async def _call(self, method: str, fn, **kwargs: Any):
        if self._session is None or self._session.closed:
            # One pooled session per sink, created inside the running loop; its timeout is ours
            # (slack-sdk applies ``timeout`` only to sessions it makes itself).
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._client.session = self._session
        try:
            return await fn(**kwargs)
        except SlackApiError as e:
            raise _from_api_error(method, e) from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise SinkRetryableError(f"Slack {method}: {type(e).__name__}: {e or 'timed out'}; "
                                     "Slack could not be reached, will retry") from e
        except SlackClientError as e:  # e.g. a malformed request the SDK refused to send
            raise SinkPermanentError(f"Slack {method}: {e}") from e


# Message metadata (Slack keeps it with the message; conversations.history and .replies return it
# with include_all_metadata) carries the outbox key, so an interrupted post can be found again.
METADATA_EVENT = "llmslo_outbox"
# Pages of 200 messages a lookup reads at most.
LOOKUP_PAGES = 5
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{6,}")


def _metadata(key: str | None) -> dict | None:
    return None if key is None else {"event_type": METADATA_EVENT, "event_payload": {"key": key}}


def _has_key(message: dict, key: str) -> bool:
    meta = message.get("metadata") or {}
    return meta.get("event_type") == METADATA_EVENT and (meta.get("event_payload") or {}).get("key") == key


def _from_api_error(method: str, e: SlackApiError) -> SinkRetryableError | SinkPermanentError:
    resp = e.response
    status = getattr(resp, "status_code", None) or getattr(resp, "status", None) or 0
    headers = getattr(resp, "headers", None) or {}
    data = getattr(resp, "data", None)
    code = data.get("error") if isinstance(data, dict) else None
    if status == 429 or code in ("ratelimited", "rate_limited"):
        retry_after = _retry_after(headers)
        wait = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
        return SinkRetryableError(f"Slack {method}: rate limited{wait}", retry_after=retry_after,
                                  code=code or "ratelimited")
    if status >= 500 or code in RETRYABLE_ERRORS:
        return SinkRetryableError(f"Slack {method}: HTTP {status} {code or ''}".rstrip() + "; will retry",
                                  retry_after=_retry_after(headers), code=code)
    hint = _HINTS.get(code or "", "")
    detail = code or f"HTTP {status}"
    if code == "invalid_blocks" and isinstance(data, dict) and data.get("errors"):
        detail += f" {data['errors']}"
    return SinkPermanentError(f"Slack {method}: {detail}" + (f"; {hint}" if hint else ""), code=code)


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except AttributeError:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None
