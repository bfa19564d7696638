"""The Slack app: slash command, thread buttons and @mentions, on slack-bolt.

It shares the responder's aiohttp server (HTTP mode, ``POST /slack/events`` for events, slash
commands and interactivity alike) and, when an app-level token is configured, also listens over
Socket Mode. Either way every request passes through bolt's request verification first: the v0
HMAC-SHA256 signature over ``v0:{timestamp}:{raw body}`` with the signing secret, a 300-second
window and a constant-time comparison; a bad or stale signature gets 401 and no listener runs.

Each listener acknowledges at once (Slack wants an answer within 3 s) after the cheap part is
done: a capture request is parsed strictly (``responder.slack.commands``) and *stored* as an ad
hoc incident before the ack says so, so an accepted request survives a restart. The capture
itself runs in the responder's workers; its result arrives through the outbox like any
incident's: a slash command's as a new thread in the channel it was typed in, a button's or a
mention's as replies in the incident's own thread.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from capture.probes import CATALOG
from common.http import JsonBodyError, load_json, read_body
from responder.config import Settings
from responder.model.adhoc import AdhocRequest, Overloaded
from responder.pipeline import Pipeline
from responder.pipeline.gather import baseline_end
from responder.pipeline.stage import alert_labels
from responder.render import thread as report
from responder.render.view import IncidentView, likelihood
from responder.slack import commands
from responder.store.base import AcceptResult, Incident, StoreBase

if TYPE_CHECKING:  # imported when Socket Mode starts: only then is it needed
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

log = logging.getLogger(__name__)

SINK = "slack"
MAX_BODY_BYTES = 1 << 20
_INCIDENT_ID_RE = re.compile(r"inc-[0-9a-f]{6,32}")
# Labels of an incident that are not the workload's: not copied into a follow-up capture.
_NOT_SCOPE = ("alertname", "severity", "slo", "long_window", "short_window")


def _form_problem(text: str, content_type: str) -> str | None:
    """What bolt could not parse in a signed body, said before it tries (it would raise). Bolt
    reads a body as JSON when it is sent as JSON or starts with "{", else as a form whose
    ``payload`` field (interactivity) is JSON: each must then be a JSON object."""
    try:
        if content_type == "application/json" or text.startswith("{"):
            doc = load_json(text.encode())
            return None if isinstance(doc, dict) else "body: expected a JSON object"
        if "payload" in text:
            payload = dict(parse_qsl(text, keep_blank_values=True)).get("payload")
            if payload is not None and not isinstance(load_json(payload.encode("utf-8", "surrogatepass")), dict):
                return "payload: expected a JSON object"
    except JsonBodyError as e:
        return f"body: {e}"
    except ValueError as e:  # a malformed form
        return f"body: {e}"
    return None


class Responder(Protocol):
    store: StoreBase
    pipeline: Pipeline
    settings: Settings

    async def start_adhoc(self, req: AdhocRequest) -> AcceptResult: ...


class SlackApp:
    """The bolt app bound to one responder."""

    def __init__(self, responder: Responder, settings: Settings) -> None:
        if not settings.slack_bot_token or not settings.slack_signing_secret:
            raise ValueError("the Slack app needs LLMSLO_SLACK_BOT_TOKEN and LLMSLO_SLACK_SIGNING_SECRET")
        self.responder = responder
        self.settings = settings
        # Retries belong to the outbox (responder.delivery.outbox); this client only answers users.
        self.client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url,
                                     retry_handlers=[])
        self.app = AsyncApp(token=settings.slack_bot_token, signing_secret=settings.slack_signing_secret,
                            client=self.client, request_verification_enabled=True,
                            raise_error_for_unhandled_request=False)
        self.verifier = SignatureVerifier(settings.slack_signing_secret)
        self.socket_mode: AsyncSocketModeHandler | None = None
        self.app.command("/llmslo")(self.on_command)
        self.app.action(report.ACTION_CAPTURE_AGAIN)(self.on_capture_button)
        self.app.action(report.ACTION_DEEP_CAPTURE)(self.on_capture_button)
        self.app.action(report.ACTION_ACKNOWLEDGE)(self.on_acknowledge)
        self.app.event("app_mention")(self.on_mention)
        self.app.event("message")(self.on_message)  # other messages: nothing to do, but handled

    # -- transport ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: the signature checked here first (a malformed timestamp or
        signature is a 401 like a wrong one, and an unsigned body is never logged), then one bolt
        dispatch (which verifies again)."""
        body = await read_body(request, MAX_BODY_BYTES)
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        try:
            text = body.decode("utf-8")  # Slack signs UTF-8 text; other bytes cannot carry a valid signature
        except UnicodeDecodeError:
            text = None
        if not (text is not None and timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12
                and signature.isascii() and self.verifier.is_valid(text, timestamp, signature)):
            log.warning("event=slack_request_refused reason=signature peer=%s", request.remote)
            return web.json_response({"error": "invalid or missing Slack signature"}, status=401)
        problem = _form_problem(text, request.content_type)
        if problem:
            return web.json_response({"error": problem}, status=400)
        # bolt wants a dict; built from the pairs as bolt reads them (a repeated header: the last)
        bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=dict(request.headers.items()))
        return await to_aiohttp_response(await self.app.async_dispatch(bolt_request))

    async def start(self) -> None:
        if self.settings.slack_app_token:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self.socket_mode = AsyncSocketModeHandler(self.app, self.settings.slack_app_token, web_client=self.client)
            await self.socket_mode.connect_async()
            log.info("event=slack_socket_mode_connected")

    async def stop(self) -> None:
        if self.socket_mode is not None:
            await self.socket_mode.close_async()
            self.socket_mode = None
        if self.client.session is not None and not self.client.session.closed:
            await self.client.session.close()

    # -- listeners ----------------------------------------------------------------------------

    async def on_command(self, ack, command: dict[str, Any]) -> None:
        user, channel = command.get("user_id") or "", command.get("channel_id") or ""
        try:
            cmd = commands.parse(command.get("text") or "", CATALOG)
        except commands.CommandError as e:
            await ack(response_type="ephemeral", text=str(e))
            return
        if isinstance(cmd, commands.Help):
            await ack(response_type="ephemeral", text=commands.USAGE)
        elif isinstance(cmd, commands.Status):
            await ack(response_type="ephemeral", text=await self.status_text(cmd.incident_id))
        else:
            labels = {**cmd.labels, self.settings.slack_channel_label: channel}
            await ack(response_type="ephemeral",
                      text=await self.start_capture(cmd, labels, user, reason=f"/llmslo capture by {user}"))

    async def on_mention(self, event: dict[str, Any], say) -> None:
        channel, user = event.get("channel") or "", event.get("user") or ""
        thread_ts = event.get("thread_ts")
        where = thread_ts or event.get("ts")
        inc = await self._thread_incident(channel, thread_ts) if thread_ts else None
        try:
            cmd = commands.parse(commands.strip_mentions(event.get("text") or ""), CATALOG,
                                 target_required=inc is None)
        except commands.CommandError as e:
            await say(text=str(e), thread_ts=where)
            return
        if isinstance(cmd, commands.Help):
            await say(text=commands.USAGE, thread_ts=where)
        elif isinstance(cmd, commands.Status):
            await say(text=await self.status_text(cmd.incident_id or (inc.id if inc else None)), thread_ts=where)
        elif inc is not None:
            await say(text=await self.follow_up(inc, user, cmd), thread_ts=where)
        else:
            labels = {**cmd.labels, self.settings.slack_channel_label: channel}
            await say(text=await self.start_capture(cmd, labels, user, reason=f"@mention capture by {user}"),
                      thread_ts=where)

    async def on_message(self, ack) -> None:
        await ack()

    async def on_capture_button(self, ack, body: dict[str, Any], action: dict[str, Any], respond) -> None:
        await ack()
        found = await self._button_incident(body, action, respond)
        if found is None:
            return
        inc, user = found
        deep = action.get("action_id") == report.ACTION_DEEP_CAPTURE
        text = await self.follow_up(inc, user, commands.Capture(duration_s=report.DEEP_CAPTURE_S if deep else None))
        if text.startswith(":warning:"):
            await respond(response_type="ephemeral", replace_original=False, text=text)

    async def on_acknowledge(self, ack, body: dict[str, Any], action: dict[str, Any], respond) -> None:
        await ack()
        found = await self._button_incident(body, action, respond)
        if found is not None:
            await self.responder.pipeline.acknowledge(found[0].id, found[1])

    async def _button_incident(self, body: dict[str, Any], action: dict[str, Any],
                               respond) -> tuple[Incident, str] | None:
        """(the incident a button names, who pressed it); None, having told them, when it is unknown."""
        inc = await self._incident_of(action)
        if inc is None:
            await respond(response_type="ephemeral", replace_original=False,
                          text="That incident is not known to this responder.")
            return None
        return inc, (body.get("user") or {}).get("id") or ""

    # -- work ---------------------------------------------------------------------------------

    async def start_capture(self, cmd: commands.Capture, labels: dict[str, str], user: str, reason: str,
                            reply_to: dict[str, str] | None = None, playbook: str | None = None,
                            started_at: float | None = None) -> str:
        """Store the capture request; what to tell the person who asked."""
        req = AdhocRequest(labels=labels, reason=reason, playbook=playbook, started_at=started_at,
                           duration_s=cmd.duration_s, probes=list(cmd.probes) if cmd.probes else None,
                           requested_by=user or None, reply_to=reply_to)
        try:
            result = await self.responder.start_adhoc(req)
        except Overloaded as e:
            return f":warning: Not started: {e}."
        where = "in this thread" if reply_to else "as a new thread in this channel"
        return (f":mag: Capture of {commands.Capture(cmd.labels, cmd.duration_s, cmd.probes).describe()} started "
                f"(incident `{result.incident_id}`); the result will be posted {where}.")

    async def follow_up(self, inc: Incident, user: str, cmd: commands.Capture) -> str:
        """A capture asked for inside ``inc``'s thread: the incident's workload unless the command
        names another, its playbook, its thread for the answer, and its baseline (the one from
        before the burn began, not the last minute, which the fault already fills)."""
        thread = (inc.thread or {}).get(SINK)
        if not thread:
            return ":warning: This incident has no Slack thread yet; try again in a moment."
        labels = cmd.labels or {k: v for k, v in alert_labels(inc).items() if k not in _NOT_SCOPE}
        reply_to = {"sink": SINK, "channel": str(thread["channel"]), "ts": str(thread["ts"]), "incident_id": inc.id}
        playbook = inc.playbook if not cmd.labels else None
        return await self.start_capture(commands.Capture(labels, cmd.duration_s, cmd.probes), labels, user,
                                        reason=f"follow-up capture of {inc.id} by {user}", reply_to=reply_to,
                                        playbook=playbook, started_at=baseline_end(inc))

    async def status_text(self, incident_id: str | None) -> str:
        store = self.responder.store
        if incident_id:
            inc = await asyncio.to_thread(store.get_incident, incident_id)
            if inc is None:
                return f"No incident `{incident_id}`."
            return _status_line(inc, self.responder.pipeline.incident_url(inc.id))
        firing = await asyncio.to_thread(store.list_incidents, 10, "firing")
        if not firing:
            return "No incident is open."
        return "\n".join(_status_line(i, self.responder.pipeline.incident_url(i.id)) for i in firing)

    async def _incident_of(self, action: dict[str, Any]) -> Incident | None:
        value = str(action.get("value") or "")
        if not _INCIDENT_ID_RE.fullmatch(value):
            return None
        return await asyncio.to_thread(self.responder.store.get_incident, value)

    async def _thread_incident(self, channel: str, ts: str) -> Incident | None:
        return await asyncio.to_thread(self.responder.store.incident_by_thread, SINK, channel, ts)


def _status_line(inc: Incident, url: str) -> str:
    view = IncidentView.of(inc.to_dict())
    finding = f"{' + '.join(view.domains)} {likelihood(view.verdict)}" if view.verdict and view.domains else view.state
    age = time.time() - inc.created_at
    return f"<{url}|{inc.id}> · {inc.status} · {view.alertname} · {finding} · opened {int(age // 60)} min ago"
