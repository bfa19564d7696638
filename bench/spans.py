"""Span ingest: what the built-in OTLP receiver and span store sustain, and what the store's
bound costs in memory.

    .venv/bin/python -m bench.spans [--seconds 30] [--senders 4] [--batch 512] [--max-spans 100000]
                                    [--max-mib 64] [--out bench/results/spans.json]

In one run, on one machine:

1. store only: ``SpanStore.add`` of decoded 512-span batches into a store at its bound (so every
   add also evicts), timed without the decoding; and ``otlp.decode_export`` alone. These are the
   baselines the end-to-end number is read against.
2. memory at the bound: the same bodies decoded into a fresh store with tracemalloc on, until
   the store is full. What tracemalloc holds afterwards is the store (the bodies were allocated
   before tracing started): it is compared with the bytes the store accounts.
3. end to end: the receiver on a loopback aiohttp server in this process, flooded by
   ``--senders`` processes, each exporting ``--batch``-span batches of GenAI-shaped spans through
   the real ``OTLPSpanExporter`` (protobuf, gzip). Spans/s is what the store received during the
   window; the process's CPU time (every thread) over the window is the receiver's cost. On a
   small machine the senders take CPU from the receiver: the store-only rate shows the ceiling.
4. queries over the full store: ``store.query(service, last 5 minutes)``, and
   ``responder.evidence.traces.evidence.trace_evidence`` over its result split in two halves.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from bench import write_results

REPO = Path(__file__).resolve().parent.parent
SERVICES = ["rag-api", "chat-gateway", "agent-runner", "search-api"]
MODELS = ["gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-70b"]
PROVIDERS = {"gpt-4o-mini": "openai", "claude-3-5-haiku": "anthropic", "llama-3.1-70b": "vllm"}


# --- the spans a GenAI service exports --------------------------------------------------------

class GenAiTraces:
    """Fresh SDK ReadableSpans shaped like a RAG service's traces: a server span, retrieval, a
    rerank, one or two LLM calls (the first sometimes rate-limited, with error.type and an
    exception event), a first-token event. About 5 spans per trace."""

    def __init__(self, service: str, seed: int) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.rng = random.Random(seed)
        self.resource = Resource.create({"service.name": service, "service.version": "2.3.1",
                                         "deployment.environment.name": "bench", "host.name": f"node-{seed}"})
        self.scope = InstrumentationScope("opentelemetry.instrumentation.openai_v2", "2.1b0")

    def batch(self, n: int) -> list:
        spans: list = []
        while len(spans) < n:
            spans += self.trace(time.time_ns())
        return spans[:n]

    def trace(self, t0: int) -> list:
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

        rng = self.rng
        trace_id = rng.getrandbits(128) | 1
        root = SpanContext(trace_id, rng.getrandbits(64) | 1, False)

        def child(name, kind, start, dur, attrs, events=(), status=None):
            ctx = SpanContext(trace_id, rng.getrandbits(64) | 1, False)
            return ReadableSpan(name=name, context=ctx, parent=root, resource=self.resource, attributes=attrs,
                                events=events, kind=kind, instrumentation_scope=self.scope,
                                status=status or Status(StatusCode.UNSET), start_time=start, end_time=start + dur)

        model = rng.choice(MODELS)
        ms = 1_000_000
        out = [child("retrieve documents", SpanKind.CLIENT, t0 + 2 * ms, 18 * ms,
                     {"db.system.name": "qdrant", "db.collection.name": "kb-chunks", "server.address": "qdrant",
                      "server.port": 6333, "db.response.returned_rows": 8}),
               child("rerank", SpanKind.INTERNAL, t0 + 21 * ms, 9 * ms, {"rerank.model": "bge-reranker-v2",
                                                                        "rerank.candidates": 8})]
        start = t0 + 31 * ms
        genai = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDERS[model],
                 "gen_ai.request.model": model, "gen_ai.request.max_tokens": 1024, "gen_ai.request.temperature": 0.2,
                 "server.address": f"{PROVIDERS[model]}.example", "server.port": 443}
        if rng.random() < 0.05:
            err = Event("exception", {"exception.type": "openai.RateLimitError",
                                      "exception.message": "Error code: 429 - rate limit reached"}, start + 40 * ms)
            out.append(child(f"chat {model}", SpanKind.CLIENT, start, 40 * ms,
                             genai | {"error.type": "429", "http.response.status_code": 429}, [err],
                             Status(StatusCode.ERROR, "429 Too Many Requests")))
            start += 250 * ms
        dur = rng.randint(300, 2500) * ms
        first = Event("gen_ai.first_token", {}, start + dur // 5)
        out.append(child(f"chat {model}", SpanKind.CLIENT, start, dur,
                         genai | {"gen_ai.response.model": model + "-2024-07-18",
                                  "gen_ai.response.id": f"chatcmpl-{rng.getrandbits(64):x}",
                                  "gen_ai.usage.input_tokens": rng.randint(400, 6000),
                                  "gen_ai.usage.output_tokens": rng.randint(20, 800),
                                  "gen_ai.response.finish_reasons": ("stop",), "http.response.status_code": 200},
                         [first]))
        end = start + dur + 3 * ms
        out.insert(0, ReadableSpan(
            name="POST /v1/answer", context=root, parent=None, resource=self.resource, kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/v1/answer", "url.scheme": "http",
                        "http.response.status_code": 200, "user_agent.original": "bench/1.0"},
            instrumentation_scope=self.scope, status=Status(StatusCode.UNSET), start_time=t0, end_time=end))
        return out


def request_bodies(count: int, batch: int, seed: int = 7) -> list[bytes]:
    """Protobuf ExportTraceServiceRequest bodies, encoded as the SDK's exporter encodes them."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    out = []
    for i in range(count):
        gen = GenAiTraces(SERVICES[i % len(SERVICES)], seed + i)
        out.append(encode_spans(gen.batch(batch)).SerializeToString())
    return out


