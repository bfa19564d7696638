"""Trace evidence: for one service, how each of its dependencies behaved in a baseline window and
in the incident window, and which incident traces show the change best.

Owns three things: ``classify`` (which dependency a span is a call to), ``trace_evidence`` (the
TRACES shape of the attribution contract, without backend/reachable/error, exemplar urls left None
for the pipeline to fill) and ``trace_signals`` (the per-dependency numbers attribution reads).

Conventions followed (OpenTelemetry semantic conventions v1.45 for HTTP, database and RPC; the
GenAI conventions as moved to open-telemetry/semantic-conventions-genai, client-inference.md,
gen-ai-spans.md and gen-ai-guardrails.md, plus the deprecated names of semconv <= 1.36):

Classification, first rule that matches (``classify``):
  1. kind SERVER -> ("server", span.service): the service's own end-to-end requests.
     PRODUCER/CONSUMER spans are ignored.
  2. GenAI spans (``gen_ai.operation.name``, ``gen_ai.provider.name`` or the deprecated
     ``gen_ai.system``), kind CLIENT or INTERNAL:
       operation ``apply_guardrail`` or any operation naming a guard/moderation -> "policy";
       ``embeddings``, ``retrieval`` and the memory operations -> "retrieval";
       agent/framework operations (invoke_agent, create_agent, invoke_workflow, execute_tool,
       plan) -> ignored, they wrap the calls that are counted; except a CLIENT invoke_agent (a
       remote agent), which is "llm";
       anything else (chat, generate_content, text_completion, ...) -> "llm".
     The name is ``gen_ai.provider.name``, else ``gen_ai.system``, else the server address
     (a guardrail prefers ``gen_ai.guardrail.component.name``).
  3. ``db.system.name`` (or the deprecated ``db.system``) -> ("retrieval", the system).
  4. a span name mentioning guard/moderation/content safety/policy, or, on INTERNAL spans,
     attribute keys under ``guardrail.``/``moderation.``/``policy.`` -> "policy"
     (named by the guardrail component, else the server address, else the span name).
  5. a span name mentioning retrieval/vector/embedding/rerank or a vector store -> "retrieval".
  6. CLIENT spans with ``http.request.method`` (or ``http.method``/``url.full``) -> "http", or
     "retrieval" when the server is a known vector store; CLIENT spans with ``rpc.system.name``
     (or ``rpc.system``) -> "http" too (the contract has no RPC kind). Named by
     ``server.address`` (``net.peer.name``, else the URL's host), with ``:port`` when the port
     is not 80/443, so two local stand-ins on 127.0.0.1 stay apart.
  7. anything else -> None (ignored).

Double counting: a GenAI span's direct HTTP children (to its server, or any server when the
GenAI span names none) are the transport of that one call, not an "http" dependency; so are
nested GenAI spans of the same dependency (a framework span around the SDK span). They are
folded into the outermost call: their failures give the call's error class when the call
itself carries none, their resends/repeats are its retries, and their TTFT, tokens and model
fill what the outer span lacks. A non-GenAI span with a ``server.address`` folds in its HTTP
children to that same address the same way.

Per dependency and window (DEP):
  count        calls (folded transport attempts are not calls);
  errors       calls that failed: ``error.type``, else an HTTP status >= 400 (>= 500 or 429 on
               SERVER spans, matching the SLO's error definition), else a non-OK RPC status,
               else status ERROR classed by a failed transport attempt, the exception event's
               ``exception.type`` or the head of the status message; a policy span that
               blocked (``gen_ai.guardrail.result.value`` GUARDRAIL_INTERVENED/blocked/denied/...,
               or ``*.blocked``/``*.flagged`` true) is an error of type "blocked";
  error_types  calls per error class, *including* calls whose failures the SDK retried away
               (so a provider's 429s show even when every call finally succeeded; for such
               calls error_types counts more than errors);
  p50/p90/p99  exact nearest-rank quantiles of span durations (the ceil(q*n)-th smallest);
  ttft_*       ``gen_ai.response.time_to_first_chunk`` (seconds, the GenAI conventions'
               attribute; the spans page has no first-chunk event, its "Streaming chunks"
               section is a TODO), else ``gen_ai.response.time_to_first_token``, else the time
               of a ``gen_ai.first_token``/``first_token``/``gen_ai.first_chunk``/
               ``first_chunk`` event after the span's start;
  retries      per group of attempts (siblings of one dependency under one parent, or the
               transport attempts folded into one call): max(attempts - 1 when one of them
               failed, the largest ``http.request.resend_count``). Each retry counts once
               whether it shows as a span, a resend count or both (the resend count is the
               attempt's ordinal, so summing it would count the third attempt as three);
               two successful calls to one dependency in one request are two calls (a query
               rewrite then the answer), not a retry;
  tokens       ``gen_ai.usage.input_tokens``/``output_tokens`` (else the deprecated
               prompt_tokens/completion_tokens) summed; models: response model, else request
               model, most frequent first.

Change and exemplars: a dependency's change adds up, on one scale, log2 of its p90 ratio, log2 of
its TTFT p90 ratio, 10x the rise in the share of calls meeting errors and 5x the rise in retries
per call; dependencies are listed by the size of the change, and each one that got worse by half a
unit or more earns one incident exemplar, picked by what moved most (a call that met its most
common error class, its slowest call, its latest first chunk, or its most retried call), the
service's own server spans last, five at most.

Cost: one pass to classify, one to fold transport spans, one to accumulate, no dict per span
(about 0.65 s of CPU for 200k spans of RAG traces).
"""
from __future__ import annotations

