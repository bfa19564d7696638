"""The one span shape every trace source is decoded into (OTLP protobuf and JSON, Tempo, Jaeger).

Times are Unix nanoseconds; ids are lowercase hex (32 digits for a trace, 16 for a span), the
form OTLP/JSON, Tempo and Jaeger links use. Attribute values keep their OTLP scalar type; arrays
become lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

AttrValue = Any  # str | bool | int | float | list[...] | bytes-as-hex str

KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUSES = ("unset", "ok", "error")

# Per-span bookkeeping cost beyond its strings, for the store's byte bound (object headers,
# dict slots, index entries). Measured on CPython 3.11 with tracemalloc; see bench/spans.py.
SPAN_OVERHEAD_BYTES = 600


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, AttrValue] = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    service: str  # resource attribute service.name; "unknown_service" when absent
    name: str
    kind: str  # one of KINDS
    start_ns: int
    end_ns: int
    status: str = "unset"  # one of STATUSES
    status_message: str = ""
    attributes: dict[str, AttrValue] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    resource: dict[str, AttrValue] = field(default_factory=dict)
    scope: str = ""  # instrumentation scope name

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def is_error(self) -> bool:
        return self.status == "error" or "error.type" in self.attributes

    def approx_bytes(self, shared: dict[int, int] | None = None) -> int:
        """What holding this span costs, roughly: every string and value it holds (attributes
        of every kind, events, its resource and scope) plus fixed overhead.

        The resource dict and scope name are shared by the spans of one export; ``shared``
        (object id -> spans in this batch sharing it) spreads their size over those spans, so
        a batch is charged for each once, and a span alone for all of it."""
        n = SPAN_OVERHEAD_BYTES + len(self.name) + len(self.service) + len(self.status_message) + 64
        n += len(self.trace_id) + len(self.span_id) + len(self.parent_span_id or "")
        n += _value_bytes(self.attributes)
        for e in self.events:
            n += 120 + len(e.name) + _value_bytes(e.attributes)
        for obj, size in ((self.resource, None), (self.scope, len(self.scope))):
            if size is None:
                size = _value_bytes(obj)
            sharers = shared.get(id(obj), 1) if shared else 1
            n += -(-size // sharers)  # ceiling: the shares add up to at least the whole
        return n

    def to_dict(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "span_id": self.span_id, "parent_span_id": self.parent_span_id,
                "service": self.service, "name": self.name, "kind": self.kind, "start_ns": self.start_ns,
                "end_ns": self.end_ns, "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
                "status": self.status, "status_message": self.status_message, "attributes": self.attributes,
                "events": [{"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in self.events],
                "scope": self.scope}


def _value_bytes(value: Any) -> int:
    """The accounted size of an attribute value of any shape: strings by length, numbers and
    booleans at a flat 24, lists and dicts (OTLP arrays and kvlists, nested to any depth) by
    their members plus per-entry overhead. Iterative, so a deeply nested value cannot recurse."""
    n = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            n += 49 + len(v)
        elif isinstance(v, dict):
            n += 64 + 90 * len(v)
            for k, x in v.items():
                n += len(k)
                stack.append(x)
        elif isinstance(v, list):
            n += 60 + 8 * len(v)
            stack.extend(v)
        elif isinstance(v, (bytes, bytearray)):
            n += 33 + len(v)
        else:
            n += 24
    return n
