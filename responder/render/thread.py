"""What an incident's chat thread shows, rendered once for every sink.

Each function returns a :class:`Message`: a plain-text fallback (what notifications, screen readers
and the console sink show) and Slack Block Kit blocks. The thread is:

- the root message, one line of status at a glance, edited in place as the incident moves
  (capturing -> attributed / abstained -> resolved): :func:`render_root`;
- the attribution reply with the evidence: :func:`render_attribution`;
- a reply when the incident resolves: :func:`render_resolved`;
- a reply when the capture or the pipeline failed: :func:`render_error`.

Slack's Block Kit limits are enforced here, not left to the API to reject: at most 50 blocks per
message (the lowest-ranked evidence is dropped first), section text at most 3000 characters and
header text at most 150, both cut with "…".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from capture.schemas import CaptureResult, ProbeResult
from common.timefmt import unix_seconds
from responder.model import adhoc
from responder.model.verdict import Evidence, Hypothesis, Verdict
from responder.playbooks import PIN_LABEL

# Slack limits (Block Kit reference): blocks per message, section / header text, message text.
MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_CONTEXT_CHARS = 3000
MAX_TEXT_CHARS = 40000

# How much evidence one hypothesis shows before "N more on the incident page".
MAX_SUPPORTING_SHOWN = 5
MAX_CONTRADICTING_SHOWN = 3
MAX_PODS_LISTED = 8
# Hypotheses whose evidence is shown when the toolkit abstained: the two it could not separate.
ABSTAIN_HYPOTHESES_SHOWN = 2

ELLIPSIS = "…"
_SLACK_ID_RE = re.compile(r"[SUW][A-Z0-9]{2,20}")

# Root message states, in the order an incident usually moves through them.
STATE_CAPTURING = "capturing"
STATE_ATTRIBUTED = "attributed"
STATE_ABSTAINED = "abstained"
STATE_FAILED = "failed"
STATE_RESOLVED = "resolved"

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


def root_state(incident: dict[str, Any]) -> str:
    """The state the root message shows: capturing, attributed, abstained, failed or resolved."""
    if incident.get("status") == "resolved":
        return STATE_RESOLVED
    verdict = incident.get("verdict")
    if verdict:
        return STATE_ATTRIBUTED if verdict.get("domains") else STATE_ABSTAINED
    if incident.get("error"):
        return STATE_FAILED
    return STATE_CAPTURING


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
    state = root_state(incident)
    emoji, word = _STATE_LOOK[state]
    alert = _alertname(incident)
    iid = str(incident.get("id", "?"))
    verdict = _verdict_of(incident)

    finding_md = finding_txt = ""
    if verdict is not None and verdict.domains:
        finding_txt = f"{' + '.join(verdict.domains)} {_pct(verdict.confidence)}"
        finding_md = f"*{_esc(' + '.join(verdict.domains))}* {_pct(verdict.confidence)}"
    elif verdict is not None:
        finding_txt = finding_md = "no fault domain named"
    elif state == STATE_FAILED:
        finding_txt = finding_md = "capture failed, still firing"

    parts_md = [f"{emoji} *{word}*", f"*{_esc(alert)}*"]
    parts_txt = [f"[{word}]", alert]
    if finding_md:
        parts_md.append(finding_md)
        parts_txt.append(finding_txt)
    parts_md.append(f"incident {_link(incident_url, iid) if incident_url else f'`{_esc(iid)}`'}")
    parts_txt.append(f"incident {iid}" + (f" {incident_url}" if incident_url else ""))

    mention = mention_markup((incident.get("labels") or {}).get(mention_label)) if mention_label else None
    if mention is None and mention_label:
        for alert in incident.get("alerts") or []:
            mention = mention or mention_markup((alert.get("labels") or {}).get(mention_label))
    if mention:
        parts_md.insert(0, mention)
        parts_txt.insert(0, mention)
    line = " · ".join(parts_md)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": _mrkdwn(_clip(line, MAX_SECTION_CHARS))}]
    ack = incident.get("acknowledged")
    if ack:
        who = str(ack.get("by") or "someone")
        blocks.append({"type": "context", "elements": [
            _mrkdwn(f":eyes: acknowledged by {_user(who)} at {_clock(float(ack.get('at') or 0))} UTC")]})
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


# ---------------------------------------------------------------------------------------------
# the attribution reply


@dataclass
class _EvidenceItem:
    rank: tuple[int, int, int]  # (position in its list, supporting=0/contradicting=1, hypothesis rank)
    group: tuple[int, int]  # (hypothesis rank, kind)
    evidence: Evidence


def render_attribution(incident: dict[str, Any], verdict: Verdict, capture: CaptureResult | None,
                       runbooks: list[dict[str, Any]], incident_url: str) -> Message:
    """The detail reply: verdict, ranked hypotheses, evidence, capture scope and cost, links."""
    alert = _alertname(incident)
    iid = str(incident.get("id", "?"))
    hyps = sorted(verdict.hypotheses, key=lambda h: h.confidence, reverse=True)

    # -- headline
    if verdict.domains:
        headline = f"{alert}: {' + '.join(verdict.domains)} ({_pct(verdict.confidence)} confidence)"
    else:
        headline = f"{alert}: Abstained: {verdict.abstain_reason or 'no reason given'}"
    head: list[dict[str, Any]] = [{"type": "header", "text": _plain(_clip(headline, MAX_HEADER_CHARS))}]
    intro = (f"Incident {_link(incident_url, iid) if incident_url else f'`{_esc(iid)}`'} · "
             f"status *{_esc(str(incident.get('status', '?')))}*")
    if verdict.domains:
        calibrated = f" ({_esc(verdict.calibration)})" if verdict.calibration else ""
        intro = f"Fault domain: *{_esc(' + '.join(verdict.domains))}* at {_pct(verdict.confidence)}{calibrated}. " + intro
    else:
        intro = (f"*Abstained:* {_esc(verdict.abstain_reason or 'no reason given')}. "
                 "No fault domain is named; the hypotheses below are what was weighed. " + intro)
    truncated = int(incident.get("truncated_alerts") or 0)
    if truncated:
        intro += (f" · Alertmanager left {truncated} alert(s) of this group out of its last notification "
                  "(its max_alerts); the alerts listed here are the ones it sent")
    head.append({"type": "section", "text": _mrkdwn(_clip(intro, MAX_SECTION_CHARS))})

    hyp_lines: list[str] = []
    if hyps:
        lines = [f"{i}. *{_esc(h.domain)}* {_pct(h.confidence)} · {len(h.supporting)} supporting, "
                 f"{len(h.contradicting)} contradicting" for i, h in enumerate(hyps, 1)]
        head.append({"type": "section", "text": _mrkdwn(_clip("*Hypotheses*\n" + "\n".join(lines),
                                                             MAX_SECTION_CHARS))})
        hyp_lines = ["Hypotheses:"] + [_strip_md("  " + line) for line in lines]

    # -- evidence, ranked so the least important goes first when the block budget is short
    featured = _featured(verdict, hyps)
    items: list[_EvidenceItem] = []
    over_cap = 0
    for hrank, h in featured:
        for kind, evs, cap in ((0, h.supporting, MAX_SUPPORTING_SHOWN), (1, h.contradicting, MAX_CONTRADICTING_SHOWN)):
            over_cap += max(0, len(evs) - cap)
            items += [_EvidenceItem((pos, kind, hrank), (hrank, kind), e) for pos, e in enumerate(evs[:cap])]
    items.sort(key=lambda it: it.rank)

    # -- the tail: metrics and traces, capture scope and cost, runbooks, alert source
    tail = _application_blocks(incident) + _capture_blocks(capture) + _link_blocks(incident, runbooks)

    # -- fit the evidence into the block budget (head + divider + tail are fixed)
    fixed = len(head) + 1 + len(tail)
    keep = len(items)
    while keep > 0 and fixed + _evidence_block_count(items[:keep], len(items) - keep + over_cap) > MAX_BLOCKS:
        keep -= 1
    ev_blocks, ev_text = _evidence_blocks(items[:keep], dict(featured), len(items) - keep + over_cap,
                                          incident_url)

    # Degenerate inputs (e.g. hundreds of runbooks) could still overflow: cut the tail, keep the head.
    blocks = (head + [{"type": "divider"}] + ev_blocks + tail)[:MAX_BLOCKS]
    text = "\n".join([headline, _strip_md(intro)] + hyp_lines + ev_text + [_block_text(b) for b in tail])
    return Message(text=_clip(text, MAX_TEXT_CHARS), blocks=blocks)


def _featured(verdict: Verdict, hyps: list[Hypothesis]) -> list[tuple[int, Hypothesis]]:
    """Hypotheses whose evidence the reply shows: the named domains, or the top ones on abstain."""
    if verdict.domains:
        named = [(i, h) for i, h in enumerate(hyps) if h.domain in verdict.domains]
        return named or list(enumerate(hyps[:1]))
    return list(enumerate(hyps[:ABSTAIN_HYPOTHESES_SHOWN]))


def _evidence_block_count(items: list[_EvidenceItem], dropped: int) -> int:
    groups = {it.group for it in items}
    return len(items) + len(groups) + (1 if dropped else 0)


def _evidence_blocks(items: list[_EvidenceItem], hyp_by_rank: dict[int, Hypothesis], dropped: int,
                     incident_url: str) -> tuple[list[dict[str, Any]], list[str]]:
    blocks: list[dict[str, Any]] = []
    text: list[str] = []
    by_group: dict[tuple[int, int], list[_EvidenceItem]] = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    for group in sorted(by_group):
        hrank, kind = group
        h = hyp_by_rank[hrank]
        title = (f"Supporting evidence for {h.domain}" if kind == 0
                 else f"Contradicting evidence for {h.domain}")
        icon = ":white_check_mark:" if kind == 0 else ":x:"
        blocks.append({"type": "section", "text": _mrkdwn(_clip(f"{icon} *{_esc(title)}*", MAX_SECTION_CHARS))})
        text.append(f"{title}:")
        for it in sorted(by_group[group], key=lambda i: i.rank[0]):
            md, plain = _evidence_line(it.evidence)
            blocks.append({"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))})
            text.append(f"  - {plain}")
    if dropped:
        more = f"{dropped} more evidence item{'s' if dropped != 1 else ''} not shown"
        more_md = f"{more}; all of it is on {_link(incident_url, 'the incident page')}" if incident_url else more
        blocks.append({"type": "context", "elements": [_mrkdwn(_clip(more_md, MAX_CONTEXT_CHARS))]})
        text.append(more + (f": {incident_url}" if incident_url else ""))
    return blocks, text


def _evidence_line(e: Evidence) -> tuple[str, str]:
    """One evidence item: what it says, baseline -> incident with unit, source and link."""
    change = f"baseline {_num(e.baseline)} → incident {_num(e.incident)}{_unit(e.unit)}"
    md = f"• {_esc(e.summary)}\n{_esc(change)} · _{_esc(e.source)}_ · `{_esc(e.signal)}`"
    plain = f"{e.summary} ({change}; {e.source}; {e.signal})"
    if e.link:
        md += f" · {_link(e.link, 'evidence')}"
        plain += f" {e.link}"
    return md, plain


# How many Prometheus queries and trace dependencies the chat reply lists; the page has them all.
MAX_QUERIES_SHOWN = 4
MAX_DEPENDENCIES_SHOWN = 4


def _application_blocks(incident: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's own view: its SLO series from Prometheus and its dependencies from traces."""
    evidence = incident.get("evidence") or {}
    blocks: list[dict[str, Any]] = []
    prom = evidence.get("prometheus")
    if prom:
        if not prom.get("reachable"):
            lines = [f"*Prometheus:* could not be reached: {_esc(str(prom.get('error')))}"]
        else:
            lines = ["*Prometheus* (baseline mean → incident mean):"]
            for q in (prom.get("queries") or [])[:MAX_QUERIES_SHOWN]:
                if q.get("error"):
                    lines.append(f"• {_esc(q.get('title') or q['name'])}: {_esc(q['error'])}")
                    continue
                b, i = (q.get("baseline") or {}).get("mean"), (q.get("incident") or {}).get("mean")
                line = f"• {_esc(q.get('title') or q['name'])}: {_num(b)} → {_num(i)}{_unit(q.get('unit') or '')}"
                if q.get("link"):
                    line += f" · {_link(q['link'], 'graph')}"
                lines.append(line)
        blocks.append({"type": "section", "text": _mrkdwn(_clip("\n".join(lines), MAX_SECTION_CHARS))})
    traces = evidence.get("traces")
    if traces:
        if not traces.get("reachable"):
            lines = [f"*Traces* ({_esc(str(traces.get('backend')))}): could not be read: "
                     f"{_esc(str(traces.get('error')))}"]
        else:
            inc_n = (traces.get("incident") or {}).get("spans", 0)
            base_n = (traces.get("baseline") or {}).get("spans", 0)
            lines = [f"*Traces* of `{_esc(str(traces.get('service')))}` ({base_n:,} baseline / {inc_n:,} incident "
                     "spans), p90 and errors per dependency:"]
            for d in (traces.get("dependencies") or [])[:MAX_DEPENDENCIES_SHOWN]:
                b, i = d.get("baseline") or {}, d.get("incident") or {}
                line = (f"• {_esc(d['kind'])} `{_esc(d['name'])}`: p90 {_num(b.get('p90_ms'))} → "
                        f"{_num(i.get('p90_ms'))} ms, errors {b.get('errors', 0)} → {i.get('errors', 0)}")
                if i.get("error_types"):
                    line += " (" + ", ".join(f"{_esc(str(k))} ×{v}" for k, v in list(i["error_types"].items())[:3]) + ")"
                lines.append(line)
            exemplars = [e for e in traces.get("exemplars") or [] if e.get("url")][:3]
            if exemplars:
                lines.append("Example traces: " + " · ".join(_link(e["url"], e.get("why") or e["trace_id"][:8])
                                                             for e in exemplars))
        blocks.append({"type": "section", "text": _mrkdwn(_clip("\n".join(lines), MAX_SECTION_CHARS))})
    return blocks


