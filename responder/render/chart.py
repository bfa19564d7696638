"""The incident's chart, drawn once for the page (inline SVG) and the chat thread (a PNG).

A timeline, one panel per kind of evidence there is (none is drawn empty): the Prometheus
burn-rate and SLI series over the baseline and incident windows; the kernel's deciding signals
per flight-recorder interval, each scaled to its own peak; the service's own requests from its
traces (p90 and failing share per bucket); and the top hypothesis' signals and the trace
dependencies whose p90 moved most, baseline vs incident. The time panels carry the same marks:
where the burn began, the alert's receipt, the preliminary verdict, the capture's window and the
resolution. Drawn with matplotlib's object
API, never pyplot, whose global figure registry is not thread-safe (the server renders in worker
threads), and one chart at a time.
"""
from __future__ import annotations

import io
import math
import re
import textwrap
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from capture.attribution.verdict import Hypothesis
from responder.model.evidence import PrometheusEvidence, Series, TraceEvidence
from responder.render.view import IncidentView, num, unit

# The chart's budget: enough to read the shape of a burn, small enough to inline (tens of KB).
CHART_KINDS = ("burn_rate", "sli")
MAX_CHART_QUERIES = 6
MAX_CHART_SERIES_PER_QUERY = 5
MAX_CHART_POINTS = 240
MAX_SIGNAL_BARS = 6  # the top hypothesis' supporting evidence
MAX_TRACE_BARS = 2  # plus the trace dependencies whose p90 moved most
MAX_TRACKS = 4  # kernel signals over time
MIN_TRACK_EVENTS = 5  # a counter that counted fewer in the whole series is not drawn
MIN_TRACK_RISE = 1.5  # nor one that did not rise this much after the onset (unless it decided the verdict)
MARK_COLORS = {"burn began": "#a61b1b", "alert": "#3e4c59", "preliminary verdict": "#9a5b00",
               "resolved": "#2f7d32"}
CAPTURE_COLOR = "#2f6fb3"

BASELINE_COLOR = "#7b8794"
INCIDENT_COLOR = "#d64545"
WINDOW_LABEL_COLORS = {"baseline": "#3e4c59", "incident": "#a61b1b"}  # darker than the shading, to read on it
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")

# matplotlib does not promise thread safety and the server renders pages in worker threads: one
# chart at a time (a chart takes well under a second).
_CHART_LOCK = threading.Lock()

@dataclass
class _Line:
    label: str
    kind: str  # burn_rate | sli
    points: list[tuple[float, float]]


@dataclass
class _Bar:
    label: str
    baseline: float | None
    incident: float | None
    unit: str


@dataclass
class _Track:
    """One kernel counter over time, per second of each recorder interval."""
    label: str
    points: list[tuple[float, float]]
    peak: float


@dataclass
class _Inputs:
    lines: list[_Line]
    tracks: list[_Track]
    requests: list[dict[str, Any]]  # the trace timeline: the service's requests per bucket
    bars: list[_Bar]
    marks: list[tuple[float, str]]  # (time, what happened)
    capture: tuple[float, float] | None  # the live capture's window
    domain: str

    @property
    def empty(self) -> bool:
        return not (self.lines or self.tracks or self.requests or self.bars)


def _chart_inputs(view: IncidentView) -> _Inputs:
    top = view.hypotheses[0] if view.hypotheses else None
    cap = view.capture
    marks = [(t, what) for t, what in ((view.onset or view.burn_start, "burn began"), (view.created_at, "alert"),
                                       (view.preliminary_at, "preliminary verdict"), (view.burn_end, "resolved"))
             if t is not None]
    live = (cap.started_at, cap.ended_at) if cap is not None and cap.source == "live" and cap.ended_at > cap.started_at \
        else None
    requests = view.traces.timeline if view.traces is not None and view.traces.reachable else []
    return _Inputs(_chart_lines(view.prometheus), _kernel_tracks(view, top), requests, _chart_bars(top, view.traces),
                   marks, live, top.domain if top else "")


