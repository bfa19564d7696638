"""The built-in span store: recent spans in memory, bounded by count and by bytes.

What arrived first leaves first. Spans are indexed three ways, each cheap to keep up as the
oldest leave:

- arrival order: a deque (and a parallel deque of each span's accounted size);
- trace id -> that trace's spans, in arrival order (the oldest is at the front when it leaves);
- service -> a deque of buckets of up to ``BUCKET_SPANS`` consecutive arrivals, each with the
  earliest start and latest end it holds. A query skips buckets outside its window and filters
  inside the rest; eviction advances the oldest bucket's ``dead`` mark and drops the bucket when
  it is empty, so it is O(1).

Sizes come from :meth:`Span.approx_bytes` (every value a span holds, its share of the resource
and scope it came with included), computed outside the lock. One lock guards the rest:
the receiver adds from worker threads while queries run from others.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import cast

from responder.evidence.traces.model import Span

# Large enough that per-bucket overhead is noise, small enough that a narrow window skips most.
BUCKET_SPANS = 1024


class _Bucket:
    """Consecutive arrivals of one service. ``spans[:dead]`` have been evicted (set to None)."""

    __slots__ = ("spans", "dead", "min_start", "max_end")

    def __init__(self) -> None:
        self.spans: list[Span | None] = []
        self.dead = 0
        self.min_start = 1 << 64
        self.max_end = -1


class SpanStore:
    """Thread-safe, bounded by ``max_spans`` spans and ``max_bytes`` accounted bytes."""

    def __init__(self, max_spans: int, max_bytes: int) -> None:
        if max_spans < 1 or max_bytes < 1:
            raise ValueError("SpanStore: max_spans and max_bytes must be positive")
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._arrived: deque[Span] = deque()
        self._sizes: deque[int] = deque()
        self._by_trace: dict[str, list[Span]] = {}
        self._by_service: dict[str, deque[_Bucket]] = {}
        self._bytes = 0
        self._received_total = 0
        self._evicted_total = 0

    def __len__(self) -> int:
        return len(self._arrived)

    def add(self, spans: list[Span]) -> int:
        """Store ``spans`` (in the order given, as arrivals); return how many spans left the store
        to make room, counting any of this batch that did not fit at all."""
        if not spans:
            return 0
        # The resource and scope objects a batch's spans share, and how many share each.
        shared: dict[int, int] = {}
        for s in spans:
            for obj in (s.resource, s.scope):
                shared[id(obj)] = shared.get(id(obj), 0) + 1
        sizes = [s.approx_bytes(shared) for s in spans]
        # A batch larger than the bounds keeps its newest part: drop from the front until it fits.
        first = max(0, len(spans) - self.max_spans)
        kept_bytes = sum(sizes[first:])
        while kept_bytes > self.max_bytes:
            kept_bytes -= sizes[first]
            first += 1
        with self._lock:
            self._received_total += len(spans)
            arrived_append = self._arrived.append
            sizes_append = self._sizes.append
            by_trace = self._by_trace
            by_service = self._by_service
            bucket_of: dict[str, _Bucket] = {}  # this batch's open bucket per service
            for i in range(first, len(spans)):
                span = spans[i]
                arrived_append(span)
                sizes_append(sizes[i])
                same_trace = by_trace.get(span.trace_id)
                if same_trace is None:
                    by_trace[span.trace_id] = [span]
                else:
                    same_trace.append(span)
                bucket = bucket_of.get(span.service)
                if bucket is None or len(bucket.spans) >= BUCKET_SPANS:
                    buckets = by_service.get(span.service)
                    if buckets is None:
                        buckets = by_service[span.service] = deque()
                    if not buckets or len(buckets[-1].spans) >= BUCKET_SPANS:
                        buckets.append(_Bucket())
                    bucket = bucket_of[span.service] = buckets[-1]
                bucket.spans.append(span)
                if span.start_ns < bucket.min_start:
                    bucket.min_start = span.start_ns
                end = span.end_ns if span.end_ns > span.start_ns else span.start_ns
                if end > bucket.max_end:
                    bucket.max_end = end
            self._bytes += kept_bytes
            evicted = first + self._evict()
            self._evicted_total += evicted
        return evicted

    def _evict(self) -> int:
        """Drop the oldest arrivals until both bounds hold (the lock is held)."""
        n = 0
        arrived, sizes, by_trace, by_service = self._arrived, self._sizes, self._by_trace, self._by_service
        while len(arrived) > self.max_spans or self._bytes > self.max_bytes:
            span = arrived.popleft()
            self._bytes -= sizes.popleft()
            n += 1
            same_trace = by_trace[span.trace_id]
            if len(same_trace) == 1:
                del by_trace[span.trace_id]
            elif same_trace[0] is span:  # always, unless a caller added one Span object twice
                del same_trace[0]
            else:
                same_trace.remove(span)
            buckets = by_service[span.service]
            bucket = buckets[0]
            bucket.spans[bucket.dead] = None  # release it now, not when the bucket goes
            bucket.dead += 1
            if bucket.dead == len(bucket.spans):
                buckets.popleft()
                if not buckets:
                    del by_service[span.service]
        return n

    def query(self, service: str | None, start_ns: int, end_ns: int, limit: int = 50_000) -> list[Span]:
        """Spans of ``service`` (every service when None) whose [start, end] overlaps
        [start_ns, end_ns]; at most ``limit``, the most recently arrived first (per service)."""
        out: list[Span] = []
        with self._lock:
            if service is None:
                services = list(self._by_service.values())
            else:
                services = [self._by_service[service]] if service in self._by_service else []
            for buckets in services:
                for bucket in reversed(buckets):
                    if bucket.min_start > end_ns or bucket.max_end < start_ns:
                        continue
                    # only spans[:dead] are None
                    live = cast(Iterator[Span], islice(reversed(bucket.spans), len(bucket.spans) - bucket.dead))
                    out += [s for s in live if s.start_ns <= end_ns and max(s.end_ns, s.start_ns) >= start_ns]
                    if len(out) >= limit:
                        return out[:limit]
        return out

    def trace(self, trace_id: str) -> list[Span]:
        """Every stored span of one trace, by start time."""
        with self._lock:
            spans = list(self._by_trace.get(trace_id, ()))
        spans.sort(key=lambda s: s.start_ns)
        return spans

    def services(self) -> list[str]:
        with self._lock:
            return sorted(self._by_service)

    def stats(self) -> dict:
        with self._lock:
            return {"spans": len(self._arrived), "bytes": self._bytes, "traces": len(self._by_trace),
                    "services": len(self._by_service), "evicted_total": self._evicted_total,
                    "received_total": self._received_total, "max_spans": self.max_spans,
                    "max_bytes": self.max_bytes}
