"""Wire schemas of the capture agent: what a capture is asked to do and what it returns.

Defined once here and imported by the agent, its HTTP API, its client and the responder. Every
type round-trips through ``to_dict`` / ``from_dict`` (plain JSON types), which is the agent's
HTTP body format.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Bounds the agent enforces on every request, from any caller (HTTP, CLI, responder, chat).
MAX_CAPTURE_SECONDS = 120.0
MIN_CAPTURE_SECONDS = 1.0
MAX_BASELINE_SECONDS = 600.0
MAX_TARGET_ITEMS = 64
# The peer a probe reports for a connection whose socket it never saw (in a result's ``top`` lists).
UNKNOWN_PEER = "unknown"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


class RequestError(ValueError):
    """A capture request that the agent refuses; the message says which field and why."""


def parse_duration(text: str | float | int, *, name: str = "duration") -> float:
    """Parse ``10s``, ``1.5m``, ``500ms`` or a bare number of seconds into seconds."""
    if isinstance(text, bool):
        raise RequestError(f"{name}: expected a duration like 10s, got {text!r}")
    if isinstance(text, (int, float)):
        if not -1e12 < text < 1e12:  # also NaN, and an integer too large for a float
            raise RequestError(f"{name}: expected a number of seconds below 10^12")
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m:
        raise RequestError(f"{name}: expected a duration like 10s, 500ms or 2m, got {str(text)[:40]!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value / 1000.0 if unit == "ms" else value * 60.0 if unit == "m" else value


def check_probes(probes: Any, known_probes: Any = None) -> list[str]:
    """``probes`` if it is a non-empty list of probe names (all in ``known_probes`` when given);
    RequestError otherwise. The same rule for every way a capture is asked for."""
    if not isinstance(probes, list) or not probes or not all(isinstance(p, str) for p in probes):
        raise RequestError("probes: expected a non-empty list of probe names")
    if known_probes is not None:
        bad = [p for p in probes if p not in known_probes]
        if bad:
            raise RequestError(f"probes: unknown probe(s) {bad}; known: {sorted(known_probes)}")
    return probes


def check_duration(seconds: float, name: str = "duration_s") -> float:
    """``seconds`` if a capture may last that long; RequestError otherwise."""
    if not MIN_CAPTURE_SECONDS <= seconds <= MAX_CAPTURE_SECONDS:
        raise RequestError(
            f"{name}: {seconds:g}s is outside [{MIN_CAPTURE_SECONDS:g}, {MAX_CAPTURE_SECONDS:g}] seconds")
    return seconds


# Kubernetes identities as the API server reports them: a pod's metadata.uid, and a container's
# status.containerStatuses[].containerID without its runtime prefix (containerd://, cri-o://).
# A container id may also be shortened to a unique prefix of at least 12 hex digits, as `podman
# ps` and `docker ps` print it.
_POD_UID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CONTAINER_ID_RE = re.compile(r"^[0-9a-f]{12,64}$")
CONTAINER_ID_FORMS = "64 hex digits, or a prefix of at least 12"


def container_id(value: str) -> str:
    """A container id without its runtime prefix (``containerd://abc…`` -> ``abc…``)."""
    return value.split("://", 1)[-1]


def checked_container_id(value: str) -> str | None:
    """``value`` without its runtime prefix when that is a container id (CONTAINER_ID_FORMS);
    None when it is not one."""
    bare = container_id(value)
    return bare if _CONTAINER_ID_RE.match(bare) else None


@dataclass
class CaptureTarget:
    """Which workload a capture is scoped to. An event is in scope when any key matches.

    ``pods`` (pod UIDs) and ``containers`` (container ids) are resolved by the agent to the
    kubepods cgroups on its node: a pod stands for its whole pod cgroup, unless some of its
    containers are named, in which case only those containers' cgroups are in scope."""

    pids: list[int] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # paths in the unified (v2) hierarchy
    ports: list[int] = field(default_factory=list)  # local or remote TCP port
    pods: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.pids or self.cgroups or self.ports or self.pods or self.containers)

    def describe(self) -> str:
        parts = [f"pid:{p}" for p in self.pids] + [f"cgroup:{c}" for c in self.cgroups]
        parts += [f"port:{p}" for p in self.ports] + [f"pod:{u}" for u in self.pods]
        parts += [f"container:{c[:12]}" for c in self.containers]
        return ", ".join(parts) or "(whole node)"

    @classmethod
    def from_dict(cls, data: Any) -> CaptureTarget:
        if not isinstance(data, dict):
            raise RequestError("target: expected an object with pids, cgroups, ports, pods and/or containers")
        unknown = set(data) - {"pids", "cgroups", "ports", "pods", "containers"}
        if unknown:
            raise RequestError(f"target: unknown field(s) {sorted(unknown)}; "
                               "expected pids, cgroups, ports, pods, containers")
        pids = _int_list(data.get("pids", []), "target.pids", 1, 2**22)
        ports = _int_list(data.get("ports", []), "target.ports", 1, 65535)
        cgroups = _str_list(data.get("cgroups", []), "target.cgroups", "a list of cgroup paths")
        for c in cgroups:
            if "\x00" in c or ".." in c.split("/"):
                raise RequestError(f"target.cgroups: {c!r} is not a cgroup path")
        pods = _str_list(data.get("pods", []), "target.pods", "a list of pod UIDs")
        for u in pods:
            if not _POD_UID_RE.match(u):
                raise RequestError(f"target.pods: {u!r} is not a pod UID (metadata.uid)")
        containers = []
        for c in _str_list(data.get("containers", []), "target.containers", "a list of container ids"):
            if (bare := checked_container_id(c)) is None:
                raise RequestError(f"target.containers: {container_id(c)!r} is not a container id ({CONTAINER_ID_FORMS})")
            containers.append(bare)
        target = cls(pids=pids, cgroups=list(cgroups), ports=ports, pods=pods, containers=containers)
        if target.is_empty():
            raise RequestError("target: name at least one pid, cgroup, port, pod or container")
        return target


