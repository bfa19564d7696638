"""The built-in span store: both bounds hold, the oldest arrivals leave first, every index
forgets what left, windows overlap correctly, and threads can add and query at once."""
from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest

from responder.evidence.traces.model import Span, SpanEvent
from responder.evidence.traces.store import BUCKET_SPANS, SpanStore

S = 1_000_000_000


def span(n: int, service: str = "rag", trace: int | None = None, start: int | None = None, dur: int = 10,
         attrs: int = 2) -> Span:
    start = n * S if start is None else start
    return Span(trace_id=f"{trace if trace is not None else n:032x}", span_id=f"{n + 1:016x}", parent_span_id=None,
                service=service, name=f"op-{n}", kind="client", start_ns=start, end_ns=start + dur,
                attributes={f"k{i}": f"value-{n}-{i}" for i in range(attrs)},
                events=[SpanEvent("e", start, {"x": 1})])


def ids(spans) -> list[str]:
    return [s.span_id for s in spans]


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        SpanStore(0, 100)
    with pytest.raises(ValueError):
        SpanStore(10, 0)


def test_count_bound_evicts_oldest_arrival_first():
    store = SpanStore(max_spans=5, max_bytes=1 << 30)
    evicted = [store.add([span(n)]) for n in range(8)]
    assert evicted == [0, 0, 0, 0, 0, 1, 1, 1]
    kept = store.query(None, 0, 100 * S)
    assert sorted(ids(kept)) == sorted(ids(span(n) for n in range(3, 8)))
    st = store.stats()
    assert (st["spans"], st["evicted_total"], st["received_total"], st["max_spans"]) == (5, 3, 8, 5)
    assert len(store) == 5


def test_arrival_order_not_start_time_decides_eviction():
    store = SpanStore(max_spans=2, max_bytes=1 << 30)
    store.add([span(9)])  # starts last, arrives first
    store.add([span(1)])
    store.add([span(5)])
    assert sorted(ids(store.query(None, 0, 100 * S))) == sorted(ids([span(1), span(5)]))


