"""The attribution rules as a table: one row per signal, what it reads, which fault domain it
speaks for, its threshold and the reason for that value, and whether it is a cause, a symptom or
upstream of every call.

The engine (``capture.attribution.engine``; ``responder.attribution.engine`` for the trace rows)
evaluates these rows; ``docs/attribution.md``'s rule table is generated from them
(``python -m capture.attribution.rules``, and a test keeps the two equal). The kernel rows are
checked at import against the probe catalog: the probe exists, reads the counter or histogram
named, and lists the domain among its own.

Measures:

- ``rate``: a probe counter per second. It moves when it rises by at least ``threshold`` per
  second over the baseline's rate and to at least MIN_RATIO times it. With ``min_share`` (the
  retransmits), a peer counts only when its count is also that share of the segments the
  workload sent it (``tcp_flow``'s acknowledged bytes in full-size segments, when it saw them):
  a busy path retransmitting a few segments in a thousand is not a lossy one.
- ``p90``: a latency histogram's p90. It moves when it reaches MIN_RATIO times the baseline's p90
  and at least ``threshold`` µs; both windows need ``min_samples`` samples.
- ``share_over``: the share of a histogram's samples at or above ``bound``. It moves when it
  reaches ``threshold`` and MIN_RATIO times the baseline's share.
- ``trace_rate``, ``trace_error_share``, ``trace_p90``: per dependency of a kind, from the spans
  (``responder.evidence.traces``); ``field`` names the dependency kind.
- ``peer_mean``: a per-peer mean (``field``, a sum per peer, over the requests per peer). It moves
  on a peer whose mean reaches MIN_RATIO times its baseline's and rises by ``threshold`` ms; both
  windows need ``min_samples`` requests from the peer.
- ``peer_rtt``: the kernel's smoothed RTT per peer (``tcp_flow``'s per-peer mean). It moves on a
  peer whose mean rises by ``threshold`` ms and to RTT_MIN_RATIO times its baseline; a cause on
  that peer's path only, and one that explains a slower call there only up to PATH_ROUND_TRIPS
  times its rise (time to first byte up with the sRTT flat is the server's, not the path's).
- ``demand``: a probe counter per second that grows with the requests served (the provider calls
  answered 2xx). It moves like ``trace_request_rate``: ``threshold`` times the baseline's and
  TRAFFIC_MIN_RISE per second more, with MIN_TRACE_CALLS counted in each window.
- ``trace_request_rate``: the service's own requests served per second (its server spans). It
  moves when it reaches ``threshold`` times the baseline's and rises by TRAFFIC_MIN_RISE per
  second. Demand is a cause that explains the service's CPU waits (see the engine's
  ``explain_away``).
"""
from __future__ import annotations

from dataclasses import dataclass

from capture.attribution.verdict import DOMAINS
from capture.probes import CATALOG
from common.docgen import markers, replace_between, rewrite

CAUSE, SYMPTOM, UPSTREAM = "cause", "symptom", "upstream"

# A rate or p90 must also be clearly above the baseline's, not a busy service doing more of the same.
MIN_RATIO = 3.0
# A ratio this large counts as a full-strength signal (strength 1.0); smaller ratios count less.
STRONG_RATIO = 20.0
# Latency histograms need this many samples in each window before a percentile means anything.
MIN_SAMPLES = 5
# Span latency is measured per call, not sampled into log2 buckets, so a smaller ratio than the
# kernel histograms' is already a clear move.
TRACE_MIN_RATIO = 2.0
# A dependency needs this many calls in each window before its quantiles or rates say anything.
MIN_TRACE_CALLS = 10
# Demand: the requests served per second must also rise by this much (a quiet service doubling
# from 0.5 to 1 request/s is not a surge), and a rise of TRAFFIC_STRONG_RATIO counts in full.
TRAFFIC_MIN_RISE = 1.0
TRAFFIC_STRONG_RATIO = 3.0
# A peer's sRTT must also reach this many times its baseline (a path that is 80 ms long anyway
# moving by a few ms is jitter)...
RTT_MIN_RATIO = 1.5
# ...and a rise on a dependency's path explains that dependency's slower calls up to this many
# times over: a call waits a round trip for its request and reply, more for what its client does
# around it (a pooled database call: the query, a statement prepared on first use, the pool's
# reset on release), for a reply larger than the congestion window after idle, and for a new
# connection's handshakes (TCP, TLS, a database's startup and authentication). In the lab, a
# 90 ms queue on the database's path made its calls' p90 4.6 round trips slower. A call slower
# than that is slower than its path: the dependency itself is too.
PATH_ROUND_TRIPS = 6.0
# Retransmits as a share of what was sent: the bytes a peer acknowledged, counted in segments of
# this size (a full one on an Ethernet path). Smaller segments make the share an upper bound.
FULL_SEGMENT_BYTES = 1448