def _str_list(value: Any, name: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RequestError(f"{name}: expected {what}")
    if len(value) > MAX_TARGET_ITEMS:
        raise RequestError(f"{name}: at most {MAX_TARGET_ITEMS} entries")
    return list(value)


def _int_list(value: Any, name: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list):
        raise RequestError(f"{name}: expected a list of integers")
    if len(value) > MAX_TARGET_ITEMS:
        raise RequestError(f"{name}: at most {MAX_TARGET_ITEMS} entries")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise RequestError(f"{name}: {v!r} is not an integer in [{lo}, {hi}]")
        out.append(v)
    return out


CAPTURE_SOURCES = ("live", "recorder")


def merge_series(per_node: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several nodes' recorder series as one: intervals ending in the same second add up."""
    if len(per_node) == 1:
        return list(per_node[0])
    merged: dict[int, dict[str, Any]] = {}
    for series in per_node:
        for iv in series:
            slot = merged.setdefault(round(iv["end"]), {"start": iv["start"], "end": iv["end"], "counters": {}})
            slot["start"] = min(slot["start"], iv["start"])
            for name, value in iv.get("counters", {}).items():
                slot["counters"][name] = slot["counters"].get(name, 0) + value
    return [merged[k] for k in sorted(merged)]


@dataclass
class CaptureRequest:
    """Run ``probes`` for ``duration_s`` on ``target``; compare with ``baseline_s`` before it."""

    target: CaptureTarget
    probes: list[str]
    duration_s: float = 10.0
    baseline_s: float = 60.0
    # Unix time the baseline window ends at (e.g. the alert's startsAt); None: the capture start.
    baseline_end: float | None = None
    incident_id: str | None = None
    # "live": attach the probes for duration_s. "recorder": attach nothing and answer at once
    # from the flight recorder's history, baseline_end (required) to now; duration_s unused.
    source: str = "live"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, known_probes: list[str] | None = None) -> CaptureRequest:
        if not isinstance(data, dict):
            raise RequestError("body: expected a JSON object")
        unknown = set(data) - {"target", "probes", "duration_s", "baseline_s", "baseline_end", "incident_id", "source"}
        if unknown:
            raise RequestError(f"unknown field(s) {sorted(unknown)}")
        if "target" not in data:
            raise RequestError("target: required")
        target = CaptureTarget.from_dict(data["target"])
        probes = check_probes(data.get("probes"), known_probes)
        duration = check_duration(parse_duration(data.get("duration_s", 10.0), name="duration_s"))
        baseline = parse_duration(data.get("baseline_s", 60.0), name="baseline_s")
        if not 0 <= baseline <= MAX_BASELINE_SECONDS:
            raise RequestError(f"baseline_s: {baseline:g}s is outside [0, {MAX_BASELINE_SECONDS:g}] seconds")
        baseline_end = data.get("baseline_end")
        if baseline_end is not None and (isinstance(baseline_end, bool) or not isinstance(baseline_end, (int, float))
                                         or not 0 < baseline_end < 1e11):  # NaN, infinity, milliseconds
            raise RequestError("baseline_end: expected a Unix timestamp in seconds")
        incident_id = data.get("incident_id")
        if incident_id is not None and not isinstance(incident_id, str):
            raise RequestError("incident_id: expected a string")
        source = data.get("source", "live")
        if source not in CAPTURE_SOURCES:
            raise RequestError(f"source: expected one of {', '.join(CAPTURE_SOURCES)}, got {source!r}")
        if source == "recorder" and baseline_end is None:
            raise RequestError("baseline_end: required when source is recorder (the incident window starts there)")
        return cls(target=target, probes=list(dict.fromkeys(probes)), duration_s=duration,
                   baseline_s=baseline, baseline_end=baseline_end, incident_id=incident_id, source=source)


@dataclass
class RecorderQuery:
    """A question to the flight recorder: which target (none: the whole node), which window."""

    target: CaptureTarget
    since: float | None = None
    until: float | None = None
    probes: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, query: Any, *, known_probes: list[str]) -> RecorderQuery:
        """From a query string's multidict: cgroup=PATH and pid=N (repeatable), since/until
        (Unix seconds), probes=a,b."""
        unknown = set(query.keys()) - {"cgroup", "pid", "since", "until", "probes"}
        if unknown:
            raise RequestError(f"unknown query parameter(s) {sorted(unknown)}; expected cgroup, pid, since, until, probes")
        pids = []
        for v in query.getall("pid", []):
            if not v.isdigit():
                raise RequestError(f"pid: {v!r} is not a process id")
            pids.append(int(v))
        target = {"pids": pids, "cgroups": list(query.getall("cgroup", []))}
        tgt = CaptureTarget.from_dict(target) if pids or target["cgroups"] else CaptureTarget()
        bounds: dict[str, float | None] = {}
        for name in ("since", "until"):
            v = query.get(name)
            if v is None:
                bounds[name] = None
                continue
            try:
                t = float(v)
            except ValueError:
                raise RequestError(f"{name}: expected Unix seconds, got {v!r}") from None
            if not 0 <= t < 1e11:
                raise RequestError(f"{name}: {v!r} is not a Unix time in seconds")
            bounds[name] = t
        if bounds["since"] is not None and bounds["until"] is not None and bounds["since"] >= bounds["until"]:
            raise RequestError("since: must be before until")
        probes = [p for p in (query.get("probes") or "").split(",") if p]
        bad = [p for p in probes if p not in known_probes]
        if bad:
            raise RequestError(f"probes: {bad} not kept by the recorder; it keeps {sorted(known_probes)}")
        return cls(target=tgt, since=bounds["since"], until=bounds["until"], probes=probes)