import heapq
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from responder.evidence.traces.model import Span
from responder.model.evidence import TraceEvidence

# --- classification vocabulary -----------------------------------------------------------------
_GUARD_OPS = frozenset({"apply_guardrail"})
_RETRIEVAL_OPS = frozenset({"embeddings", "retrieval", "search_memory", "create_memory", "update_memory",
                            "upsert_memory", "delete_memory", "create_memory_store", "delete_memory_store"})
_AGENT_OPS = frozenset({"invoke_agent", "create_agent", "invoke_workflow", "execute_tool", "plan"})
# Vector stores as OpenLLMetry and the vendors' own instrumentations name them in db.system or
# in a server address; the database conventions list none of them.
_VECTOR_STORES = ("chroma", "pinecone", "qdrant", "weaviate", "milvus", "lancedb", "pgvector", "faiss",
                  "marqo", "vespa")
_POLICY_RE = re.compile(r"guard|moderat|content.?safety|polic(?:y|ies)", re.I)
_RETRIEVAL_RE = re.compile(r"retriev|vector|embedd|rerank|similarity.?search|" + "|".join(_VECTOR_STORES), re.I)
_VECTOR_STORE_RE = re.compile("|".join(_VECTOR_STORES), re.I)
_POLICY_KEY_PREFIXES = ("guardrail.", "moderation.", "policy.")
_DEFAULT_PORTS = frozenset({80, 443, "80", "443"})
_OWNER_KINDS = frozenset({"llm", "retrieval", "policy"})  # kinds whose spans may own transport spans
# Span names and (address, port) pairs repeat endlessly ("POST", "SELECT documents", one host per
# dependency), so the regex work of the name rules and the naming of HTTP servers is remembered;
# the bound keeps a flood of unique names (ids in span names) from growing it without end.
# Plain dicts: a racing clear() between threads only costs a recomputation.
_MEMO_MAX = 4096
_name_rule_memo: dict[str, str | None] = {}
_http_memo: dict[tuple[Any, Any], tuple[str, str, bool]] = {}

# --- errors ------------------------------------------------------------------------------------
_GRPC_CODES = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
               6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
               10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
               15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
# What a provider says when it sheds load: 429 (rate limit, quota), 529 (Anthropic overloaded),
# 503 (unavailable, how several gateways shed load), and the SDKs' names for them.
_THROTTLE_RE = re.compile(r"^(?:429|529|503)$|rate.?limit|too.?many.?requests|overload|resource.?exhausted|"
                          r"throttl|quota", re.I)
# A call that gave up waiting: the same symptom as a slow call, whatever made it slow.
# 57014 is PostgreSQL's query_canceled, what statement_timeout raises.
_TIMEOUT_RE = re.compile(r"^(?:408|504|57014)$|time.?out|timed.?out|deadline|query.?cancel", re.I)
_CODE_WORDS = {"400": "bad_request", "401": "unauthorized", "403": "forbidden", "404": "not_found",
               "408": "timeout", "429": "rate_limit", "500": "server_error", "502": "bad_gateway",
               "503": "unavailable", "504": "gateway_timeout", "529": "overloaded"}
_CODE_IN_TEXT_RE = re.compile(r"\b([45]\d\d)\b")
_BLOCK_VALUES = frozenset({"block", "blocked", "deny", "denied", "reject", "rejected", "refuse", "refused",
                           "flagged", "intervened", "guardrail_intervened", "tripwire_triggered"})
_BLOCK_VALUE_SUFFIXES = (".result.value", ".decision", ".action", ".verdict", ".outcome", ".result")
_BLOCK_FLAG_SUFFIXES = (".blocked", ".flagged", ".tripwire_triggered")

# --- time to first token -----------------------------------------------------------------------
_TTFT_ATTRS = ("gen_ai.response.time_to_first_chunk", "gen_ai.response.time_to_first_token")  # seconds
_FIRST_TOKEN_EVENTS = frozenset({"gen_ai.first_token", "first_token", "gen_ai.first_chunk", "first_chunk"})