def _kernel_tracks(view: IncidentView, top: Hypothesis | None) -> list[_Track]:
    """The counters to draw from the capture's recorder series: those the top hypothesis' kernel
    signals name first, then those that rose most after the burn began."""
    cap = view.capture
    if cap is None or not cap.series:
        return []
    onset = view.onset or view.burn_start or cap.started_at

    def seconds(iv: dict[str, Any]) -> float:
        return max(float(iv["end"]) - float(iv["start"]), 1e-3)

    seconds_before = sum(seconds(iv) for iv in cap.series if float(iv["end"]) <= onset)
    seconds_after = sum(seconds(iv) for iv in cap.series if float(iv["end"]) > onset)
    totals: dict[str, list[float]] = {}  # name -> [count before the onset, count after]
    for iv in cap.series:
        for name, value in iv.get("counters", {}).items():
            totals.setdefault(name, [0.0, 0.0])[int(float(iv["end"]) > onset)] += float(value)
    deciding = [ev.signal.removesuffix("_per_s") for ev in (top.supporting if top else []) if ev.source == "kernel"]
    chosen = [n for n in dict.fromkeys(deciding) if n in totals and sum(totals[n]) >= MIN_TRACK_EVENTS]

    def rise(t: list[float]) -> float:
        before = t[0] / seconds_before if seconds_before else 0.0
        after = t[1] / seconds_after if seconds_after else 0.0
        return (after + 0.1) / (before + 0.1)

    others = sorted((n for n, t in totals.items() if n not in chosen and sum(t) >= MIN_TRACK_EVENTS
                     and rise(t) >= MIN_TRACK_RISE), key=lambda n: -rise(totals[n]))
    tracks = []
    for name in (chosen + others)[:MAX_TRACKS]:
        points = [(float(iv["end"]), float(iv.get("counters", {}).get(name, 0.0)) / seconds(iv)) for iv in cap.series]
        tracks.append(_Track(name, points, max(v for _, v in points)))
    return tracks


def prometheus_absence(prom: PrometheusEvidence | None) -> str:
    if prom is None:
        return "No Prometheus evidence was gathered."
    if not prom.reachable:
        return f"Prometheus could not be reached: {prom.error or 'no error given'}"
    return "Prometheus returned no burn-rate or SLI series for the windows."


def _chart_lines(prom: PrometheusEvidence | None) -> list[_Line]:
    if prom is None or not prom.reachable:
        return []
    out = []
    for q in [q for q in prom.queries if q.kind in CHART_KINDS][:MAX_CHART_QUERIES]:
        series = q.series[:MAX_CHART_SERIES_PER_QUERY]
        varying = _varying_labels(series)
        for s in series:
            if not s.points:
                continue
            stride = math.ceil(len(s.points) / MAX_CHART_POINTS)
            extra = ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k in varying)
            out.append(_Line(f"{q.label} {{{extra}}}" if extra else q.label, q.kind, s.points[::stride]))
    return out


def _varying_labels(series: list[Series]) -> set[str]:
    """Label names whose values differ between the series: what tells the lines apart in the legend."""
    keys = {k for s in series for k in s.labels}
    return {k for k in keys if len({s.labels.get(k) for s in series}) > 1}


def _chart_bars(top: Hypothesis | None, traces: TraceEvidence | None) -> list[_Bar]:
    bars = [_Bar(ev.signal or ev.summary or "?", ev.baseline, ev.incident, ev.unit)
            for ev in (top.supporting if top else [])[:MAX_SIGNAL_BARS]
            if ev.baseline is not None or ev.incident is not None]
    moved = sorted((d for d in (traces.dependencies if traces else []) if d.p90_change > 0),
                   key=lambda d: -d.p90_change)[:MAX_TRACE_BARS]
    return bars + [_Bar(f"{d.kind} {d.name} p90", d.baseline.p90_ms if d.baseline else None,
                        d.incident.p90_ms if d.incident else None, "ms") for d in moved]


def png(view: IncidentView) -> bytes | None:
    """The chart as a PNG (for a chat thread); None when there is no evidence to draw."""
    inputs = _chart_inputs(view)
    if inputs.empty:
        return None
    with _CHART_LOCK:
        return _render(inputs, view.prometheus, "png")