@dataclass(frozen=True)
class Rule:
    signal: str  # the evidence's name, as the verdict and the page show it
    domain: str
    source: str  # "kernel" (a probe) or "trace"
    probe: str | None  # the probe read (kernel rules)
    measure: str  # rate | p90 | share_over | trace_rate | trace_error_share | trace_p90
    field: str  # the probe's counter or histogram; for trace rules the dependency kind
    what: str  # the signal in words
    threshold: float
    unit: str  # the threshold's unit
    reason: str  # why the threshold has this value
    role: str = CAUSE  # cause | symptom | upstream (a symptom on the way to every call)
    min_samples: int = MIN_SAMPLES
    bound: int = 0  # share_over: the value (µs) a sample counts from
    min_share: float = 0.0  # rate: a peer's count must also be this share of its segments sent
    # p90: timed per attempt (one response), so what slows a call only through its retries and
    # their waits (throttling) does not explain it
    per_attempt: bool = False

    @property
    def symptom(self) -> bool:
        return self.role in (SYMPTOM, UPSTREAM)

    @property
    def upstream(self) -> bool:
        return self.role == UPSTREAM


KERNEL_RULES: tuple[Rule, ...] = (
    Rule("tcp_retrans.retransmits_per_s", "network", "kernel", "tcp_retrans", "rate", "retransmits",
         "TCP retransmits", 0.5, "/s",
         "a healthy loopback or datacenter path retransmits well under 0.2 segments/s per workload; one every "
         "two seconds sustained is already a lossy path for a client making a few requests per second. A path "
         "losing under 3% of its segments costs a call a retransmit now and then, not a p90: in the lab, demand "
         "surges that saturated the node retransmitted 0.5-1.6% of the segments sent to the provider, a 4% loss "
         "on its path 5.9%", min_share=0.03),
    Rule("tcp_reset.received_per_s", "network", "kernel", "tcp_reset", "rate", "received",
         "TCP resets received", 0.2, "/s",
         "a peer or middlebox aborting connections: two in a ten-second capture above a baseline of none is "
         "unusual for an HTTP client with keep-alive"),
    Rule("tcp_connect.failures_per_s", "network", "kernel", "tcp_connect", "rate", "failed",
         "failed TCP connects", 0.2, "/s", "two failed connects in a ten-second capture are worth a look; none is "
         "normal"),
    Rule("tcp_connect.latency_p90_us", "network", "kernel", "tcp_connect", "p90", "connect_latency",
         "connect latency", 1000, "µs", "a SYN lost or a full accept queue costs at least a millisecond",
         min_samples=5),
    Rule("tcp_flow.peer_srtt_ms", "network", "kernel", "tcp_flow", "peer_rtt", "srtt",
         "smoothed RTT to a peer", 50.0, "ms",
         "a slow server lifts its clients' sRTT only up to the delayed-ACK timer (40 ms here, measured: the "
         "ACK of a request rides on a reply that comes within it, and goes alone after it), so a rise beyond "
         "that is the path: a queue or a longer route"),
    Rule("dns.failures_per_s", "dns", "kernel", "dns", "rate", "failures",
         "failed DNS lookups", 0.2, "/s", "two failed lookups in a ten-second capture above none"),
    Rule("dns.latency_p90_us", "dns", "kernel", "dns", "p90", "latency",
         "DNS lookup latency", 100_000, "µs",
         "a cached or local answer takes well under a millisecond; timed in the process, so a busy or starved "
         "process is slow to finish its lookups too (a symptom: demand surges that saturated the lab's 2 vCPUs "
         "took the p90 from 8 to 32-65 ms), while a resolver in trouble costs hundreds of ms or a retry timeout; "
         "a slow lookup nothing explains delays every call after it (upstream)", role=UPSTREAM),
    Rule("tls_http.status_429_per_s", "provider_throttling", "kernel", "tls_http", "rate", "status_429",
         "HTTP 429 responses", 0.2, "/s", "two throttled answers in a ten-second capture above none"),
    Rule("tls_http.status_5xx_per_s", "provider_throttling", "kernel", "tls_http", "rate", "status_5xx",
         "HTTP 5xx responses", 0.2, "/s", "two failed answers in a ten-second capture above none"),
    Rule("tls_http.ttfb_p90_us", "provider_latency", "kernel", "tls_http", "p90", "ttfb",
         "time to first response byte", 100_000, "µs",
         "a provider's first byte normally takes hundreds of ms, so the ratio decides; slower answers are a "
         "symptom many causes share, but not of throttling: each response is timed on its own, and the client's "
         "retries and retry-after waits fall between responses (in the lab's 11 throttling cases without "
         "another fault the p90 never moved)", role=SYMPTOM, per_attempt=True),
    Rule("backend_latency.peer_mean_ms", "retrieval_backend", "kernel", "backend_latency", "peer_mean",
         "latency_sum_us", "backend reply latency", 10.0, "ms",
         "a retrieval query of a few ms is normal; a slower reply is a symptom many causes share. Per peer, so "
         "it says which backend slowed and joins that dependency's path, and one peer's slow replies (a client "
         "of the workload's own, a resolver) cannot lift another's", role=SYMPTOM),
    Rule("tls_http.status_2xx_per_s", "traffic", "kernel", "tls_http", "demand", "status_2xx",
         "provider calls answered 2xx", 1.5, "×",
         "each request the service serves calls its model, so more successful provider calls per second is more "
         "demand (retries of throttled or failed calls are not 2xx); in the lab, surges raised it x1.7-4.3 and "
         "no fault case beyond x1.1", role=CAUSE),
    Rule("cpu_throttle.throttled_periods_per_s", "app_cpu", "kernel", "cpu_throttle", "rate", "nr_throttled",
         "CFS throttled periods", 1.0, "/s", "a tenth of the capture's 100 ms periods throttled"),
    Rule("memory_pressure.limit_hits_per_s", "app_memory", "kernel", "memory_pressure", "rate", "limit_hits",
         "memory limit hits", 1.0, "/s", "the kernel reclaiming at the limit, sustained: one hit per second"),
    Rule("oom_kill.kills_per_s", "app_memory", "kernel", "oom_kill", "rate", "oom_kills",
         "OOM kills", 0.05, "/s", "one kill in a twenty-second window above none: any OOM kill of the service is "
         "worth naming"),
    Rule("cpu_throttle.cpu_pressure_some_us_per_s", "app_cpu", "kernel", "cpu_throttle", "rate", "cpu_pressure_some_us",
         "time some task waited for a CPU (PSI)", 250_000, "µs/s",
         "the kernel's own count (cpu.pressure, some) of the time at least one of the workload's tasks was runnable "
         "but waiting: always on at the cost of a file read. In the lab's training cases, healthy services sat at "
         "3-15% of the time and up to 32% in demand surges (demand explains that), CPU quota and contention faults "
         "at 28-100%; neighbours that only shared the CPUs reached 18%, which this misses (the run-queue histogram "
         "of a capture sees them)"),
    Rule("runq_latency.share_waits_over_1ms", "app_cpu", "kernel", "runq_latency", "share_over", "runq_wait",
         "run-queue waits ≥1 ms", 0.12, "share",
         "an unstarved service waits tens of µs and CFS hands out slices of a few ms; in the lab on 2 vCPUs a "
         "busy but unstarved node reached 7% of waits ≥1 ms and a starved service 20% and more",
         min_samples=50, bound=1024),
)