def _capture_blocks(capture: CaptureResult | None) -> list[dict[str, Any]]:
    if capture is None:
        return [{"type": "section", "text": _mrkdwn(
            "*Kernel capture:* none for this incident; the verdict rests on traces and metrics only.")}]
    window = max(0.0, capture.ended_at - capture.started_at)
    if capture.pods:  # fanned out over the nodes a workload's pods run on
        ok = [n["node"] for n in capture.nodes if n.get("status") == "ok"]
        scope = (f"*Kernel capture* of {len(capture.pods)} pod(s) on {len(ok)} of {len(capture.nodes)} node(s), "
                 f"{_duration(window)} window")
        for pod in capture.pods[:MAX_PODS_LISTED]:
            owner = f" ({pod['workload_kind']} {pod['workload']})" if pod.get("workload") else ""
            scope += (f"\nPod `{_esc(pod['namespace'])}/{_esc(pod['name'])}`{_esc(owner)} on node "
                      f"`{_esc(pod.get('node') or '?')}`" + ("" if pod.get("captured") else ": *not captured*"))
        if len(capture.pods) > MAX_PODS_LISTED:
            scope += f"\n… and {len(capture.pods) - MAX_PODS_LISTED} more pod(s)"
        for n in capture.nodes:
            if n.get("status") != "ok":
                scope += f"\nNode `{_esc(n['node'])}`: {_esc(n['status'])}: {_esc(n.get('error') or '')}"
        for line in concentrated(capture.pods):
            scope += f"\nConcentrated: {_esc(line)}"
        return _capture_tail(capture, scope)
    scope = (f"*Kernel capture* `{_esc(capture.id)}` on node `{_esc(capture.node)}`, "
             f"scope {_esc(capture.target.describe())}, {_duration(window)} window")
    for w in capture.workloads:
        who = [f"pod {w['namespace']}/{w['pod']}" if w.get("pod") else None,
               f"{w['workload_kind']} {w['workload']}" if w.get("workload") else None,
               f"container {w['container']}" if w.get("container") else None,
               f"pod UID {w['pod_uid']} ({w.get('qos', '?')})" if w.get("pod_uid") and not w.get("pod") else None,
               f"{w.get('runtime') or 'container'} {w['container_id'][:12]}" if w.get("container_id") else None]
        scope += f"\nWorkload: cgroup `{_esc(w['path'])}`" + "".join(f", {_esc(x)}" for x in who if x)
    for proc in capture.processes[:5]:
        scope += f"\nProcess: pid {proc['pid']} `{_esc(proc.get('comm', '?'))}` {_esc(proc.get('exe', ''))}"
    return _capture_tail(capture, scope)


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