@dataclass
class Histogram:
    """A log2 histogram: ``buckets`` maps the bucket's upper bound (in ``unit``) to its count."""

    unit: str
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(self.buckets.values())

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile ``q`` (a conservative estimate)."""
        total = self.count
        if total == 0:
            return None
        rank, seen = q * total, 0
        for upper in sorted(self.buckets):
            seen += self.buckets[upper]
            if seen >= rank:
                return float(upper)
        return float(max(self.buckets))

    def fraction_above(self, bound: int) -> float:
        """Share of samples in buckets whose lower bound is at least ``bound``."""
        total = self.count
        if total == 0:
            return 0.0
        return sum(c for upper, c in self.buckets.items() if upper // 2 >= bound) / total

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "buckets": {str(k): v for k, v in sorted(self.buckets.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        return cls(unit=data["unit"], buckets={int(k): int(v) for k, v in data.get("buckets", {}).items()})


@dataclass
class ProbeCost:
    """What a probe cost the node, from the kernel's BPF statistics and the agent's clock."""

    bpf_run_time_ns: int = 0
    bpf_run_count: int = 0
    programs: int = 0
    compile_ms: float = 0.0
    attach_ms: float = 0.0
    preloaded: bool = False  # compiled and verified before the capture asked for it
    # cgroupfs probes: user-space CPU spent reading the files, and how many reads.
    sample_cpu_ns: int = 0
    samples: int = 0


# ProbeCost fields that add up across nodes (the rest are per-node latencies or flags).
_SUMMED_COST = ("bpf_run_time_ns", "bpf_run_count", "programs", "sample_cpu_ns", "samples")


@dataclass
class ProbeResult:
    """One probe over one window. Counters are totals over ``window_s`` seconds."""

    probe: str
    window_s: float
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    top: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # top-N peers etc.
    gauges: dict[str, float] = field(default_factory=dict)  # point-in-time values, e.g. a quota
    notes: list[str] = field(default_factory=list)  # what was attached or read, and where
    events: int = 0  # events in scope that the program aggregated
    lost: int = 0  # events the program could not record (a map full)
    truncated: str | None = None  # why the probe stopped early, e.g. its event budget
    error: str | None = None
    cost: ProbeCost = field(default_factory=ProbeCost)
    # A capture's counters per owning cgroup id (the id as a string): which pod or container of
    # the target the events came from.
    by_cgroup: dict[str, dict[str, float]] = field(default_factory=dict)

    def merged_with(self, other: ProbeResult, *, concurrent: bool = False) -> ProbeResult:
        """This result and ``other`` as one: counters, histograms, top lists, events and losses
        add up. ``other`` is either the same probe over an adjacent window (the windows add;
        gauges, notes and cost stay this result's) or, with ``concurrent``, over the same window
        on another node (the window stays; gauges take the larger value, notes and costs add)."""
        counters = dict(self.counters)
        for k, v in other.counters.items():
            counters[k] = counters.get(k, 0.0) + v
        histograms = {k: Histogram(h.unit, dict(h.buckets)) for k, h in self.histograms.items()}
        for k, h in other.histograms.items():
            mine = histograms.setdefault(k, Histogram(h.unit, {}))
            for upper, n in h.buckets.items():
                mine.buckets[upper] = mine.buckets.get(upper, 0) + n
        top: dict[str, list[dict[str, Any]]] = {}
        for k in dict.fromkeys([*self.top, *other.top]):
            counts: dict[tuple, dict[str, Any]] = {}
            for item in [*self.top.get(k, []), *other.top.get(k, [])]:
                ident = tuple(sorted((f, str(v)) for f, v in item.items() if f != "count"))
                entry = counts.setdefault(ident, {**item, "count": 0})
                entry["count"] += item.get("count", 0)
            top[k] = sorted(counts.values(), key=lambda e: -e["count"])
        by_cgroup = {cg: dict(c) for cg, c in self.by_cgroup.items()}
        for cg, c in other.by_cgroup.items():
            mine_c = by_cgroup.setdefault(cg, {})
            for k, v in c.items():
                mine_c[k] = mine_c.get(k, 0.0) + v
        gauges, notes, cost = dict(self.gauges), list(self.notes), self.cost
        window = self.window_s + other.window_s
        if concurrent:
            window = max(self.window_s, other.window_s)
            for k, v in other.gauges.items():
                gauges[k] = max(gauges.get(k, v), v)
            notes += [n for n in other.notes if n not in notes]
            cost = ProbeCost(**{f: getattr(self.cost, f) + getattr(other.cost, f) for f in _SUMMED_COST},
                             compile_ms=max(self.cost.compile_ms, other.cost.compile_ms),
                             attach_ms=max(self.cost.attach_ms, other.cost.attach_ms),
                             preloaded=self.cost.preloaded and other.cost.preloaded)
        error = self.error
        if concurrent and other.error and other.error != error:
            error = f"{error}; {other.error}" if error else other.error
        return ProbeResult(self.probe, window, counters, histograms, top, gauges, notes,
                           self.events + other.events, self.lost + other.lost,
                           self.truncated or (other.truncated if concurrent else None), error, cost, by_cgroup)

    def rate(self, counter: str) -> float:
        return self.counters.get(counter, 0.0) / self.window_s if self.window_s > 0 else 0.0

    def peer_means(self, sums: str, counts: str, min_count: int = 1) -> dict[str, float]:
        """Per peer in both top lists with at least ``min_count`` in ``counts``: its ``sums``
        entry over its ``counts`` entry (a mean per peer; a top list's counts are summed over
        cgroups, so the decoder cannot keep a mean itself)."""
        n = {e["peer"]: e.get("count", 0) for e in self.top.get(counts, [])}
        return {e["peer"]: e.get("count", 0) / n[e["peer"]] for e in self.top.get(sums, [])
                if n.get(e["peer"], 0) >= max(min_count, 1)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["histograms"] = {k: h.to_dict() for k, h in self.histograms.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            probe=data["probe"], window_s=float(data["window_s"]), counters=dict(data.get("counters", {})),
            histograms={k: Histogram.from_dict(h) for k, h in data.get("histograms", {}).items()},
            top={k: list(v) for k, v in data.get("top", {}).items()},
            gauges={k: float(v) for k, v in data.get("gauges", {}).items()}, notes=list(data.get("notes", [])),
            events=int(data.get("events", 0)),
            lost=int(data.get("lost", 0)), truncated=data.get("truncated"), error=data.get("error"),
            cost=ProbeCost(**data.get("cost", {})),
            by_cgroup={str(k): {c: float(v) for c, v in d.items()} for k, d in data.get("by_cgroup", {}).items()})


@dataclass
class CaptureCost:
    """The whole capture's own cost, summed over its probes, plus the agent's CPU time."""

    bpf_run_time_ns: int = 0
    bpf_run_count: int = 0
    events: int = 0
    lost: int = 0
    agent_cpu_s: float = 0.0
    startup_ms: float = 0.0  # compile + load + attach before the first event could be seen
    wall_s: float = 0.0

    def summary(self) -> str:
        return (f"BPF {self.bpf_run_time_ns / 1e6:.1f} ms CPU over {self.bpf_run_count:,} runs, "
                f"{self.events:,} events ({self.lost:,} lost), agent CPU {self.agent_cpu_s:.2f} s, "
                f"start-up {self.startup_ms:.0f} ms")


@dataclass
class CaptureResult:
    """The incident window from a scoped capture and, when the agent had one, its baseline."""

    id: str
    node: str
    target: CaptureTarget
    started_at: float
    ended_at: float
    incident: dict[str, ProbeResult] = field(default_factory=dict)
    baseline: dict[str, ProbeResult] = field(default_factory=dict)
    baseline_note: str = ""  # where the baseline came from, or why there is none
    cgroup_ids: list[int] = field(default_factory=list)
    # Who the capture was about: each cgroup's container / pod identity, and the processes.
    workloads: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    cost: CaptureCost = field(default_factory=CaptureCost)
    errors: list[str] = field(default_factory=list)
    # Seen in the incident but not in the baseline: egress peers ("ip:port") and executables,
    # each {"name", "first_seen" (Unix s), "count"}; novelty_note says why a list is missing.
    new_peers: list[dict[str, Any]] = field(default_factory=list)
    new_processes: list[dict[str, Any]] = field(default_factory=list)
    novelty_note: str = ""
    # A capture fanned out over several nodes (``combine``): each node's outcome
    # ({"node", "agent", "status": ok | failed | no agent | skipped, "error", "capture_id", "pods", "cost"})
    # and each target pod ({"namespace", "name", "uid", "node", "workload_kind", "workload",
    # "containers", "captured"}). Empty for a capture by one agent.
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    source: str = "live"  # "recorder": read from the flight recorder's history, no probe attached
    # The flight recorder's per-interval counters for the target from the baseline's start to the
    # capture's end ({"start", "end", "counters": {"probe.counter": count}}): a timeline's data.
    series: list[dict[str, Any]] = field(default_factory=list)
    # What the target's workloads did that they had never done, scored by the agent's early
    # warning against their whole recorder history and flagged: {"kind" (egress_peer |
    # executable), "what", "name" (a peer's DNS name), "first_seen", "count", "score", "workload"}.
    anomalies: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def combine(cls, results: list[CaptureResult], nodes: list[dict[str, Any]],
                pods: list[dict[str, Any]]) -> CaptureResult:
        """Several nodes' captures of one incident as one result: the same probe's results over
        the same window add up (rates become the workload's total over its pods), costs add
        up, workloads, processes and errors are kept with the node they came from."""
        if not results:
            raise ValueError("combine: no results")
        out = cls(id="+".join(r.id for r in results), node=", ".join(r.node for r in results),
                  target=CaptureTarget(), started_at=min(r.started_at for r in results),
                  ended_at=max(r.ended_at for r in results), nodes=nodes, pods=pods, source=results[0].source,
                  baseline_note="; ".join(dict.fromkeys(r.baseline_note for r in results if r.baseline_note)),
                  novelty_note="; ".join(dict.fromkeys(r.novelty_note for r in results if r.novelty_note)))
        for f in fields(CaptureTarget):
            merged = [v for r in results for v in getattr(r.target, f.name)]
            setattr(out.target, f.name, list(dict.fromkeys(merged)))
        for r in results:
            for window, mine in ((r.incident, out.incident), (r.baseline, out.baseline)):
                for name, pr in window.items():
                    mine[name] = mine[name].merged_with(pr, concurrent=True) if name in mine else pr
            out.cgroup_ids += r.cgroup_ids
            out.workloads += [dict(w, node=w.get("node") or r.node) for w in r.workloads]
            out.processes += [dict(p, node=r.node) for p in r.processes]
            out.errors += [f"{r.node}: {e}" for e in r.errors]
            for c in ("bpf_run_time_ns", "bpf_run_count", "events", "lost", "agent_cpu_s"):
                setattr(out.cost, c, getattr(out.cost, c) + getattr(r.cost, c))
            out.cost.startup_ms = max(out.cost.startup_ms, r.cost.startup_ms)
            out.cost.wall_s = max(out.cost.wall_s, r.cost.wall_s)
        out.series = merge_series([r.series for r in results])
        for attr in ("new_peers", "new_processes"):
            seen: dict[str, dict[str, Any]] = {}
            for r in results:
                for item in getattr(r, attr):
                    if item["name"] in seen:
                        prev = seen[item["name"]]
                        prev["count"] = prev.get("count", 0) + item.get("count", 0)
                        prev["first_seen"] = min(prev["first_seen"], item["first_seen"])
                    else:
                        seen[item["name"]] = dict(item)
            setattr(out, attr, sorted(seen.values(), key=lambda i: i["first_seen"]))
        out.anomalies = sorted((dict(a, node=a.get("node") or r.node) for r in results for a in r.anomalies),
                               key=lambda a: a["first_seen"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "node": self.node, "target": asdict(self.target),
            "started_at": self.started_at, "ended_at": self.ended_at,
            "incident": {k: v.to_dict() for k, v in self.incident.items()},
            "baseline": {k: v.to_dict() for k, v in self.baseline.items()},
            "baseline_note": self.baseline_note, "cgroup_ids": list(self.cgroup_ids),
            "workloads": list(self.workloads), "processes": list(self.processes),
            "cost": asdict(self.cost), "errors": list(self.errors),
            "new_peers": list(self.new_peers), "new_processes": list(self.new_processes),
            "novelty_note": self.novelty_note, "nodes": list(self.nodes), "pods": list(self.pods),
            "source": self.source, "series": list(self.series), "anomalies": list(self.anomalies),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaptureResult:
        return cls(
            id=data["id"], node=data["node"], target=CaptureTarget(**data["target"]),
            started_at=data["started_at"], ended_at=data["ended_at"],
            incident={k: ProbeResult.from_dict(v) for k, v in data.get("incident", {}).items()},
            baseline={k: ProbeResult.from_dict(v) for k, v in data.get("baseline", {}).items()},
            baseline_note=data.get("baseline_note", ""), cgroup_ids=list(data.get("cgroup_ids", [])),
            workloads=list(data.get("workloads", [])), processes=list(data.get("processes", [])),
            cost=CaptureCost(**data.get("cost", {})), errors=list(data.get("errors", [])),
            new_peers=list(data.get("new_peers", [])), new_processes=list(data.get("new_processes", [])),
            novelty_note=data.get("novelty_note", ""), nodes=list(data.get("nodes", [])),
            pods=list(data.get("pods", [])), source=data.get("source", "live"), series=list(data.get("series", [])),
            anomalies=list(data.get("anomalies", [])))


@dataclass
class ProbeInfo:
    """A catalog entry as the agent lists it."""

    name: str
    summary: str
    kind: str  # tracepoint, uprobe or cgroupfs
    attach: list[str]
    cost_class: str  # low / medium / high: expected event rate on a busy node
    event_budget_per_s: int
    domains: list[str]