# Why a dependency's failing calls move at 5% (retrieval and guardrail alike).
_ERROR_SHARE_REASON = ("a twentieth of the calls failing above the baseline's rate, below the error page's own "
                       "level (7.2% of requests failing is 14.4 times a 0.5% budget): a dependency that fails every "
                       "call it touches accounts for a page at that share; mostly timeouts makes it a symptom")

TRACE_RULES: tuple[Rule, ...] = (
    Rule("trace.llm.throttled_share", "provider_throttling", "trace", None, "trace_rate", "llm",
         "provider calls answered 429/529/503", 0.05, "share",
         "a twentieth of the provider calls throttled (the SDK's retries hide the rest)"),
    Rule("trace.retrieval.error_share", "retrieval_backend", "trace", None, "trace_error_share", "retrieval",
         "failing retrieval calls", 0.05, "share",
         _ERROR_SHARE_REASON),
    Rule("trace.policy.error_share", "policy_layer", "trace", None, "trace_error_share", "policy",
         "failing guardrail calls", 0.05, "share",
         _ERROR_SHARE_REASON),
    Rule("trace.llm.time_to_first_token_p90", "provider_latency", "trace", None, "trace_p90", "llm",
         "provider time to first token p90 (else duration p90)", 100.0, "ms",
         "a provider answers in hundreds of ms; network instead when every outbound dependency slowed",
         role=SYMPTOM),
    Rule("trace.retrieval.p90", "retrieval_backend", "trace", None, "trace_p90", "retrieval",
         "retrieval call p90", 25.0, "ms",
         "on the lab's 2 vCPUs a healthy database call's p90 moved from 5 to 16 ms under load alone; retrieval "
         "faults worth an alert cost hundreds of ms; network instead when every outbound dependency slowed",
         role=SYMPTOM),
    Rule("trace.policy.p90", "policy_layer", "trace", None, "trace_p90", "policy",
         "guardrail call p90", 10.0, "ms", "a guardrail check takes a few ms", role=SYMPTOM),
    Rule("trace.server.request_rate", "traffic", "trace", None, "trace_request_rate", "server",
         "requests served per second", 1.5, "×",
         "the lab's steady load varies by a few percent between windows; half as much again is a change in "
         "demand, not noise, and the service doing more work explains its CPU waits and slower calls"),
    Rule("trace.http.p90", "network", "trace", None, "trace_p90", "http",
         "other HTTP call p90", 20.0, "ms", "a plain HTTP dependency slower on its own says little but the path",
         role=SYMPTOM),
)