# --- change and exemplars ----------------------------------------------------------------------
# Components of "how much a dependency changed", on one scale: a doubling of p90 (or of TTFT p90)
# is 1.0; so is 10 percentage points more calls meeting errors, or 0.2 more retries per call.
ERROR_RATE_WEIGHT = 10.0
RETRY_RATE_WEIGHT = 5.0
LATENCY_SMOOTHING_MS = 1.0  # keeps 0.1 ms -> 0.3 ms (noise on an in-process span) from looking like 3x
NEW_DEPENDENCY_CHANGE = 1.0  # seen only in the incident: as much as a doubling of its latency
# A dependency "got worse" (earns an exemplar) from half a unit: p90 up ~41%, or 5 points more errors.
MIN_WORSENING = 0.5
MAX_EXEMPLARS = 5
DEP_EXEMPLARS = 3
MAX_MODELS = 10
MAX_PEERS = 5  # per dependency and window: the addresses its calls went to, most used first


def classify(span: Span) -> tuple[str, str] | None:
    """The dependency ``span`` is a call to, as (kind, name), or None when it is none (see the
    module docstring for the rules). Span-local: folding an HTTP span into its GenAI parent is
    decided per trace by ``trace_evidence``."""
    c = _classify(span)
    return None if c is None else (c[0], c[1])


def _classify(s: Span) -> tuple[str, str, bool] | None:
    """(kind, name, is_genai); is_genai marks SDK-level GenAI spans, which own their transport."""
    k = s.kind
    if k == "server":
        return ("server", s.service, False)
    if k == "producer" or k == "consumer":
        return None
    a = s.attributes
    op = a.get("gen_ai.operation.name")
    provider = a.get("gen_ai.provider.name") or a.get("gen_ai.system")
    if op is not None or provider is not None:
        return _classify_genai(k, a, op, provider)
    db = a.get("db.system.name") or a.get("db.system")
    if db is not None:
        return ("retrieval", str(db), False)
    name = s.name
    rule = _name_rule_memo.get(name, "")
    if rule == "":
        rule = "policy" if _POLICY_RE.search(name) else "retrieval" if _RETRIEVAL_RE.search(name) else None
        if len(_name_rule_memo) >= _MEMO_MAX:
            _name_rule_memo.clear()
        _name_rule_memo[name] = rule
    if rule == "policy":
        return ("policy", str(a.get("gen_ai.guardrail.component.name") or _server_name(a) or name), False)
    if rule == "retrieval":
        return ("retrieval", _server_name(a) or name, False)
    if k == "client":
        if "http.request.method" in a or "http.method" in a or "url.full" in a:
            addr = a.get("server.address")
            if addr is None:  # pre-stable names or only a URL: not worth remembering
                return _http_dependency(_server_name(a) or "unknown")
            key = (addr, a.get("server.port"))
            c = _http_memo.get(key)
            if c is None:
                if len(_http_memo) >= _MEMO_MAX:
                    _http_memo.clear()
                c = _http_memo[key] = _http_dependency(_server_name(a) or "unknown")
            return c
        rpc = a.get("rpc.system.name") or a.get("rpc.system")
        if rpc is not None:
            return ("http", _server_name(a) or str(a.get("rpc.service") or rpc), False)
        return None
    # Only in-process spans get the key scan: it is the costly rule, and client spans are
    # covered by the protocol rules above.
    for attr in a:
        if attr.startswith(_POLICY_KEY_PREFIXES):
            return ("policy", name, False)
    return None


def _http_dependency(server: str) -> tuple[str, str, bool]:
    return ("retrieval" if _VECTOR_STORE_RE.search(server) else "http", server, False)


def _classify_genai(kind: str, a: dict, op: Any, provider: Any) -> tuple[str, str, bool] | None:
    op_s = str(op).lower() if op is not None else ""
    if op_s in _GUARD_OPS or "guard" in op_s or "moderat" in op_s:
        name = a.get("gen_ai.guardrail.component.name") or provider or _server_name(a) or "unknown"
        return ("policy", str(name), True)
    if op_s in _RETRIEVAL_OPS:
        name = provider or a.get("db.system.name") or a.get("db.system") or _server_name(a) or "unknown"
        return ("retrieval", str(name), True)
    if op_s in _AGENT_OPS and not (op_s == "invoke_agent" and kind == "client"):
        return None
    return ("llm", str(provider or _server_name(a) or "unknown"), True)


def _server_name(a: dict) -> str | None:
    addr = a.get("server.address") or a.get("net.peer.name")
    port = a.get("server.port") or a.get("net.peer.port")
    if addr is None:
        url = a.get("url.full") or a.get("http.url")
        if not url:
            return None
        try:
            parts = urlsplit(str(url))
            addr, port = parts.hostname, port or parts.port
        except ValueError:
            return None
        if not addr:
            return None
    if port is not None and port not in _DEFAULT_PORTS:
        return f"{addr}:{port}"
    return str(addr)


def _peer(a: dict) -> str | None:
    """Where the call went, as the kernel names a peer: the connected address when the span says
    it (``network.peer.address``), else the server's name; with the port when known."""
    addr = a.get("network.peer.address") or a.get("server.address") or a.get("net.peer.name")
    if addr is None:
        return None
    port = a.get("network.peer.port") or a.get("server.port") or a.get("net.peer.port")
    return f"{addr}:{port}" if port is not None else str(addr)


def _server_address(a: dict) -> Any:
    return a.get("server.address") or a.get("net.peer.name")