# --- the sender process -----------------------------------------------------------------------

def send(url: str, token: str, service: str, seed: int, start_at: float, seconds: float, batch: int) -> dict:
    """Export batches through the real OTLPSpanExporter from ``start_at`` for ``seconds``."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    exporter = OTLPSpanExporter(endpoint=url, headers={"Authorization": f"Bearer {token}"},
                                compression=Compression.Gzip, timeout=30)
    gen = GenAiTraces(service, seed)
    gen.batch(batch)  # warm up imports and the exporter's session before the window
    sent = failed = 0
    latencies = []
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    while time.time() < end:
        spans = gen.batch(batch)
        t = time.perf_counter()
        result = exporter.export(spans)
        latencies.append((time.perf_counter() - t) * 1000)
        if result == SpanExportResult.SUCCESS:
            sent += len(spans)
        else:
            failed += len(spans)
    exporter.shutdown()
    latencies.sort()
    return {"service": service, "spans_sent": sent, "spans_failed": failed, "exports": len(latencies),
            "export_p50_ms": statistics.median(latencies) if latencies else None,
            "export_max_ms": latencies[-1] if latencies else None}


# --- the phases -------------------------------------------------------------------------------

def store_only(bodies: list[bytes], max_spans: int, max_bytes: int, min_seconds: float = 4.0) -> dict:
    from responder.evidence.traces import otlp
    from responder.evidence.traces.store import SpanStore

    store = SpanStore(max_spans, max_bytes)
    add_s = decode_s = 0.0
    spans = 0
    rounds = 0
    while add_s + decode_s < min_seconds or store.stats()["evicted_total"] == 0:
        for body in bodies:
            t = time.perf_counter()
            decoded = otlp.decode_export(body, otlp.PROTOBUF, None, 64 << 20).spans
            t1 = time.perf_counter()
            store.add(decoded)
            decode_s += t1 - t
            add_s += time.perf_counter() - t1
            spans += len(decoded)
        rounds += 1
    return {"spans": spans, "add_spans_per_s": spans / add_s, "decode_spans_per_s": spans / decode_s,
            "decode_and_add_spans_per_s": spans / (add_s + decode_s), "evicted": store.stats()["evicted_total"]}


def memory_at_bound(bodies: list[bytes], max_spans: int, max_bytes: int) -> dict:
    """Fill a fresh store to its bound with tracemalloc on; what is still traced is the store."""
    from responder.evidence.traces import otlp
    from responder.evidence.traces.model import SPAN_OVERHEAD_BYTES
    from responder.evidence.traces.store import SpanStore

    gc.collect()
    tracemalloc.start()
    try:
        store = SpanStore(max_spans, max_bytes)
        used = 0
        for body in bodies:
            store.add(otlp.decode_export(body, otlp.PROTOBUF, None, 64 << 20).spans)
            used += 1
            if store.stats()["evicted_total"]:
                break
        gc.collect()
        traced, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    st = store.stats()
    if not st["evicted_total"]:
        print(f"  (the store did not reach its bound with {len(bodies)} bodies: numbers are below the bound)")
    per_span_traced = traced / st["spans"]
    per_span_accounted = st["bytes"] / st["spans"]
    # approx_bytes = SPAN_OVERHEAD_BYTES + what it counts per string and value: the overhead that
    # would make the accounting match tracemalloc is the current one plus the difference.
    implied_overhead = SPAN_OVERHEAD_BYTES + per_span_traced - per_span_accounted
    return {"method": "tracemalloc (Python allocations still live after filling a fresh store)",
            "bodies_used": used, "spans": st["spans"], "accounted_bytes": st["bytes"], "traced_bytes": traced,
            "traced_peak_bytes": peak, "traced_per_span": per_span_traced, "accounted_per_span": per_span_accounted,
            "traced_over_accounted": traced / st["bytes"], "span_overhead_bytes": SPAN_OVERHEAD_BYTES,
            "implied_span_overhead_bytes": implied_overhead, "limited_by": _limited_by(st)}


def _limited_by(st: dict) -> str:
    if st["spans"] >= st["max_spans"]:
        return "max_spans"
    return "max_bytes" if st["evicted_total"] else "neither (not full)"


async def end_to_end(args, max_spans: int, max_bytes: int) -> tuple[dict, object]:
    from aiohttp import web

    from common.http import bearer_ok
    from responder.evidence.traces.receiver import OtlpReceiver
    from responder.evidence.traces.store import SpanStore

    token = secrets.token_urlsafe(16)
    store = SpanStore(max_spans, max_bytes)
    receiver = OtlpReceiver(store, lambda r: bearer_ok(r.headers.get("Authorization"), token), 16 << 20)
    app = web.Application()
    receiver.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}/v1/traces"
    start_at = time.time() + 4.0  # time for the senders to import and warm up
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.spans", "--send", url, "--token", token, "--service", SERVICES[i % len(SERVICES)],
        "--seed", str(100 + i), "--start-at", str(start_at), "--seconds", str(args.seconds + 1.0),
        "--batch", str(args.batch), cwd=REPO, stdout=subprocess.PIPE) for i in range(args.senders)]
    try:
        await asyncio.sleep(max(0.0, start_at + 0.5 - time.time()))  # the window starts with every sender busy
        received0, cpu0, t0 = store.stats()["received_total"], _cpu_s(), time.monotonic()
        peak_spans = peak_bytes = 0
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(0.25)
            st = store.stats()
            peak_spans, peak_bytes = max(peak_spans, st["spans"]), max(peak_bytes, st["bytes"])
        received1, cpu1, t1 = store.stats()["received_total"], _cpu_s(), time.monotonic()
        outs = [await p.communicate() for p in procs]
        senders = [json.loads(out) for out, _ in outs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a sender failed: exit codes {[p.returncode for p in procs]}")
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await runner.cleanup()
    st = store.stats()
    window = t1 - t0
    spans = received1 - received0
    return ({"senders": args.senders, "batch": args.batch, "compression": "gzip", "window_s": window,
             "spans_in_window": spans, "spans_per_s": spans / window,
             "receiver_cpu_s": cpu1 - cpu0, "receiver_cpu_pct": 100 * (cpu1 - cpu0) / window,
             "spans_per_receiver_cpu_s": spans / (cpu1 - cpu0) if cpu1 > cpu0 else None,
             "spans_failed": sum(s["spans_failed"] for s in senders), "sender_stats": senders,
             "store": st, "peak_spans_sampled": peak_spans, "peak_bytes_sampled": peak_bytes,
             "bound_held": st["spans"] <= max_spans and st["bytes"] <= max_bytes and peak_spans <= max_spans
             and peak_bytes <= max_bytes}, store)


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def queries(store, repeat: int = 5) -> dict:
    now = time.time_ns()
    window = (now - 300 * 1_000_000_000, now)
    out: dict = {"window_s": 300, "services": store.services()}
    times, result = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        result = store.query(SERVICES[0], *window)
        times.append((time.perf_counter() - t) * 1000)
    out["query_one_service"] = {"service": SERVICES[0], "spans": len(result), "median_ms": statistics.median(times),
                                "max_ms": max(times)}
    times_all, every = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        every = store.query(None, *window)
        times_all.append((time.perf_counter() - t) * 1000)
    out["query_all_services"] = {"spans": len(every), "median_ms": statistics.median(times_all)}
    del every
    try:
        from responder.evidence.traces.evidence import trace_evidence
    except ImportError:
        out["trace_evidence"] = None
        return out
    # The query result as baseline (earlier half by start time) and incident (later half).
    ordered = sorted(result, key=lambda s: s.start_ns)
    half = len(ordered) // 2
    times = []
    evidence = {}
    for _ in range(3):
        t = time.perf_counter()
        evidence = trace_evidence(ordered[:half], ordered[half:], SERVICES[0])
        times.append((time.perf_counter() - t) * 1000)
    out["trace_evidence"] = {"spans": len(ordered), "median_ms": statistics.median(times),
                             "dependencies": len(evidence.get("dependencies", []))}
    return out


def run(args) -> dict:
    max_spans, max_bytes = args.max_spans, args.max_mib << 20
    print(f"span benchmark: store bound {max_spans} spans / {args.max_mib} MiB, {args.senders} senders x "
          f"{args.batch}-span batches (gzip) for {args.seconds:g} s", flush=True)
    t = time.monotonic()
    bodies = request_bodies(args.bodies, args.batch)
    print(f"  {len(bodies)} request bodies of {args.batch} spans, {sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB "
          f"each ({time.monotonic() - t:.1f} s to build)", flush=True)
    base = store_only(bodies, max_spans, max_bytes)
    print(f"  store only: add {base['add_spans_per_s']:,.0f} spans/s at the bound; decode "
          f"{base['decode_spans_per_s']:,.0f} spans/s; both {base['decode_and_add_spans_per_s']:,.0f} spans/s",
          flush=True)
    gc.collect()
    mem = memory_at_bound(bodies, max_spans, max_bytes)
    del bodies
    gc.collect()
    print(f"  memory at the bound ({mem['limited_by']}): {mem['spans']:,} spans, accounted "
          f"{mem['accounted_bytes'] / 2**20:.1f} MiB, tracemalloc {mem['traced_bytes'] / 2**20:.1f} MiB "
          f"({mem['traced_over_accounted']:.2f}x); per span {mem['traced_per_span']:.0f} B traced vs "
          f"{mem['accounted_per_span']:.0f} B accounted; SPAN_OVERHEAD_BYTES {mem['span_overhead_bytes']} "
          f"-> would be {mem['implied_span_overhead_bytes']:.0f}", flush=True)
    e2e, store = asyncio.run(end_to_end(args, max_spans, max_bytes))
    print(f"  end to end: {e2e['spans_per_s']:,.0f} spans/s over {e2e['window_s']:.1f} s "
          f"({e2e['spans_in_window']:,} spans, {e2e['spans_failed']} failed); receiver CPU "
          f"{e2e['receiver_cpu_pct']:.0f}% = {e2e['spans_per_receiver_cpu_s'] or 0:,.0f} spans per CPU-second",
          flush=True)
    st = e2e["store"]
    print(f"  store after: {st['spans']:,} spans (max {max_spans:,}), {st['bytes'] / 2**20:.1f} MiB accounted "
          f"(max {args.max_mib} MiB), evicted {st['evicted_total']:,}; bound held: {e2e['bound_held']}",
          flush=True)
    q = queries(store)
    one, every, ev = q["query_one_service"], q["query_all_services"], q["trace_evidence"]
    print(f"  query {one['service']} last 5 min: {one['spans']:,} spans in {one['median_ms']:.1f} ms (median); "
          f"all services: {every['spans']:,} spans in {every['median_ms']:.1f} ms", flush=True)
    if ev:
        print(f"  trace_evidence over {ev['spans']:,} spans: {ev['median_ms']:.0f} ms (median of 3), "
              f"{ev['dependencies']} dependencies", flush=True)
    else:
        print("  trace_evidence: not available (responder.evidence.traces.evidence not importable)", flush=True)
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "max_spans": max_spans, "max_bytes": max_bytes,
            "store_only": base, "memory_at_bound": mem, "end_to_end": e2e, "queries": q}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="end-to-end window (default 30)")
    ap.add_argument("--senders", type=int, default=4, help="sender processes (default 4)")
    ap.add_argument("--batch", type=int, default=512, help="spans per export (default 512)")
    ap.add_argument("--max-spans", type=int, default=100_000)
    ap.add_argument("--max-mib", type=int, default=64)
    ap.add_argument("--bodies", type=int, default=160, help="distinct request bodies for phases 1-2 (default 160)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "spans.json"))
    # A sender process (started by the benchmark itself).
    ap.add_argument("--send", help=argparse.SUPPRESS)
    ap.add_argument("--token", help=argparse.SUPPRESS)
    ap.add_argument("--service", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.send:
        print(json.dumps(send(args.send, args.token, args.service, args.seed, args.start_at, args.seconds,
                              args.batch)), flush=True)
        return 0
    result = run(args)
    write_results(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