def _render(inputs: _Inputs, prom: PrometheusEvidence | None, fmt: str) -> bytes:
    """One panel per kind of evidence there is, top to bottom, as ``fmt``."""
    # Imported here: matplotlib costs most of a second to import, and only pages with evidence need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [kind for kind, present in (("series", inputs.lines), ("kernel", inputs.tracks),
                                         ("requests", inputs.requests), ("bars", inputs.bars)) if present]
    fig = Figure(figsize=(10, 1.2 + 3.0 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)  # this figure's own canvas: no pyplot, no process-wide backend switch
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, kind in zip(axes, panels):
        if kind == "series":
            _draw_series(ax, inputs.lines, prom)
            _draw_marks(ax, inputs)
        elif kind == "kernel":
            _draw_tracks(ax, inputs.tracks)
            _draw_marks(ax, inputs)
        elif kind == "requests":
            _draw_requests(ax, inputs.requests)
            _draw_marks(ax, inputs)
        else:
            _draw_bars(ax, inputs.bars, inputs.domain)
    buf = io.BytesIO()
    # no date: the same incident gives the same file
    fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else {}, dpi=100)
    return buf.getvalue()


def svg(view: IncidentView) -> str | None:
    """The chart as an inline ``<svg>`` element (no XML prolog); None when there is no evidence to draw."""
    inputs = _chart_inputs(view)
    if inputs.empty:
        return None
    with _CHART_LOCK:
        svg = _render(inputs, view.prometheus, "svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]
    return svg.replace("<svg ", '<svg role="img" aria-label="incident chart" ', 1)


def _draw_marks(ax: Any, inputs: _Inputs) -> None:
    """The incident's moments as vertical lines, and the capture's window shaded, where they fall
    inside the panel's time range."""
    low, high = ax.get_xlim()
    from matplotlib import dates as mdates

    def inside(t: float) -> bool:
        return low <= mdates.date2num(_dt(t)) <= high

    if inputs.capture is not None and inside(inputs.capture[1]):
        ax.axvspan(_dt(inputs.capture[0]), _dt(inputs.capture[1]), color=CAPTURE_COLOR, alpha=0.14, lw=0,
                   label="capture")
    for t, what in inputs.marks:
        if inside(t):
            ax.axvline(_dt(t), color=MARK_COLORS.get(what, "#616e7c"), lw=1.1, ls="--", label=what)
    ax.set_xlim(low, high)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8,
              frameon=False)


def _draw_tracks(ax: Any, tracks: list[_Track]) -> None:
    from matplotlib import dates as mdates

    ax.set_title("Kernel, per flight-recorder interval (each signal scaled to its peak)", loc="left", fontsize=11)
    for n, track in enumerate(tracks):
        scale = track.peak or 1.0
        ax.plot([_dt(t) for t, _ in track.points], [v / scale for _, v in track.points], lw=1.5,
                color=LINE_COLORS[n % len(LINE_COLORS)], drawstyle="steps-pre",
                label=_legend_label(f"{track.label} (peak {num(track.peak)}/s)"))
    ax.set_ylim(-0.05, 1.15)
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.grid(True, alpha=0.3)


def _draw_requests(ax: Any, buckets: list[dict[str, Any]]) -> None:
    """The service's requests from its traces: the p90 duration per bucket, and the failing share
    on its own axis."""
    from matplotlib import dates as mdates

    ax.set_title("Traces: the service's requests (p90 duration, failing share)", loc="left", fontsize=11)
    times = [_dt((float(b["start"]) + float(b["end"])) / 2) for b in buckets]
    ax.plot(times, [float(b["p90_ms"]) for b in buckets], lw=1.5, color=LINE_COLORS[0], label="p90 (ms)")
    ax.set_ylabel("p90 (ms)")
    share = ax.twinx()
    failing = [100.0 * float(b.get("errors") or 0) / max(float(b["requests"]), 1.0) for b in buckets]
    share.plot(times, failing, lw=1.2, color=INCIDENT_COLOR, ls="--")
    share.set_ylabel("failing (%)")
    share.set_ylim(0, max(5.0, max(failing) * 1.15))
    ax.plot([], [], lw=1.2, color=INCIDENT_COLOR, ls="--", label="failing (%, right axis)")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.grid(True, alpha=0.3)