# --- errors ------------------------------------------------------------------------------------
def _error_class(s: Span, kind: str, transport_class: str | None = None) -> str | None:
    """The span's error class, or None when it did not fail (rules in the module docstring)."""
    a = s.attributes
    et = a.get("error.type")
    if et is not None:
        return str(et)
    code = a.get("http.response.status_code")
    if code is None:
        code = a.get("http.status_code")
    if code is not None:
        try:
            c = int(code)
        except (TypeError, ValueError):
            c = 0
        if c >= 500 or c == 429 or (c >= 400 and kind != "server"):
            return str(c)
    if kind == "http" or kind == "server":  # RPC spans are classified as one of these
        rpc = a.get("rpc.response.status_code")
        if rpc is not None and str(rpc) not in ("OK", "0"):
            return str(rpc)
        grpc = a.get("rpc.grpc.status_code")
        if grpc is not None and grpc != 0:
            return _GRPC_CODES.get(grpc, str(grpc))
    elif kind == "policy" and _blocked(s):
        return "blocked"
    if s.status != "error":
        return None
    if transport_class:
        return transport_class
    for e in reversed(s.events):
        if e.name == "exception" and e.attributes.get("exception.type"):
            return str(e.attributes["exception.type"])
    return _message_class(s.status_message)


def _message_class(message: str) -> str:
    """A low-cardinality class from a free-text status message: an exception-like head
    ("RateLimitError: ..."), else an HTTP status in the text, else its first 40 characters."""
    m = message.strip()
    if not m:
        return "error"
    head = m.split(":", 1)[0].strip()
    if head and len(head) <= 60 and " " not in head and head != m:
        return head
    found = _CODE_IN_TEXT_RE.search(m)
    if found:
        return found.group(1)
    return m[:40]


def _blocked(s: Span) -> bool:
    """Whether a policy span reports that it blocked the content (guardrail conventions' result
    attributes and event, or a ``*.decision``/``*.blocked``-style attribute of a home-grown one)."""
    if _attrs_block(s.attributes):
        return True
    return any(e.name == "gen_ai.guardrail.result" and _attrs_block(e.attributes) for e in s.events)


def _attrs_block(a: dict) -> bool:
    for key, v in a.items():
        if key.endswith(_BLOCK_FLAG_SUFFIXES):
            if v is True or str(v).lower() == "true":
                return True
        elif key.endswith(".allowed"):
            if v is False or str(v).lower() == "false":
                return True
        elif key.endswith(_BLOCK_VALUE_SUFFIXES):
            val = str(v).lower()
            if val in _BLOCK_VALUES:
                return True
            # gen_ai.guardrail.result.type names the field; "true" blocks only for a tripwire/flag
            if val == "true" and str(a.get(key[: -len("value")] + "type", "")).lower() in _BLOCK_VALUES:
                return True
    return False


def is_throttle(error_type: str) -> bool:
    """Whether an error class means the provider shed load (429/rate limit, 529/503/overloaded)."""
    return bool(_THROTTLE_RE.search(error_type))


def is_timeout(error_type: str) -> bool:
    """Whether an error class means the caller stopped waiting (timeouts, deadlines, 504/408)."""
    return bool(_TIMEOUT_RE.search(error_type))


# --- per-window accumulation -------------------------------------------------------------------
def _ttft_ms(s: Span) -> float | None:
    a = s.attributes
    for key in _TTFT_ATTRS:
        v = a.get(key)
        if v is not None:
            try:
                return float(v) * 1000.0
            except (TypeError, ValueError):
                pass
    for e in s.events:
        if e.name in _FIRST_TOKEN_EVENTS and e.time_ns >= s.start_ns:
            return (e.time_ns - s.start_ns) / 1e6
    return None


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


class _Transport:
    """The spans folded into one call: HTTP attempts and nested same-dependency GenAI spans."""
    __slots__ = ("http", "http_failed", "inner", "inner_failed", "resend", "fail_class", "fail_start",
                 "ttft", "tokens_in", "tokens_out", "model")

    def __init__(self) -> None:
        self.http = self.http_failed = self.inner = self.inner_failed = self.resend = 0
        self.fail_class: str | None = None
        self.fail_start = -1
        self.ttft: float | None = None
        self.tokens_in = self.tokens_out = 0
        self.model: str | None = None

    def retries(self) -> int:
        return max(self.http - 1 if self.http_failed else 0, self.inner - 1 if self.inner_failed else 0,
                   self.resend)