def _capture_tail(capture: CaptureResult, scope: str) -> list[dict[str, Any]]:
    """The capture's baseline, probe problems and own cost, after its scope."""
    if capture.baseline_note:
        scope += f"\nBaseline: {_esc(capture.baseline_note)}"
    problems = [f"• {_esc(err)}" for err in capture.errors]
    for label, results in (("", capture.incident), (" (baseline)", capture.baseline)):
        for name, pr in results.items():
            problems += [f"• `{_esc(name)}`{label}: {_esc(p)}" for p in _probe_problems(pr)]
    if problems:
        scope += "\n*Probe problems:*\n" + "\n".join(problems)
    return [
        {"type": "section", "text": _mrkdwn(_clip(scope, MAX_SECTION_CHARS))},
        {"type": "context", "elements": [_mrkdwn(_clip(
            f"Capture's own cost: {_esc(capture.cost.summary())}", MAX_CONTEXT_CHARS))]},
    ]


def _probe_problems(pr: ProbeResult) -> list[str]:
    out = []
    if pr.error:
        out.append(f"error: {pr.error}")
    if pr.truncated:
        out.append(f"truncated: {pr.truncated}")
    if pr.lost:
        out.append(f"{pr.lost:,} events lost")
    return out


def _link_blocks(incident: dict[str, Any], runbooks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    books = [_link(str(r["url"]), str(r.get("title") or r["url"])) for r in runbooks if r.get("url")]
    if books:
        blocks.append({"type": "section", "text": _mrkdwn(_clip("*Runbooks:* " + " · ".join(books),
                                                               MAX_SECTION_CHARS))})
    sources = []
    for alert in incident.get("alerts") or []:
        url = (alert.get("generatorURL") or "").strip()
        if url and url not in sources:
            sources.append(url)
    if sources:
        label = "alert source" if len(sources) == 1 else "alert sources"
        links = " · ".join(_link(u, f"rule {i}" if len(sources) > 1 else "Prometheus")
                           for i, u in enumerate(sources, 1))
        blocks.append({"type": "context", "elements": [_mrkdwn(_clip(f"{label.capitalize()}: {links}",
                                                                    MAX_CONTEXT_CHARS))]})
    return blocks


# ---------------------------------------------------------------------------------------------
# resolved and error replies


def render_resolved(incident: dict[str, Any]) -> Message:
    """The reply when the incident resolves: how long the error budget burned, final verdict."""
    alert = _alertname(incident)
    start = _burn_start(incident)
    end = unix_seconds(incident.get("resolved_at"))
    if end is None:
        ends = [e for e in (unix_seconds(a.get("endsAt")) for a in incident.get("alerts") or []) if e is not None]
        end = max(ends) if ends else None
    if start is not None and end is not None and end >= start:
        burned = f"the error budget burned for {_duration(end - start)} ({_clock(start)} → {_clock(end)} UTC)"
    elif start is not None:
        burned = f"the error budget burned from {_clock(start)} UTC; the end time is unknown"
    else:
        burned = "how long the error budget burned is unknown (no start time)"
    verdict = _verdict_of(incident)
    if verdict is None:
        final = "No attribution was made before it resolved."
    elif verdict.domains:
        final = f"Final attribution: {' + '.join(verdict.domains)} ({_pct(verdict.confidence)})."
    else:
        final = f"The toolkit abstained: {verdict.abstain_reason or 'no reason given'}."
    plain = f"Resolved: {alert}: {burned}. {final}"
    md = f":white_check_mark: *Resolved:* *{_esc(alert)}*: {_esc(burned)}. {_esc(final)}"
    return Message(text=plain, blocks=[{"type": "section", "text": _mrkdwn(_clip(md, MAX_SECTION_CHARS))}])


def render_error(incident: dict[str, Any], error: str) -> Message:
    """A reply for a capture or pipeline failure: what failed, and that the incident is open."""
    alert = _alertname(incident)
    iid = str(incident.get("id", "?"))
    if incident.get("status") == "resolved":
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


def _alertname(incident: dict[str, Any]) -> str:
    name = (incident.get("labels") or {}).get("alertname")
    if not name:
        for alert in incident.get("alerts") or []:
            name = (alert.get("labels") or {}).get("alertname")
            if name:
                break
    return str(name or "(unnamed alert)")


def _verdict_of(incident: dict[str, Any]) -> Verdict | None:
    v = incident.get("verdict")
    return Verdict.from_dict(v) if v else None


def _pct(confidence: float) -> str:
    return f"{round(max(0.0, min(1.0, confidence)) * 100)}%"


def _unit(unit: str) -> str:
    if not unit:
        return ""
    return unit if unit.startswith(("%", "/")) else f" {unit}"


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    a = abs(value)
    if a >= 1000:
        s = f"{value:,.0f}"
    elif a >= 100 or value == int(value):
        s = f"{value:.0f}"
    elif a >= 10:
        s = f"{value:.1f}"
    else:
        s = f"{value:.3g}"
    return s


def _duration(seconds: float) -> str:
    """``4m 12s``, ``1h 3m``, ``2d 4h``, ``45s``, ``0.4s``: the two largest units."""
    if seconds < 10 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
    return " ".join(parts[:2])


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _burn_start(incident: dict[str, Any]) -> float | None:
    """The earliest of the incident's creation and its alerts' ``startsAt``."""
    times = [unix_seconds(incident.get("created_at"))]
    times += [unix_seconds(a.get("startsAt")) for a in incident.get("alerts") or []]
    known = [t for t in times if t is not None]
    return min(known) if known else None


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