def test_byte_bound_evicts_until_it_holds():
    spans = [span(n) for n in range(10)]
    size = spans[0].approx_bytes()
    assert {s.approx_bytes() for s in spans} == {size}
    store = SpanStore(max_spans=1000, max_bytes=3 * size + size // 2)
    for s in spans:
        store.add([s])
        assert store.stats()["bytes"] <= store.max_bytes
    assert sorted(ids(store.query(None, 0, 100 * S))) == ids(spans[7:])
    assert store.stats()["bytes"] == 3 * size


def test_batch_larger_than_the_bounds_keeps_its_newest_part():
    store = SpanStore(max_spans=4, max_bytes=1 << 30)
    store.add([span(100)])
    evicted = store.add([span(n) for n in range(10)])
    assert evicted == 7  # six of the batch never fit, plus the one that was there
    assert ids(store.trace(f"{6:032x}") + store.trace(f"{9:032x}")) == ids([span(6), span(9)])
    assert sorted(ids(store.query(None, 0, 1000 * S))) == sorted(ids(span(n) for n in range(6, 10)))

    spans = [span(n) for n in range(10)]
    size = spans[0].approx_bytes()
    store = SpanStore(max_spans=100, max_bytes=2 * size)
    assert store.add(spans) == 8
    assert sorted(ids(store.query(None, 0, 1000 * S))) == ids(spans[8:])
    st = store.stats()
    assert (st["spans"], st["bytes"], st["received_total"], st["evicted_total"]) == (2, 2 * size, 10, 8)


def test_a_span_larger_than_the_byte_bound_is_not_kept():
    big = span(1, attrs=50)
    store = SpanStore(max_spans=10, max_bytes=big.approx_bytes() - 1)
    store.add([span(0)])
    assert store.add([big]) == 1
    assert ids(store.query(None, 0, 100 * S)) == ids([span(0)])


def test_indexes_forget_what_left():
    store = SpanStore(max_spans=3, max_bytes=1 << 30)
    store.add([span(0, service="a", trace=1), span(1, service="b", trace=1), span(2, service="b", trace=2)])
    assert store.services() == ["a", "b"]
    assert ids(store.trace(f"{1:032x}")) == ids([span(0), span(1)])
    store.add([span(3, service="c", trace=3)])  # evicts span 0: service a goes, trace 1 shrinks
    assert store.services() == ["b", "c"]
    assert ids(store.trace(f"{1:032x}")) == ids([span(1)])
    assert store.query("a", 0, 100 * S) == []
    store.add([span(4, service="c", trace=3), span(5, service="c", trace=3)])
    assert store.services() == ["c"]
    assert store.trace(f"{1:032x}") == [] and store.trace(f"{2:032x}") == []
    st = store.stats()
    assert (st["spans"], st["traces"], st["services"]) == (3, 1, 1)


@pytest.mark.slow
def test_memory_stays_flat_when_spans_keep_arriving():
    """What left is really gone: no index keeps a reference to an evicted span."""
    store = SpanStore(max_spans=1_000, max_bytes=1 << 30)

    def fill(first: int) -> None:
        for b in range(first, first + 5_000, 250):
            store.add([span(n, service=f"svc-{n % 7}", trace=n // 4) for n in range(b, b + 250)])

    tracemalloc.start()
    try:
        fill(10_000)  # every span held from here on was allocated while tracing
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        fill(20_000)
        fill(30_000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert store.stats()["spans"] == 1_000
    # A leak of one round would be ~5 MB; what varies is the open buckets' slots (8 bytes each).
    assert abs(after - before) < 200_000, f"grew by {after - before} bytes while holding the same number of spans"


def test_query_window_overlap():
    store = SpanStore(max_spans=100, max_bytes=1 << 30)
    a = span(1, start=10, dur=10)  # [10, 20]
    b = span(2, start=15, dur=15)  # [15, 30]
    c = span(3, start=40, dur=10)  # [40, 50]
    d = span(4, service="other", start=25, dur=1)
    store.add([a, b, c, d])
    assert sorted(ids(store.query("rag", 20, 40))) == ids([a, b, c])  # touching counts as overlapping
    assert ids(store.query("rag", 21, 39)) == ids([b])
    assert ids(store.query("rag", 0, 9)) == []
    assert ids(store.query("rag", 51, 99)) == []
    assert ids(store.query("rag", 12, 13)) == ids([a])  # the window inside one span
    assert sorted(ids(store.query(None, 21, 39))) == ids([b, d])
    assert store.query("nobody", 0, 100) == []


def test_query_across_many_buckets_and_evictions():
    store = SpanStore(max_spans=3 * BUCKET_SPANS, max_bytes=1 << 30)
    n_total = 5 * BUCKET_SPANS + 17
    for first in range(0, n_total, 300):
        store.add([span(n, service="rag" if n % 3 else "ops") for n in range(first, min(first + 300, n_total))])
    oldest = n_total - 3 * BUCKET_SPANS
    # A window over the start of what is left, partly before it: only live spans come back.
    lo, hi = (oldest - 50) * S, (oldest + 99) * S + 5
    got = store.query("rag", lo, hi)
    want = [n for n in range(oldest, oldest + 100) if n % 3]
    assert sorted(ids(got)) == sorted(f"{n + 1:016x}" for n in want)
    assert len(store.query(None, 0, n_total * S, limit=100)) == 100
    # The most recently arrived come first when a limit cuts.
    newest = store.query("ops", 0, n_total * S, limit=10)
    assert [s.start_ns // S for s in newest] == [n for n in range(n_total - 1, 0, -1) if n % 3 == 0][:10]


def test_trace_is_sorted_by_start():
    store = SpanStore(max_spans=100, max_bytes=1 << 30)
    store.add([span(5, trace=7), span(2, trace=7), span(9, trace=7), span(3, trace=8)])
    assert [s.start_ns for s in store.trace(f"{7:032x}")] == [2 * S, 5 * S, 9 * S]
    assert store.trace("0" * 32) == []


@pytest.mark.slow
def test_concurrent_adds_and_queries():
    store = SpanStore(max_spans=5_000, max_bytes=1 << 30)
    threads, batches, per_batch = 8, 100, 50
    errors: list[BaseException] = []
    done = threading.Event()

    def producer(t: int) -> None:
        try:
            for b in range(batches):
                base = (t * batches + b) * per_batch
                store.add([span(base + i, service=f"svc-{t % 3}", trace=base // 10 + i // 10)
                           for i in range(per_batch)])
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    def reader() -> None:
        try:
            while not done.is_set():
                for s in store.query(None, 0, 10**9 * S, limit=1_000):
                    assert s is not None
                store.services()
                store.stats()
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for th in workers + readers:
        th.start()
    for th in workers:
        th.join()
    done.set()
    for th in readers:
        th.join()
    assert errors == []
    st = store.stats()
    total = threads * batches * per_batch
    assert (st["spans"], st["received_total"], st["evicted_total"]) == (5_000, total, total - 5_000)
    live = store.query(None, 0, 10**9 * S)
    assert len(live) == 5_000 and len({s.span_id for s in live}) == 5_000
    assert st["bytes"] == sum(s.approx_bytes() for s in live)
    by_trace = sum(len(store.trace(t)) for t in {s.trace_id for s in live})
    assert by_trace == 5_000
    assert sorted(store.services()) == ["svc-0", "svc-1", "svc-2"]