class _Dep:
    """Everything one window says about one dependency, before it becomes a DEP dict."""
    __slots__ = ("kind", "name", "durs", "tids", "ttfts", "ttft_tids", "errors", "error_types", "failed",
                 "retried_away", "tokens_in", "tokens_out", "models", "groups", "group_failed",
                 "group_resend", "transport_retries", "total_retries", "top_retry", "sorted_durs", "sorted_ttfts",
                 "peers")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.durs: list[float] = []
        self.tids: list[str] = []
        self.ttfts: list[float] = []
        self.ttft_tids: list[str] = []
        self.errors = 0
        self.error_types: dict[str, int] = {}
        self.failed: list[tuple[float, str, str]] = []  # (ms, trace id, class) of failed calls
        self.retried_away: list[tuple[float, str, str]] = []  # calls that met failures and succeeded
        self.tokens_in = self.tokens_out = 0
        self.models: dict[str, int] = {}
        self.groups: dict[tuple[str, str | None], int] = {}  # (trace id, parent span id) -> calls
        self.group_failed: set[tuple[str, str | None]] = set()
        self.group_resend: dict[tuple[str, str | None], int] = {}
        self.transport_retries = 0
        self.total_retries = 0
        self.top_retry: tuple[int, str] = (0, "")
        self.sorted_durs: list[float] = []
        self.sorted_ttfts: list[float] = []
        self.peers: dict[str, int] = {}  # "address:port" the calls went to -> calls

    @property
    def count(self) -> int:
        return len(self.durs)

    def finish(self) -> None:
        self.sorted_durs = sorted(self.durs)
        self.sorted_ttfts = sorted(self.ttfts)
        n = self.transport_retries
        for key in self.group_failed | self.group_resend.keys():
            r = max(self.groups[key] - 1 if key in self.group_failed else 0, self.group_resend.get(key, 0))
            n += r
            if r > self.top_retry[0]:
                self.top_retry = (r, key[0])
        self.total_retries = n

    def p(self, q: float) -> float | None:
        return _quantile(self.sorted_durs, q)

    def ttft_p(self, q: float) -> float | None:
        return _quantile(self.sorted_ttfts, q)

    def problem_rate(self) -> float:
        """Share of calls that met an error class, retried away or not."""
        return min(1.0, sum(self.error_types.values()) / self.count) if self.count else 0.0

    def exemplar_ids(self) -> list[str]:
        ids: list[str] = []
        for pool in (self.failed, self.retried_away):
            for _, tid, _ in sorted(pool, reverse=True):
                if tid not in ids:
                    ids.append(tid)
                    if len(ids) == DEP_EXEMPLARS:
                        return ids
        for i in heapq.nlargest(DEP_EXEMPLARS * 4, range(len(self.durs)), key=self.durs.__getitem__):
            if self.tids[i] not in ids:
                ids.append(self.tids[i])
                if len(ids) == DEP_EXEMPLARS:
                    break
        return ids

    def to_dict(self) -> dict[str, Any]:
        models = sorted(self.models, key=lambda m: -self.models[m])[:MAX_MODELS]
        return {"count": self.count, "errors": self.errors,
                "error_types": dict(sorted(self.error_types.items(), key=lambda kv: (-kv[1], kv[0]))),
                "p50_ms": _r(self.p(0.5)), "p90_ms": _r(self.p(0.9)), "p99_ms": _r(self.p(0.99)),
                "ttft_p50_ms": _r(self.ttft_p(0.5)), "ttft_p90_ms": _r(self.ttft_p(0.9)),
                "retries": self.total_retries, "input_tokens": self.tokens_in, "output_tokens": self.tokens_out,
                "models": models, "exemplar_trace_ids": self.exemplar_ids(),
                "peers": dict(sorted(self.peers.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PEERS])}


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    n = len(sorted_values)
    if not n:
        return None
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _analyse(spans: Iterable[Span], service: str | None) -> tuple[dict[tuple[str, str], _Dep], int, float | None,
                                                                   float | None]:
    """One window: dependencies by (kind, name), spans considered, and their extent (Unix s)."""
    # Parallel lists rather than a record per span: this loop sees every span of both windows.
    kept: list[Span] = []
    cls_of: list[tuple[str, str, bool]] = []
    n_spans = 0
    first, last = None, None
    for s in spans:
        if service and s.service != service:
            continue
        n_spans += 1
        if first is None or s.start_ns < first:
            first = s.start_ns
        if last is None or s.end_ns > last:
            last = s.end_ns
        c = _classify(s)
        if c is not None:
            kept.append(s)
            cls_of.append(c)

    owner_of, http_children = _fold_transport(kept, cls_of)
    transports: dict[int, _Transport] = {}
    for i, j in owner_of.items():
        hops = 0
        while j in owner_of and hops < 64:  # fold into the outermost call (bounded: ids may repeat)
            j, hops = owner_of[j], hops + 1
        t = transports.get(j)
        if t is None:
            t = transports[j] = _Transport()
        _add_attempt(t, kept[i], cls_of[i][0], i in http_children)

    deps: dict[tuple[str, str], _Dep] = {}
    for i, s in enumerate(kept):
        if owner_of and i in owner_of:
            continue
        k, n, genai = cls_of[i]
        d = deps.get((k, n))
        if d is None:
            d = deps[(k, n)] = _Dep(k, n)
        ms = (s.end_ns - s.start_ns) / 1e6 if s.end_ns > s.start_ns else 0.0  # clock skew, unfinished spans
        tid = s.trace_id
        d.durs.append(ms)
        d.tids.append(tid)
        peer = _peer(s.attributes)
        if peer is not None:
            d.peers[peer] = d.peers.get(peer, 0) + 1
        t = transports.get(i) if transports else None
        cls = _error_class(s, k, t.fail_class if t is not None else None)
        if cls is not None:
            d.errors += 1
            d.error_types[cls] = d.error_types.get(cls, 0) + 1
            d.failed.append((ms, tid, cls))
        elif t is not None and t.fail_class is not None:
            d.error_types[t.fail_class] = d.error_types.get(t.fail_class, 0) + 1
            d.retried_away.append((ms, tid, t.fail_class))
        if t is not None:
            r = t.retries()
            d.transport_retries += r
            if r > d.top_retry[0]:
                d.top_retry = (r, tid)
        if k == "server":
            continue
        key = (tid, s.parent_span_id)
        groups = d.groups
        groups[key] = groups.get(key, 0) + 1
        if cls is not None:
            d.group_failed.add(key)
        a = s.attributes
        if k == "http":
            resend = a.get("http.request.resend_count")
            if resend:
                d.group_resend[key] = max(d.group_resend.get(key, 0), _int(resend))
        if genai:
            _add_genai_details(d, s, t)
    for d in deps.values():
        d.finish()
    return deps, n_spans, _seconds(first), _seconds(last)