def _draw_series(ax: Any, lines: list[_Line], prom: PrometheusEvidence | None) -> None:
    from matplotlib import dates as mdates

    ax.set_title("Prometheus: burn rate and SLI", loc="left", fontsize=11)
    burn = [line for line in lines if line.kind == "burn_rate"]
    sli = [line for line in lines if line.kind == "sli"]
    # Burn rates (multiples) and SLI ratios (0..1) differ in scale: SLIs get their own axis when both show.
    sli_ax = ax.twinx() if burn and sli else ax
    for n, line in enumerate(burn + sli):
        target = ax if line.kind == "burn_rate" else sli_ax
        target.plot([_dt(t) for t, _ in line.points], [v for _, v in line.points], lw=1.6,
                    color=LINE_COLORS[n % len(LINE_COLORS)], ls="-" if line.kind == "burn_rate" else "--",
                    label=_legend_label(line.label + (" (right axis)" if target is not ax else "")))
    if burn:
        ax.axhline(1.0, color="#52606d", lw=0.8, ls=":", label="burn rate 1: budget spent in exactly the SLO period")
        ax.set_ylabel("burn rate (×)")
    if sli:
        sli_ax.set_ylabel("SLI ratio")
    for a in {ax, sli_ax}:  # headroom at the top for the window labels
        low, high = a.get_ylim()
        a.set_ylim(low, high + (high - low) * 0.12)
    for key, color in (("baseline", BASELINE_COLOR), ("incident", INCIDENT_COLOR)):
        w = getattr(prom, key) if prom is not None else None
        start, end = (w.start, w.end) if w is not None else (None, None)
        if start is not None and end is not None and end > start:
            ax.axvspan(_dt(start), _dt(end), color=color, alpha=0.16, lw=0)
            ax.text(_dt((start + end) / 2), 0.97, f"{key} window", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=9, color=WINDOW_LABEL_COLORS[key], fontweight="bold")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.grid(True, alpha=0.3)
    if sli_ax is not ax:  # one legend, drawn with the marks' (below the plot, hiding no line or label)
        for handle, label in zip(*sli_ax.get_legend_handles_labels()):
            ax.plot([], [], color=handle.get_color(), ls=handle.get_linestyle(), label=label)


def _draw_bars(ax: Any, bars: list[_Bar], domain: str) -> None:
    title = "Key signals, baseline vs incident" + (f": evidence for {domain}" if domain else "")
    ax.set_title(_mpl(title), loc="left", fontsize=11)
    if not bars:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No baseline-vs-incident signals yet", ha="center", va="center", transform=ax.transAxes,
                color="#616e7c", fontsize=11)
        return
    width = 0.38
    xs = list(range(len(bars)))
    # Each signal scaled to the larger of its two values, so milliseconds and rates share one axis.
    scales = [max(abs(bar.baseline or 0.0), abs(bar.incident or 0.0)) or 1.0 for bar in bars]
    low = 0.0
    for offset, side, color in ((-width / 2, "baseline", BASELINE_COLOR), (width / 2, "incident", INCIDENT_COLOR)):
        values = [getattr(bar, side) for bar in bars]
        heights = [0.0 if v is None else v / scale for v, scale in zip(values, scales)]
        low = min([low, *heights])
        drawn = ax.bar([x + offset for x in xs], heights, width, color=color, label=side)
        ax.bar_label(drawn, labels=[_mpl("n/a" if v is None else num(v) + unit(bar.unit))
                                    for bar, v in zip(bars, values)], fontsize=7, padding=2)
    ax.set_xticks(xs, labels=[_mpl(_wrap(bar.label, 22)) for bar in bars], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(low * 1.2 - 0.02, 1.25)
    ax.set_ylabel("scaled to the larger value", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)  # beside the title


def _wrap(text: str, width: int) -> str:
    """Lines of at most ``width`` characters, broken after ``.``, ``_``, ``/`` or a space where possible:
    signal names (``tcp_retrans.retransmits_per_s``) have no spaces for textwrap to break at."""
    lines = [""]
    for token in re.split(r"(?<=[._/ ])", text):
        if lines[-1] and len(lines[-1]) + len(token) > width:
            lines.append("")
        while len(lines[-1]) + len(token) > width:  # longer than a line: cut where it must be
            room = width - len(lines[-1])
            lines[-1] += token[:room]
            token = token[room:]
            lines.append("")
        lines[-1] += token
    return "\n".join(line.strip() for line in lines if line.strip())


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _mpl(text: str) -> str:
    """Text for matplotlib as it is: a ``$`` would otherwise start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _legend_label(text: str) -> str:
    # matplotlib hides legend entries whose label starts with "_".
    return _mpl(textwrap.shorten(text, 70, placeholder="…")).lstrip("_") or "series"