RULES = KERNEL_RULES + TRACE_RULES
TRACE_RULE = {(r.measure, r.field): r for r in TRACE_RULES}


def check(rules: tuple[Rule, ...] = RULES) -> None:
    """Each row against the probe catalog and the domains; raises ValueError naming the row."""
    seen: set[str] = set()
    for r in rules:
        where = f"attribution rule {r.signal}"
        if r.signal in seen:
            raise ValueError(f"{where}: listed twice")
        seen.add(r.signal)
        if r.domain not in DOMAINS:
            raise ValueError(f"{where}: unknown domain {r.domain!r}")
        if r.role not in (CAUSE, SYMPTOM, UPSTREAM):
            raise ValueError(f"{where}: role must be cause, symptom or upstream")
        if r.source == "trace":
            continue
        probe = CATALOG.get(r.probe or "")
        if probe is None:
            raise ValueError(f"{where}: no probe {r.probe!r} in the catalog")
        counted = r.measure in ("rate", "demand", "peer_mean")
        fields = probe.counters if counted else probe.histograms
        if r.field not in fields:
            kind = "counter" if counted else "histogram"
            raise ValueError(f"{where}: probe {r.probe} has no {kind} {r.field!r} (it has {sorted(fields)})")
        if r.domain not in probe.domains:
            raise ValueError(f"{where}: probe {r.probe} does not speak for {r.domain} (its domains: {probe.domains})")


check()


def markdown() -> str:
    """The rule table as docs/attribution.md shows it."""
    def threshold(r: Rule) -> str:
        value = f"{r.threshold:g}"
        if r.measure == "rate" and r.min_share:
            return f"+{value}{r.unit} and ×{MIN_RATIO:g}; per peer ≥ {r.min_share:.0%} of the segments sent"
        if r.measure == "rate":
            return f"+{value}{r.unit} and ×{MIN_RATIO:g}"
        if r.measure == "p90":
            return f"≥ {value} {r.unit} and ×{MIN_RATIO:g} ({r.min_samples}+ samples)"
        if r.measure == "share_over":
            return f"≥ {r.threshold:.0%} of waits ≥ {r.bound:g} µs and ×{MIN_RATIO:g} ({r.min_samples}+ samples)"
        if r.measure == "trace_p90":
            return f"+{value} {r.unit} and ×{TRACE_MIN_RATIO:g} ({MIN_TRACE_CALLS}+ calls)"
        if r.measure == "peer_rtt":
            return (f"+{value} {r.unit} and ×{RTT_MIN_RATIO:g} on a peer ({r.min_samples}+ samples in each window); "
                    f"explains its path's calls slower by up to {PATH_ROUND_TRIPS:g}× the rise")
        if r.measure == "trace_request_rate":
            return f"×{value} and +{TRAFFIC_MIN_RISE:g}/s ({MIN_TRACE_CALLS}+ requests)"
        if r.measure == "peer_mean":
            return f"mean +{value} {r.unit} and ×{MIN_RATIO:g} on a peer ({r.min_samples}+ requests in each window)"
        if r.measure == "demand":
            return f"×{value} and +{TRAFFIC_MIN_RISE:g}/s ({MIN_TRACE_CALLS}+ counted in each window)"
        if r.measure == "trace_error_share":
            return f"+{r.threshold:.0%} of calls ({MIN_TRACE_CALLS}+ calls)"
        return f"≥ {r.threshold:.0%} of calls ({MIN_TRACE_CALLS}+ calls)"

    rows = ["| signal | reads | domain | moves at | role | why this threshold |", "| --- | --- | --- | --- | --- | --- |"]
    for r in RULES:
        reads = f"`{r.probe}` {r.field}" if r.source == "kernel" else f"spans of `{r.field}` dependencies"
        rows.append(f"| `{r.signal}` | {reads} | `{r.domain}` | {threshold(r)} | {r.role} | {r.reason} |")
    return "\n".join(rows) + "\n"


BEGIN, END = markers("python -m capture.attribution.rules", "rules table")


def render_doc(text: str) -> str:
    """``text`` (docs/attribution.md) with the rules table between its markers replaced by today's."""
    return replace_between(text, BEGIN, END, markdown(), "docs/attribution.md")


if __name__ == "__main__":  # rewrite the table in docs/attribution.md
    from pathlib import Path

    rewrite(Path(__file__).resolve().parents[2] / "docs" / "attribution.md", render_doc)