def _fold_transport(kept: list[Span], cls_of: list[tuple[str, str, bool]]) -> tuple[dict[int, int], set[int]]:
    """Which classified spans fold into their parent's call (index -> parent index), and which of
    those are HTTP transport attempts (the rest are nested same-dependency GenAI spans)."""
    owners = {(s.trace_id, s.span_id): i for i, s in enumerate(kept) if cls_of[i][0] in _OWNER_KINDS}
    owner_of: dict[int, int] = {}
    http_children: set[int] = set()
    if not owners:
        return owner_of, http_children
    for i, s in enumerate(kept):
        p = s.parent_span_id
        if p is None:
            continue
        j = owners.get((s.trace_id, p))
        if j is None:
            continue
        k, n, _ = cls_of[i]
        pk, pn, pg = cls_of[j]
        a = s.attributes
        # any HTTP client child, even one a name rule calls retrieval ("POST /v1/embeddings")
        if s.kind == "client" and ("http.request.method" in a or "http.method" in a or "url.full" in a):
            paddr = _server_address(kept[j].attributes)
            if (paddr is None and pg) or (paddr is not None and paddr == _server_address(a)):
                owner_of[i] = j
                http_children.add(i)
        elif pg and k == pk and n == pn:
            owner_of[i] = j
    return owner_of, http_children


def _add_attempt(t: _Transport, s: Span, kind: str, is_http: bool) -> None:
    cls = _error_class(s, kind)
    a = s.attributes
    if is_http:
        t.http += 1
        t.resend = max(t.resend, _int(a.get("http.request.resend_count")))
        if cls is not None:
            t.http_failed += 1
    else:
        t.inner += 1
        if cls is not None:
            t.inner_failed += 1
        if t.ttft is None:
            t.ttft = _ttft_ms(s)
        t.tokens_in += _int(a.get("gen_ai.usage.input_tokens") or a.get("gen_ai.usage.prompt_tokens"))
        t.tokens_out += _int(a.get("gen_ai.usage.output_tokens") or a.get("gen_ai.usage.completion_tokens"))
        t.model = t.model or a.get("gen_ai.response.model") or a.get("gen_ai.request.model")
    if cls is not None and s.start_ns >= t.fail_start:  # the last failure says most
        t.fail_class, t.fail_start = cls, s.start_ns


def _add_genai_details(d: _Dep, s: Span, t: _Transport | None) -> None:
    """TTFT, tokens and model of a GenAI call, from the call's span or else its folded spans."""
    a = s.attributes
    ttft = _ttft_ms(s)
    if ttft is None and t is not None:
        ttft = t.ttft
    if ttft is not None:
        d.ttfts.append(ttft)
        d.ttft_tids.append(s.trace_id)
    tin = a.get("gen_ai.usage.input_tokens") or a.get("gen_ai.usage.prompt_tokens")
    tout = a.get("gen_ai.usage.output_tokens") or a.get("gen_ai.usage.completion_tokens")
    if tin is None and tout is None and t is not None:
        d.tokens_in += t.tokens_in
        d.tokens_out += t.tokens_out
    else:
        d.tokens_in += _int(tin)
        d.tokens_out += _int(tout)
    model = a.get("gen_ai.response.model") or a.get("gen_ai.request.model") or (t.model if t else None)
    if model:
        d.models[str(model)] = d.models.get(str(model), 0) + 1


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 3)


