"""The span store's byte bound holds in the process's real memory, whatever shape the spans take.

Each shape an exporter can send (large kvlist attribute values, nested arrays, large resource
attributes, long scope names, many events) is decoded from real OTLP protobuf requests and fed
to a store bounded at 32 MiB, ten times over. The child process's resident memory, after the
flood, may exceed what it held before by at most the bound times 1.5 plus 48 MiB: the store's
own estimate of a Python object's size is not exact, and the allocator keeps freed arenas.
Before the accounting counted every value, the kvlist shape alone grew the process by about
145 MiB for 15 spans accounted as 11 KB.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BOUND_MIB = 32
ALLOWANCE_MIB = 48

CHILD = textwrap.dedent(r'''
    import gc, json, os, sys
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
    from responder.evidence.traces import otlp
    from responder.evidence.traces.store import SpanStore

    shape, bound = sys.argv[1], int(sys.argv[2])

    def rss():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def s(text):
        return AnyValue(string_value=text)

    def kvlist(width, depth):
        v = s("v" * 64)
        for _ in range(depth):
            v = AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=f"k{i}", value=v) for i in range(width)]))
        return v

    def nested_array(width, depth):
        v = s("x" * 64)
        for _ in range(depth):
            v = AnyValue(array_value=ArrayValue(values=[v] * width))
        return v

    def request(n, seed):
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name", value=s(f"svc-{seed}"))
        if shape == "resource":
            for i in range(200):
                rs.resource.attributes.add(key=f"r{i}", value=s(f"{seed}-{i}-" + "r" * 2000))
        ss = rs.scope_spans.add()
        ss.scope.name = (f"{seed}-" + "s" * 200_000) if shape == "scope" else "bench"
        for i in range(n):
            sp = ss.spans.add()
            sp.trace_id = (seed * 100_000 + i + 1).to_bytes(16, "big")
            sp.span_id = (i + 1).to_bytes(8, "big")
            sp.name = "op"
            sp.start_time_unix_nano, sp.end_time_unix_nano = 1, 2
            if shape == "kvlist":
                sp.attributes.add(key="big", value=kvlist(8, 4))  # 8**4 leaves of 64 characters
            elif shape == "arrays":
                sp.attributes.add(key="big", value=nested_array(6, 5))
            elif shape == "events":
                for e in range(100):
                    ev = sp.events.add()
                    ev.name = "exception"
                    ev.attributes.add(key="exception.stacktrace", value=s(f"{e}" + "t" * 500))
            elif shape == "plain":
                sp.attributes.add(key="a", value=s("p" * 100))
        return req.SerializeToString()

    per_request = {"kvlist": 4, "arrays": 4, "resource": 50, "scope": 50, "events": 20, "plain": 2000}[shape]
    store = SpanStore(max_spans=10_000_000, max_bytes=bound)
    before = rss()
    fed = 0
    seed = 0
    while fed < 10 * bound:
        seed += 1
        body = request(per_request, seed)
        fed += len(body)
        store.add(otlp.decode_export(body, otlp.PROTOBUF, None, 64 << 20).spans)
        del body
    grown = rss() - before
    print(json.dumps({"fed": fed, "grown": grown, "stats": store.stats()}))
''')


@pytest.mark.parametrize("shape", ["kvlist", "arrays", "resource", "scope", "events", "plain"])
@pytest.mark.slow
def test_real_memory_stays_within_the_byte_bound(shape):
    bound = BOUND_MIB << 20
    out = subprocess.run([sys.executable, "-c", CHILD, shape, str(bound)], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["fed"] >= 10 * bound
    assert r["stats"]["bytes"] <= bound and r["stats"]["evicted_total"] > 0, r["stats"]
    limit = bound * 1.5 + (ALLOWANCE_MIB << 20)
    assert r["grown"] <= limit, (f"{shape}: the process grew by {r['grown'] / 2**20:.0f} MiB for a store "
                                 f"bounded at {BOUND_MIB} MiB (limit {limit / 2**20:.0f} MiB); {r['stats']}")
