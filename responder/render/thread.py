"""What an incident's chat thread shows, rendered once for every sink.

Each function returns a :class:`Message`: a plain-text fallback (what notifications, screen readers
and the console sink show) and Slack Block Kit blocks. The thread is:

- the root message, one line of status at a glance, edited in place as the incident moves
  (capturing -> attributed / abstained -> resolved): :func:`render_root`;
- the attribution reply, written for the person on call: the verdict, the signals that decided it,
  what it is not, the capture's scope and cost and the links; the full table of hypotheses and
  evidence is on the incident page it links to: :func:`render_attribution`;
- a reply when the incident resolves: :func:`render_resolved`;
- a reply when the capture or the pipeline failed: :func:`render_error`.

Every renderer reads an :class:`~responder.render.view.IncidentView`. Slack's Block Kit limits are
enforced here, not left to the API to reject: at most 50 blocks per message, section text at most
3000 characters and header text at most 150, both cut with "…".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from capture.attribution import peers
from capture.attribution.verdict import Evidence, Verdict
from capture.schemas import CaptureResult
from responder.model import adhoc
from responder.playbooks import PIN_LABEL
from responder.render.view import (
    STATE_ABSTAINED,
    STATE_ATTRIBUTED,
    STATE_CAPTURING,
    STATE_FAILED,
    STATE_RESOLVED,
    IncidentView,
    capture_problems,
    change,
    clock,
    confidence_phrase,
    confirms,
    duration,
    likelihood,
    num,
    verdict_phrase,
)

# Slack limits (Block Kit reference): blocks per message, section / header text, message text.
MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_CONTEXT_CHARS = 3000
MAX_TEXT_CHARS = 40000

# Hypotheses whose evidence is shown when the toolkit abstained: the two it could not separate.
ABSTAIN_HYPOTHESES_SHOWN = 2

ELLIPSIS = "…"
_SLACK_ID_RE = re.compile(r"[SUW][A-Z0-9]{2,20}")

# How the root shows each state.
_STATE_LOOK = {
    STATE_CAPTURING: (":hourglass_flowing_sand:", "CAPTURING"),
    STATE_ATTRIBUTED: (":dart:", "ATTRIBUTED"),
    STATE_ABSTAINED: (":grey_question:", "ABSTAINED"),
    STATE_FAILED: (":warning:", "FAILED"),
    STATE_RESOLVED: (":white_check_mark:", "RESOLVED"),
}


@dataclass
class Message:
    """One chat message: ``text`` is the plain-text fallback, ``blocks`` its Block Kit form."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": [dict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(text=str(d.get("text", "")), blocks=list(d.get("blocks") or []))


# ---------------------------------------------------------------------------------------------
# the root message


# The root's buttons (slash commands cannot be used in threads); each carries the incident id.
ACTION_CAPTURE_AGAIN = "llmslo_capture_again"
ACTION_DEEP_CAPTURE = "llmslo_deep_capture"
ACTION_ACKNOWLEDGE = "llmslo_acknowledge"
DEEP_CAPTURE_S = 60.0


def mention_markup(value: str | None) -> str | None:
    """Slack markup that mentions ``value`` (a user group S…, a user U…/W…, here or channel);
    None for anything else, so a label cannot inject markup."""
    v = (value or "").strip().lstrip("@!")
    if v in ("here", "channel"):
        return f"<!{v}>"
    if _SLACK_ID_RE.fullmatch(v):
        return f"<!subteam^{v}>" if v[0] == "S" else f"<@{v}>"
    return None


def _user(who: str) -> str:
    """A requester or acknowledger: a Slack user id as a mention, anything else as text."""
    return f"<@{who}>" if _SLACK_ID_RE.fullmatch(who) and who[0] in "UW" else _esc(who)


def render_root(incident: dict[str, Any], incident_url: str, mention_label: str | None = None) -> Message:
    """The thread's root: state, alert name, top domain and confidence, incident id and link;
    who was mentioned (``mention_label``'s value), who acknowledged it, and the buttons."""
    view = IncidentView.of(incident)
    state = view.state
    emoji, word = _STATE_LOOK[state]
    alert = view.alertname
    iid = view.id or "?"
    verdict = view.verdict

    finding_md = finding_txt = ""
    if verdict is not None and verdict.domains:
        finding_txt = f"{' + '.join(verdict.domains)} {likelihood(verdict)}"
        finding_md = f"*{_esc(' + '.join(verdict.domains))}* {likelihood(verdict)}"
    elif verdict is not None:
        finding_txt = finding_md = "no fault domain named"
    elif view.preliminary is not None and state == STATE_CAPTURING:
        finding_txt = f"preliminary: {verdict_phrase(view.preliminary)}, confirming"
        finding_md = f"preliminary: *{_esc(verdict_phrase(view.preliminary))}*, confirming"
    elif state == STATE_FAILED:
        finding_txt = finding_md = "capture failed, still firing"

    parts_md = [f"{emoji} *{word}*", f"*{_esc(alert)}*"]
    parts_txt = [f"[{word}]", alert]
    if finding_md:
        parts_md.append(finding_md)
        parts_txt.append(finding_txt)
    parts_md.append(f"incident {_link(incident_url, iid) if incident_url else f'`{_esc(iid)}`'}")
    parts_txt.append(f"incident {iid}" + (f" {incident_url}" if incident_url else ""))

    mention = mention_markup(view.labels.get(mention_label)) if mention_label else None
    if mention is None and mention_label:
        for a in view.alerts:
            mention = mention or mention_markup((a.get("labels") or {}).get(mention_label))
    if mention:
        parts_md.insert(0, mention)
        parts_txt.insert(0, mention)
    line = " · ".join(parts_md)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": _mrkdwn(_clip(line, MAX_SECTION_CHARS))}]
    ack = view.acknowledged
    if ack:
        who = str(ack.get("by") or "someone")
        blocks.append({"type": "context", "elements": [
            _mrkdwn(f":eyes: acknowledged by {_user(who)} at {clock(float(ack.get('at') or 0))} UTC")]})
        parts_txt.append(f"acknowledged by {who}")
    buttons = [_button("Capture again", ACTION_CAPTURE_AGAIN, iid),
               _button(f"Deep capture ({DEEP_CAPTURE_S:g} s)", ACTION_DEEP_CAPTURE, iid)]
    if state != STATE_RESOLVED and not ack:
        buttons.append(_button("Acknowledge", ACTION_ACKNOWLEDGE, iid, style="primary"))
    blocks.append({"type": "actions", "block_id": "llmslo_incident_actions", "elements": buttons})
    return Message(text=" · ".join(parts_txt), blocks=blocks)


def _button(label: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "text": _plain(label), "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


def render_requested(incident: dict[str, Any], incident_url: str) -> Message:
    """The first reply of a capture asked for inside a thread: who asked, for what, its id."""
    opts = adhoc.options(incident.get("alerts") or [])
    labels = {k: v for k, v in ((incident.get("alerts") or [{}])[0].get("labels") or {}).items()
              if k not in ("alertname", PIN_LABEL)}
    what = ", ".join(f"{k}={v}" for k, v in labels.items()) or "(no target labels)"
    extra = []
    if opts.duration_s:
        extra.append(f"{opts.duration_s:g} s")
    if opts.probes:
        extra.append(", ".join(opts.probes))
    who = opts.requested_by
    by_md = f" by {_user(who)}" if who else ""
    iid = str(incident.get("id", "?"))
    md = (f":mag: Capture{by_md}: {_esc(what)}" + (f" · {_esc(' · '.join(extra))}" if extra else "")
          + f" · incident {_link(incident_url, iid) if incident_url else f'`{_esc(iid)}`'}; results follow here.")
    plain = f"Capture{' by ' + who if who else ''}: {what}" + (f" · {' · '.join(extra)}" if extra else "") + \
        f" · incident {iid}; results follow here."
    return Message(text=plain, blocks=[{"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))}])


def render_joined(incident: dict[str, Any], info: dict[str, Any], incident_url: str, early_url: str,
                  mention: str | None, in_its_thread: bool) -> Message:
    """A page joining the early warning that came before it: in the early warning's thread, that
    the SLO is burning now (with the page's mention); in the page's own thread, the early
    warning's verdict and how long before the page it began."""
    view = IncidentView.of(incident)
    lead = max(0.0, float(info.get("lead_s") or 0.0))
    early = info.get("verdict") or info.get("preliminary")
    found = f": {verdict_phrase(Verdict.from_dict(early))}" if early else ", still being investigated"
    if in_its_thread:
        md = (f":rotating_light: *{_esc(view.alertname)}* is paging for this workload {lead:.0f} s after this early "
              f"warning began: the SLO is burning now. Its investigation answers here (incident "
              f"{_link(incident_url, view.id or '?')}).")
        plain = (f"{view.alertname} is paging for this workload {lead:.0f} s after this early warning began: the SLO "
                 f"is burning now. Its investigation answers here (incident {view.id}).")
        if mention:
            md, plain = f"{mention} {md}", f"{mention} {plain}"
    else:
        eid = str(info.get("incident") or "?")
        md = (f":hourglass_flowing_sand: Early warning before this page: *{_esc(str(info.get('alertname') or '?'))}* "
              f"since {clock(float(info.get('warned_at') or 0))} UTC, {lead:.0f} s before it{_esc(found)} · incident "
              f"{_link(early_url, eid)}")
        plain = (f"Early warning before this page: {info.get('alertname') or '?'} since "
                 f"{clock(float(info.get('warned_at') or 0))} UTC, {lead:.0f} s before it{found} · incident {eid}")
    return Message(text=plain, blocks=[{"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))}])


# ---------------------------------------------------------------------------------------------
# the attribution reply

# What the reply shows; everything else (every hypothesis with all its evidence, every query and
# dependency, every pod and process) is on the incident page it links to.
MAX_DECIDING = 2  # deciding signals per named domain
MAX_OTHERS = 3  # other domains named in the "less likely" line
MAX_QUERIES_SHOWN = 2  # burn-rate and SLI queries
MAX_PROBLEMS_SHOWN = 3  # capture problems listed before "and N more"


def render_attribution(incident: dict[str, Any], verdict: Verdict, capture: CaptureResult | None,
                       runbooks: list[dict[str, Any]], incident_url: str, *,
                       pending_capture_s: float | None = None, preliminary: Verdict | None = None) -> Message:
    """The reply for the person on call: the verdict and its confidence, the one or two signals
    that decided it, what it is not, the service's own symptoms in one line each, the capture's
    scope and cost, and the links (the incident page, runbooks, the alert's source).

    ``pending_capture_s``: this verdict is the preliminary one (from the flight recorder, at the
    alert's receipt) and a capture that long is running. ``preliminary``: this is the capture's
    verdict, replacing that preliminary one in place; it opens with whether it confirms it."""
    view = IncidentView.of(incident, verdict=verdict, capture=capture)
    page = _link(incident_url, "incident page") if incident_url else f"incident `{_esc(view.id or '?')}`"
    if verdict.domains:
        headline = f"{view.alertname}: {' + '.join(verdict.domains)} ({confidence_phrase(verdict)})"
    else:
        headline = f"{view.alertname}: Abstained: {verdict.abstain_reason or 'no reason given'}"
    if pending_capture_s is not None:
        headline = f"Preliminary · {headline}"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": _plain(_clip(headline, MAX_HEADER_CHARS))}]
    sections = [_preliminary_md(view, pending_capture_s) if pending_capture_s is not None else "",
                _revision_md(preliminary, verdict, capture) if preliminary is not None else "",
                _verdict_md(view, verdict), *_symptom_md(view), _anomalies_md(capture), _capture_md(capture)]
    blocks += [{"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))} for md in sections if md]
    if capture is not None:
        cost = (f"Read from the flight recorder, nothing attached for it: {capture.cost.agent_cpu_s * 1000:.0f} ms of agent CPU"
                if capture.source == "recorder" else f"Capture's own cost: {capture.cost.summary()}")
        blocks.append({"type": "context", "elements": [_mrkdwn(_clip(_esc(cost), MAX_CONTEXT_CHARS))]})
    blocks.append({"type": "context", "elements": [_mrkdwn(_clip(_links_md(view, runbooks, page),
                                                                MAX_CONTEXT_CHARS))]})
    blocks = blocks[:MAX_BLOCKS]
    text = "\n".join([headline] + [_block_text(b) for b in blocks[1:]])
    return Message(text=_clip(text, MAX_TEXT_CHARS), blocks=blocks)


def _preliminary_md(view: IncidentView, capture_s: float) -> str:
    """What a preliminary verdict rests on, and what comes next."""
    since = f" (since {clock(view.burn_start)} UTC)" if view.burn_start else ""
    return (f":hourglass_flowing_sand: *Preliminary*, at the alert's receipt: from the flight recorder's history of the "
            f"burn so far{since}, traces and Prometheus. A {duration(capture_s)} capture is running; this message will say "
            "whether it confirms this.")


def _revision_md(preliminary: Verdict, final: Verdict, capture: CaptureResult | None) -> str:
    """Whether the capture confirmed the preliminary verdict, or what it changed and why."""
    by = "the capture" if capture is None else \
        f"the {duration(max(0.0, capture.ended_at - capture.started_at))} capture"
    if confirms(preliminary, final):
        return f":white_check_mark: *Confirmed* by {by} (preliminary: {_esc(verdict_phrase(preliminary))})."
    if final.domains:
        top = max(final.hypotheses, key=lambda h: h.confidence if h.domain in final.domains else -1.0, default=None)
        why = _signal_md(top.supporting[0]) if top is not None and top.supporting else "see the signals below"
    else:
        why = _esc(final.abstain_reason or "the evidence did not hold up")
    return (f":arrows_counterclockwise: *Changed* by {by}: {_esc(verdict_phrase(preliminary))} → "
            f"{_esc(verdict_phrase(final))}, because {why}.")


def _verdict_md(view: IncidentView, verdict: Verdict) -> str:
    """The verdict in words: the named domains and their deciding signals, then what it is not;
    on abstain, why, and the two hypotheses it could not separate with their strongest signal."""
    if not verdict.domains:
        lines = [f"*Abstained:* {_esc(verdict.abstain_reason or 'no reason given')}. No fault domain is named."]
        weighed = [h for h in view.hypotheses[:ABSTAIN_HYPOTHESES_SHOWN] if h.confidence > 0]
        if weighed:
            lines.append("It weighed:")
            lines += [f"• *{_esc(h.domain)}* {likelihood(h)}"
                      + (f": {_signal_md(h.supporting[0])}" if h.supporting else ": nothing in favour") for h in weighed]
        return "\n".join(lines)
    support = f" ({_esc(verdict.calibration)})" if verdict.calibration else ""
    lines = [f"Fault domain *{_esc(' + '.join(verdict.domains))}* at {confidence_phrase(verdict)}{support}."]
    if view.truncated_alerts:
        lines.append(f"Alertmanager left {view.truncated_alerts} alert(s) of this group out of its last notification "
                     "(its max_alerts); this rests on the alerts it sent.")
    for h in view.named:
        deciding = h.supporting[:MAX_DECIDING]
        prefix = f"*{_esc(h.domain)}*: " if len(view.named) > 1 else "Because: "
        if not deciding:
            lines.append(f"{prefix}no single signal; see the page.")
        elif len(deciding) == 1:
            lines.append(prefix + _signal_md(deciding[0]))
        else:
            lines.append(prefix.rstrip() + "\n" + "\n".join(f"• {_signal_md(e)}" for e in deciding))
    others = [h for h in view.others if round(h.confidence * 100) >= 1][:MAX_OTHERS]
    if others:
        lines.append("Less likely: " + ", ".join(f"{_esc(h.domain)} {likelihood(h)}" for h in others) + ".")
    else:
        lines.append("No other fault domain scored above 0%.")
    return "\n".join(lines)


def _signal_md(e: Evidence) -> str:
    """One deciding signal in words, its move once, and where it came from."""
    md = f"{_esc(e.summary or e.signal)} ({_esc(change(e.baseline, e.incident, e.unit))}, {_esc(e.source)})"
    return md + (f" · {_link(e.link, 'evidence')}" if e.link else "")


def _symptom_md(view: IncidentView) -> list[str]:
    """The service's own symptoms: its burn rate from Prometheus, its most changed dependency from
    traces; one line each, and none when there is nothing to say (no spans, no queries)."""
    out = []
    prom = view.prometheus
    if prom is not None and not prom.reachable:
        out.append(f"*Prometheus* could not be reached: {_esc(prom.error or 'no error given')}")
    elif prom is not None:
        shown = [q for q in prom.queries if q.kind in ("burn_rate", "sli") and q.error is None
                 and q.incident.mean is not None][:MAX_QUERIES_SHOWN]
        parts = [f"{_esc(q.label)} {_esc(change(q.baseline.mean, q.incident.mean, q.unit))}"
                 + (f" ({_link(q.link, 'graph')})" if q.link else "") for q in shown]
        failed = [q for q in prom.queries if q.error]
        if failed:
            parts.append(f"{len(failed)} quer{'ies' if len(failed) != 1 else 'y'} failed (on the incident page)")
        if parts:
            out.append("*Prometheus* (baseline → incident mean): " + " · ".join(parts))
    traces = view.traces
    if traces is not None and not traces.reachable:
        out.append(f"*Traces* ({_esc(traces.backend)}) could not be read: {_esc(traces.error or 'no error given')}")
    elif traces is not None and traces.spans > 0:
        moved = [d for d in traces.dependencies if d.kind != "server" and d.incident is not None]
        if moved:
            d = moved[0]  # most changed first
            b, i = d.baseline, d.incident
            assert i is not None
            line = (f"*Traces* of `{_esc(traces.service)}`: {_esc(d.kind)} `{_esc(d.name)}` p90 "
                    f"{_esc(change(b.p90_ms if b else None, i.p90_ms, 'ms'))}, errors {num(b.errors if b else 0)} → "
                    f"{num(i.errors)}")
            if i.error_types:
                line += " (" + ", ".join(f"{_esc(k)} ×{num(v)}" for k, v in list(i.error_types.items())[:3]) + ")"
            called = frozenset({**(b.peers if b else {}), **i.peers})
            on_path = peers.kernel_on_path(view.capture, called, peers.hosts_from(view.capture))
            if on_path:
                line += "; the kernel on its path: " + ", ".join(
                    f"{_esc(what)} {_esc(change(base, inc, u))}" for what, base, inc, u in on_path)
            example = next((x for x in traces.exemplars if x.url), None)
            if example is not None and example.url:
                line += f" · {_link(example.url, example.why or 'example trace')}"
            out.append(line)
    return out


MAX_ANOMALIES_SHOWN = 5


def anomaly_phrase(a: dict[str, Any]) -> str:
    """"egress to 203.0.113.9:4444 (rogue.example) since 06:12:03 UTC" or "executable
    /tmp/x/miner since …": one flagged anomaly in words."""
    what = (f"egress to {a.get('what')}" + (f" ({a['name']})" if a.get("name") else "")
            if a.get("kind") == "egress_peer" else f"executable {a.get('what')}")
    return f"{what} since {clock(float(a.get('first_seen') or 0))} UTC"


def _anomalies_md(capture: CaptureResult | None) -> str:
    """What the workload did that it never did before (the agent's flagged anomalies), if anything."""
    if capture is None or not capture.anomalies:
        return ""
    shown = [anomaly_phrase(a) for a in capture.anomalies[:MAX_ANOMALIES_SHOWN]]
    more = len(capture.anomalies) - len(shown)
    return (":warning: *Never seen on this workload before* (against its whole flight-recorder history): "
            + _esc("; ".join(shown)) + (f"; and {more} more" if more > 0 else ""))


def _capture_md(capture: CaptureResult | None) -> str:
    """Where the kernel evidence came from, and what went wrong capturing it."""
    if capture is None:
        return "*Kernel capture:* none for this incident; the verdict rests on traces and metrics only."
    window = duration(max(0.0, capture.ended_at - capture.started_at))
    if capture.pods:  # fanned out over the nodes a workload's pods run on
        ok = [n for n in capture.nodes if n.get("status") == "ok"]
        what = "Flight recorder" if capture.source == "recorder" else "Kernel capture"
        md = (f"*{what}* of {len(capture.pods)} pod(s) on {len(ok)} of {len(capture.nodes)} node(s), "
              f"{window} window")
        missed = sum(1 for p in capture.pods if not p.get("captured"))
        if missed:
            md += f"; {missed} pod(s) not captured"
        for n in capture.nodes:
            if n.get("status") != "ok":
                md += f"\nNode `{_esc(str(n.get('node')))}`: {_esc(str(n.get('status')))}: {_esc(n.get('error') or '')}"
        for line in concentrated(capture.pods):
            md += f"\nConcentrated: {_esc(line)}"
    elif capture.source == "recorder":
        md = (f"*Flight recorder* of node `{_esc(capture.node)}`, scope {_esc(capture.target.describe())}, "
              f"{window} of history since the burn began")
    else:
        md = (f"*Kernel capture* `{_esc(capture.id)}` on node `{_esc(capture.node)}`, "
              f"scope {_esc(capture.target.describe())}, {window} window")
        for w in capture.workloads[:1]:
            who = [f"pod {w['namespace']}/{w['pod']}" if w.get("pod") else None,
                   f"{w['workload_kind']} {w['workload']}" if w.get("workload") else None,
                   f"container {w['container']}" if w.get("container") else None,
                   f"{w.get('runtime') or 'container'} {w['container_id'][:12]}" if w.get("container_id") else None]
            named = [x for x in who if x]
            if named:
                md += f"\nWorkload: {_esc(', '.join(named))}"
    if capture.baseline_note:
        md += f"\nBaseline: {_esc(capture.baseline_note)}"
    problems = capture_problems(capture)
    if problems:
        listed = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        md += f"\nProbe problems: {_esc(listed)}{more}"
    return md


# A counter counts as concentrated in one pod when that pod holds at least this share of it,
# over at least this many events, among at least two captured pods.
CONCENTRATED_SHARE = 0.8
CONCENTRATED_MIN_EVENTS = 20
MAX_CONCENTRATED = 3


def concentrated(pods: list[dict[str, Any]]) -> list[str]:
    """Counters of a fanned-out capture that come mostly from one pod (the one bad replica or
    node), largest first: "92% of tcp_retrans.retransmits (340) in pod llm/chat-a on node-a"."""
    captured = [p for p in pods if p.get("captured") and isinstance(p.get("counters"), dict)]
    if len(captured) < 2:
        return []
    totals: dict[str, float] = {}
    for pod in captured:
        for k, v in pod["counters"].items():
            totals[k] = totals.get(k, 0.0) + v
    out = []
    for k, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        if total < CONCENTRATED_MIN_EVENTS:
            continue
        top = max(captured, key=lambda p: p["counters"].get(k, 0.0))
        share = top["counters"].get(k, 0.0) / total
        if share >= CONCENTRATED_SHARE:
            out.append(f"{share:.0%} of {k} ({total:,.0f}) in pod {top['namespace']}/{top['name']} "
                       f"on {top.get('node') or '?'}")
    return out[:MAX_CONCENTRATED]


def _links_md(view: IncidentView, runbooks: list[dict[str, Any]], page: str) -> str:
    """The incident page, the playbook's runbooks, then the alert's source(s) in Prometheus."""
    parts = [page]
    parts += [f"runbook {_link(str(r['url']), str(r.get('title') or r['url']))}" for r in runbooks if r.get("url")]
    sources = [link.url for link in view.links if link.kind == "alert"]
    parts += [_link(u, "alert source" if len(sources) == 1 else f"alert source {n}") for n, u in enumerate(sources, 1)]
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------
# resolved and error replies


def render_resolved(incident: dict[str, Any]) -> Message:
    """The reply when the incident resolves: how long the error budget burned, final verdict."""
    view = IncidentView.of({**incident, "status": "resolved"})
    alert, start, end = view.alertname, view.burn_start, view.burn_end
    if start is not None and end is not None and end >= start:
        burned = f"the error budget burned for {duration(end - start)} ({clock(start)} → {clock(end)} UTC)"
    elif start is not None:
        burned = f"the error budget burned from {clock(start)} UTC; the end time is unknown"
    else:
        burned = "how long the error budget burned is unknown (no start time)"
    verdict = view.verdict
    if verdict is None:
        final = "No attribution was made before it resolved."
    elif verdict.domains:
        final = f"Final attribution: {' + '.join(verdict.domains)} ({likelihood(verdict)})."
    else:
        final = f"The toolkit abstained: {verdict.abstain_reason or 'no reason given'}."
    plain = f"Resolved: {alert}: {burned}. {final}"
    md = f":white_check_mark: *Resolved:* *{_esc(alert)}*: {_esc(burned)}. {_esc(final)}"
    return Message(text=plain, blocks=[{"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))}])


def render_error(incident: dict[str, Any], error: str) -> Message:
    """A reply for a capture or pipeline failure: what failed, and that the incident is open."""
    view = IncidentView.of(incident)
    alert, iid = view.alertname, view.id or "?"
    if view.status == "resolved":
        state = "The incident has since resolved."
    else:
        state = ("The incident is still open (firing): no attribution will come from this run; "
                 "follow the runbook, or retry with `/llmslo capture`.")
    first = (error or "unknown error").strip().splitlines()[0] if (error or "").strip() else "unknown error"
    plain = f"Capture/pipeline failed for {alert} (incident {iid}): {first}. {_strip_md(state)}"
    detail = (error or "unknown error").replace("```", "'''")
    md_head = f":warning: *Capture/pipeline failed* for *{_esc(alert)}* (incident `{_esc(iid)}`). {state}"
    blocks = [
        {"type": "section", "text": _mrkdwn(_clip(md_head, MAX_SECTION_CHARS))},
        {"type": "section", "text": _mrkdwn("```" + _clip(_esc(detail), MAX_SECTION_CHARS - 6) + "```")},
    ]
    return Message(text=_clip(plain, MAX_TEXT_CHARS), blocks=blocks)


# ---------------------------------------------------------------------------------------------
# small helpers


def _esc(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    safe_url = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")
    return f"<{safe_url}|{_esc(label).replace('|', '¦')}>"


def _clip(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters with "…", never inside a ``<link|label>``."""
    if len(text) <= limit:
        return text
    cut = text[:limit - len(ELLIPSIS)]
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[:cut.rfind("<")]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:] and len(cut) - amp <= 5:  # a cut &amp; entity
        cut = cut[:amp]
    return cut + ELLIPSIS


def _strip_md(md: str) -> str:
    """A rough plain-text form of our own mrkdwn, for the fallback text."""
    out, i = [], 0
    while i < len(md):
        if md[i] == "<":
            end = md.find(">", i)
            if end != -1:
                url, _, label = md[i + 1:end].partition("|")
                out.append(f"{label} ({url})" if label else url)
                i = end + 1
                continue
        out.append(md[i])
        i += 1
    text = "".join(out).replace("*", "").replace("`", "")
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _block_text(block: dict[str, Any]) -> str:
    if block.get("text"):
        return _strip_md(block["text"]["text"])
    return " ".join(_strip_md(e.get("text", "")) for e in block.get("elements", []))


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}