# --- change between windows --------------------------------------------------------------------
class _Change:
    """How one dependency moved from baseline to incident, component by component (units above)."""
    __slots__ = ("components", "magnitude", "worsening", "reason")

    def __init__(self, base: _Dep | None, inc: _Dep | None) -> None:
        self.components: dict[str, float] = {}
        if base is None or inc is None or not base.count or not inc.count:
            new = inc is not None and inc.count > 0
            self.components["new" if new else "gone"] = NEW_DEPENDENCY_CHANGE
            if inc is not None and new:
                self.components["errors"] = ERROR_RATE_WEIGHT * inc.problem_rate()
            self.magnitude = sum(self.components.values())
            self.worsening = self.magnitude if new else 0.0
            self.reason = max(self.components, key=self.components.__getitem__) if new else "gone"
            return
        c = self.components
        bp, ip = base.p(0.9), inc.p(0.9)
        assert bp is not None and ip is not None  # both windows have calls
        c["latency"] = math.log2((ip + LATENCY_SMOOTHING_MS) / (bp + LATENCY_SMOOTHING_MS))
        bt, it = base.ttft_p(0.9), inc.ttft_p(0.9)
        if bt is not None and it is not None:
            c["ttft"] = math.log2((it + LATENCY_SMOOTHING_MS) / (bt + LATENCY_SMOOTHING_MS))
        c["errors"] = ERROR_RATE_WEIGHT * (inc.problem_rate() - base.problem_rate())
        c["retries"] = RETRY_RATE_WEIGHT * (inc.total_retries / inc.count - base.total_retries / base.count)
        self.magnitude = sum(abs(v) for v in c.values())
        self.worsening = sum(v for v in c.values() if v > 0)
        self.reason = max(c, key=c.__getitem__)


def _error_clause(base: _Dep | None, inc: _Dep) -> tuple[str, str, bool]:
    """("429 rate_limit on 42% of calls[, retried away] (baseline 0%)", the class, retried away)
    for the error class most incident calls met."""
    top = max(inc.error_types, key=inc.error_types.__getitem__)
    away = not any(x[2] == top for x in inc.failed)
    word = _CODE_WORDS.get(top)
    base_share = base.problem_rate() if base is not None and base.count else 0.0
    return (f"{top}{' ' + word if word else ''} on {inc.problem_rate():.0%} of calls"
            f"{', retried away' if away else ''} (baseline {base_share:.0%})", top, away)


def _why(kind: str, name: str, change: _Change, base: _Dep | None, inc: _Dep) -> list[tuple[str, str]]:
    """Candidate (trace id, why) pairs for this dependency's exemplar, best first. The why names the
    component that moved most, plus the error share when that moved too (slower *and* blocking)."""
    label = f"{kind} {name}"
    reason = change.reason
    errors_moved = bool(inc.error_types) and change.components.get("errors", 0.0) >= MIN_WORSENING
    if reason == "new" and errors_moved:
        reason = "errors"
    if reason == "errors" and inc.error_types:
        clause, top, away = _error_clause(base, inc)
        # the slowest call that met the most common class: the clearest case of it
        pool = [x for x in (inc.retried_away if away else inc.failed) if x[2] == top]
        return [(tid, f"{label}: {clause}") for _, tid, _ in sorted(pool, reverse=True)[:DEP_EXEMPLARS]]
    also = f"; {_error_clause(base, inc)[0]}" if errors_moved else ""
    if reason == "ttft" and inc.ttfts and base is not None:
        order = heapq.nlargest(DEP_EXEMPLARS, range(len(inc.ttfts)), key=inc.ttfts.__getitem__)
        return [(inc.ttft_tids[i], f"{label}: first chunk after {inc.ttfts[i]:.0f} ms vs p90 "
                 f"{base.ttft_p(0.9):.0f} ms baseline{also}") for i in order]
    if reason == "retries" and inc.top_retry[0] > 0:
        per_call = base.total_retries / base.count if base is not None and base.count else 0.0
        return [(inc.top_retry[1], f"{label}: {inc.top_retry[0]} retries in one call vs {per_call:.2f} per call "
                 f"baseline{also}")]
    order = heapq.nlargest(DEP_EXEMPLARS, range(len(inc.durs)), key=inc.durs.__getitem__)
    if base is None or not base.count:
        return [(inc.tids[i], f"{label}: new in the incident, {inc.durs[i]:.0f} ms") for i in order]
    return [(inc.tids[i], f"{label}: {inc.durs[i]:.0f} ms vs p90 {base.p(0.9):.0f} ms baseline{also}")
            for i in order]


def trace_evidence(baseline: list[Span], incident: list[Span], service: str) -> dict[str, Any]:
    """The TRACES evidence for ``service`` (spans of other services are ignored; an empty service
    takes every span): dependencies most changed first, and up to five incident exemplars, one per
    dependency that got worse, causes before the service's own server spans."""
    base, b_spans, b_start, b_end = _analyse(baseline, service)
    inc, i_spans, i_start, i_end = _analyse(incident, service)
    rows = []
    for key in base.keys() | inc.keys():
        b, i = base.get(key), inc.get(key)
        rows.append((_Change(b, i), key, b, i))
    rows.sort(key=lambda r: (-r[0].magnitude, r[1]))
    dependencies = [{"kind": key[0], "name": key[1], "baseline": b.to_dict() if b else None,
                     "incident": i.to_dict() if i else None} for _, key, b, i in rows]

    exemplars: list[dict[str, Any]] = []
    used: set[str] = set()
    worse = [(c, key, b, i) for c, key, b, i in rows if i is not None and c.worsening >= MIN_WORSENING]
    worse.sort(key=lambda r: (r[1][0] == "server", -r[0].worsening, r[1]))
    for change, (kind, name), b, i in worse:
        for tid, why in _why(kind, name, change, b, i):
            if tid not in used:
                used.add(tid)
                exemplars.append({"trace_id": tid, "url": None, "why": why})
                break
        if len(exemplars) == MAX_EXEMPLARS:
            break
    return {"service": service,
            "baseline": {"start": b_start, "end": b_end, "spans": b_spans},
            "incident": {"start": i_start, "end": i_end, "spans": i_spans},
            "dependencies": dependencies, "exemplars": exemplars,
            "timeline": server_timeline([*baseline, *incident], service)}


# A timeline of the service's own requests has at most this many buckets over both windows.
MAX_TIMELINE_BUCKETS = 60


def server_timeline(spans: list[Span], service: str) -> list[dict[str, Any]]:
    """The service's own requests (its SERVER spans) over time, for the incident's chart: per
    bucket (at most MAX_TIMELINE_BUCKETS, by start time) the requests, the failed ones (the SLO's
    error rules) and the p90 duration. Empty buckets are left out."""
    served = [s for s in spans if s.kind == "server" and (not service or s.service == service)]
    if not served:
        return []
    first = min(s.start_ns for s in served)
    width = max((max(s.start_ns for s in served) - first) / MAX_TIMELINE_BUCKETS, 1e9)  # at least 1 s
    buckets: dict[int, list[Span]] = {}
    for s in served:
        buckets.setdefault(min(int((s.start_ns - first) // width), MAX_TIMELINE_BUCKETS - 1), []).append(s)
    out = []
    for n in sorted(buckets):
        durations = sorted(max(s.end_ns - s.start_ns, 0) / 1e6 for s in buckets[n])
        start = (first + n * width) / 1e9
        out.append({"start": round(start, 3), "end": round(start + width / 1e9, 3), "requests": len(durations),
                    "errors": sum(1 for s in buckets[n] if _error_class(s, "server") is not None),
                    "p90_ms": round(_quantile(durations, 0.9) or 0.0, 1)})
    return out


@dataclass(frozen=True)
class DependencySignals:
    """Per dependency, the numbers attribution compares (rates and p90s are None for a window in
    which the dependency made no call)."""

    kind: str
    name: str
    count_baseline: int
    count_incident: int
    error_rate_baseline: float | None
    error_rate_incident: float | None
    throttle_rate_incident: float | None
    timeout_share_of_errors: float | None  # of the incident's failing calls, the share that timed out
    p90_ms_baseline: float | None
    p90_ms_incident: float | None
    ttft_p90_ms_baseline: float | None
    ttft_p90_ms_incident: float | None
    retries_incident: int
    exemplar_trace_ids: list[str]
    # calls per second in each window (None when the window's length is unknown)
    rate_baseline: float | None = None
    rate_incident: float | None = None
    peers: frozenset[str] = frozenset()  # where its calls went, in either window ("addr:port")


def trace_signals(evidence: TraceEvidence | dict[str, Any]) -> list[DependencySignals]:
    """The numbers attribution compares, per dependency, in the evidence's order."""
    ev = evidence if isinstance(evidence, TraceEvidence) else TraceEvidence.read(evidence)
    out = []
    seconds_b = ev.baseline.seconds if ev and ev.baseline else None
    seconds_i = ev.incident.seconds if ev and ev.incident else None
    for dep in ev.dependencies if ev else []:
        b, i = dep.baseline, dep.incident
        bc, ic = int(b.count or 0) if b else 0, int(i.count or 0) if i else 0
        types = i.error_types if i else {}
        errors = (i.errors or 0) if i else 0
        throttled = sum(n for t, n in types.items() if is_throttle(t))
        timeouts = sum(n for t, n in types.items() if is_timeout(t))
        out.append(DependencySignals(
            kind=dep.kind, name=dep.name, count_baseline=bc, count_incident=ic,
            error_rate_baseline=(b.errors or 0) / bc if b and bc else None,
            error_rate_incident=errors / ic if ic else None,
            throttle_rate_incident=min(1.0, throttled / ic) if ic else None,
            timeout_share_of_errors=timeouts / errors if errors else None,
            p90_ms_baseline=b.p90_ms if b else None, p90_ms_incident=i.p90_ms if i else None,
            ttft_p90_ms_baseline=b.ttft_p90_ms if b else None, ttft_p90_ms_incident=i.ttft_p90_ms if i else None,
            retries_incident=int(i.retries or 0) if i else 0,
            exemplar_trace_ids=list(i.exemplar_trace_ids) if i else [],
            rate_baseline=bc / seconds_b if seconds_b else None, rate_incident=ic / seconds_i if seconds_i else None,
            peers=frozenset((b.peers if b else {}).keys() | (i.peers if i else {}).keys())))
    return out
