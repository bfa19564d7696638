"""An alert storm against a real ``llmslo serve``: how many alerts its webhook accepts per
second, how fast it answers, whether anything it acknowledged is lost or doubled, and whether
``/healthz`` keeps answering meanwhile.

    .venv/bin/python -m bench.intake [--seconds 15] [--senders 4,8,16,32] [--groups 50] [--group-size 1]
                                     [--big 10000] [--backends sqlite,postgresql]
                                     [--out bench/results/intake.json]

In one run, on one machine (the load generator shares it with the server):

1. baseline: the same storm against a bare aiohttp server in a child process whose handler reads
   the body, parses it as JSON and answers 200 (what HTTP and JSON alone cost here);
2. ``llmslo serve`` on SQLite (its default), then on PostgreSQL when the distribution's server
   can be started (the lab's throwaway cluster), each in a fresh data directory:
   - the storm, once per concurrency in ``--senders`` (the same server, fresh alerts each time):
     that many concurrent senders for ``--seconds``, each notification one new
     firing alert of one of ``--groups`` groups (with ``--group-size`` > 1 it also carries up to
     that many of the group's earlier alerts, as Alertmanager resends a group). Reported: accepted
     new alerts/s, ack latency p50/p99, and, polled every 50 ms throughout, ``/healthz``'s latency;
   - one notification of ``--big`` alerts in one group, timed;
   - afterwards the store is read: every acknowledged alert is there exactly once, and nothing
     that was refused is.

The server's captures go to an agent URL where nothing listens, so each investigation ends at once
(abstaining) and the storm measures intake, with the workers and deliverer running beside it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench import write_results
from common.net import free_port
from lab.harness import ResponderProcess, die_with_parent

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-intake-token"

ECHO_SERVER = """
import json, sys
from aiohttp import web
async def hook(request):
    json.loads(await request.read())
    return web.json_response({"status": "accepted"})
async def health(request):
    return web.json_response({"status": "ok"})
app = web.Application(client_max_size=64 << 20)
app.router.add_post("/webhook/alertmanager", hook)
app.router.add_get("/healthz", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def alert(group: int, n: int, starts: str, run: int = 0) -> dict:
    return {"status": "firing", "labels": {"alertname": "LLMTTFTBurnFast", "severity": "page", "service": f"svc-{group}",
                                           "namespace": "bench", "slo": "ttft", "replica": str(n)},
            "annotations": {"summary": "TTFT SLO burning 14x", "runbook_url": "https://runbooks.example/ttft"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": f"{run:02x}{group:04x}{n:010x}"}


def notification(group: int, alerts: list[dict]) -> dict:
    return {"version": "4", "groupKey": f'{{}}:{{service="svc-{group}"}}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "llmslo", "groupLabels": {"service": f"svc-{group}"},
            "commonLabels": {"alertname": "LLMTTFTBurnFast", "service": f"svc-{group}"}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": alerts}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def storm(url: str, seconds: float, senders: int, groups: int, group_size: int, run: int = 0) -> dict:
    """The storm; returns rates, latencies, and the fingerprints acknowledged and refused. ``run``
    makes the alerts of one storm differ from another's on the same server."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    starts = time.strftime(f"%Y-%m-%dT%H:%M:%S.{run:09d}Z", time.gmtime())
    counters = [0] * groups
    history: list[list[dict]] = [[] for _ in range(groups)]
    acked: set[str] = set()
    refused: dict[int, int] = {}
    lat: list[float] = []
    health_lat: list[float] = []
    health_bad = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=senders + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def sender(k: int) -> None:
            i = k
            while time.monotonic() < stop_at:
                g = i % groups
                i += senders
                a = alert(g, counters[g], starts, run)
                counters[g] += 1
                body = json.dumps(notification(g, [a, *history[g][-(group_size - 1):]] if group_size > 1 else [a]))
                history[g].append(a)
                t0 = time.perf_counter()
                async with s.post(url + "/webhook/alertmanager", data=body, headers=headers) as r:
                    await r.read()
                    status = r.status
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                    acked.add(a["fingerprint"])
                else:
                    refused[status] = refused.get(status, 0) + 1

        async def prober() -> None:
            nonlocal health_bad
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                async with s.get(url + "/healthz") as r:
                    await r.read()
                    if r.status != 200:
                        health_bad += 1
                health_lat.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)

        t0 = time.monotonic()
        await asyncio.gather(prober(), *(sender(k) for k in range(senders)))
        elapsed = time.monotonic() - t0
    return {"accepted": len(acked), "elapsed_s": round(elapsed, 2), "alerts_per_s": round(len(acked) / elapsed, 1),
            "ack_p50_ms": round(pct(lat, 0.5) * 1000, 2), "ack_p99_ms": round(pct(lat, 0.99) * 1000, 2),
            "ack_max_ms": round(max(lat, default=0) * 1000, 2), "refused": refused,
            "healthz_p99_ms": round(pct(health_lat, 0.99) * 1000, 2),
            "healthz_max_ms": round(max(health_lat, default=0) * 1000, 2), "healthz_not_200": health_bad,
            "_acked": acked}


async def big_notification(url: str, n: int) -> dict:
    starts = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    alerts = [alert(9999, i, starts) for i in range(n)]
    body = json.dumps(notification(9999, alerts)).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        t0 = time.perf_counter()
        async with s.post(url + "/webhook/alertmanager", data=body, headers=headers) as r:
            answer = await r.json(content_type=None)
            status = r.status
        took = time.perf_counter() - t0
    return {"alerts": n, "body_bytes": len(body), "status": status, "seconds": round(took, 3),
            "new_alerts": answer.get("new_alerts"), "_acked": {a["fingerprint"] for a in alerts} if status == 200 else set()}


def stored_fingerprints_sqlite(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT fingerprint FROM alert_events WHERE status='firing'")]
    finally:
        conn.close()


def stored_fingerprints_pg(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT fingerprint FROM alert_events WHERE status='firing'")]


async def run_responder(label: str, work: Path, args, database_url: str | None) -> dict:
    env = {"LLMSLO_AGENT_URL": f"http://127.0.0.1:{free_port()}", "LLMSLO_AGENT_TOKEN": "unused",
           }
    if database_url:
        env["LLMSLO_DATABASE_URL"] = database_url
    proc = ResponderProcess(work / label, TOKEN, extra_env=env)
    proc.start()
    storms = {}
    acked: set[str] = set()
    try:
        await proc.wait_ready(60)
        for run, senders in enumerate(args.senders, start=1):
            s = await storm(proc.url, args.seconds, senders, args.groups, args.group_size, run)
            acked |= s.pop("_acked")
            storms[senders] = s
        big = await big_notification(proc.url, args.big)
        await asyncio.sleep(1)
    finally:
        proc.stop()
    acked |= big.pop("_acked")
    stored = (stored_fingerprints_pg(database_url) if database_url
              else stored_fingerprints_sqlite(proc.data_dir / "incidents.sqlite3"))
    stored_set = set(stored)
    check = {"acknowledged": len(acked), "stored": len(stored), "lost": len(acked - stored_set),
             "duplicated": len(stored) - len(stored_set)}
    return {"storms": storms, "big_notification": big, "check": check}


async def run_echo(args) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)], preexec_fn=die_with_parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        storms = {}
        for senders in args.senders:
            result = await storm(url, args.seconds, senders, args.groups, args.group_size)
            result.pop("_acked")
            storms[senders] = result
        return {"storms": storms}
    finally:
        proc.kill()
        proc.wait()


def report(name: str, r: dict, base: dict) -> None:
    for senders, s in r["storms"].items():
        b = base["storms"][senders]
        print(f"{name:11} {senders:3} senders: {s['alerts_per_s']:7.1f} alerts/s ({s['alerts_per_s'] / b['alerts_per_s']:.2f}x "
              f"the bare server's {b['alerts_per_s']:.0f})  ack p50 {s['ack_p50_ms']:5.1f} ms  p99 {s['ack_p99_ms']:5.1f} ms "
              f"(bare {b['ack_p99_ms']:.1f})  max {s['ack_max_ms']:4.0f} ms  refused {s['refused'] or 0}  "
              f"/healthz p99 {s['healthz_p99_ms']:.1f} ms max {s['healthz_max_ms']:.1f} ms, not 200: {s['healthz_not_200']}")
    big = r["big_notification"]
    print(f"{'':11} one {big['alerts']}-alert notification ({big['body_bytes'] / 1e6:.1f} MB): HTTP {big['status']} "
          f"in {big['seconds']:.2f} s")
    c = r["check"]
    print(f"{'':11} acknowledged {c['acknowledged']}, stored {c['stored']}, lost {c['lost']}, "
          f"duplicated {c['duplicated']}")


async def main_async(args) -> dict:
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "machine": {
        "cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    work = Path(tempfile.mkdtemp(prefix="llmslo-bench-intake-"))
    print(f"baseline: a bare aiohttp server (read, parse JSON, answer), {args.seconds:g} s per concurrency")
    results["baseline"] = await run_echo(args)
    if "sqlite" in args.backends:
        print("llmslo serve on SQLite")
        results["sqlite"] = await run_responder("sqlite", work, args, None)
        report("sqlite", results["sqlite"], results["baseline"])
    if "postgresql" in args.backends:
        try:
            from lab.postgres import LabPostgres

            pg = LabPostgres(work / "postgres").start()
        except Exception as e:  # no server binaries here: say so and go on
            print(f"PostgreSQL: not measured ({e})")
            results["postgresql"] = {"skipped": str(e)}
        else:
            try:
                name = "bench_" + uuid.uuid4().hex[:8]
                pg.psql(f"CREATE ROLE {name} LOGIN", database="postgres")
                pg.psql(f"CREATE DATABASE {name} OWNER {name}", database="postgres")
                url = f"postgresql://{name}@/{name}?host={pg.socket_dir}&port={pg.port}"
                print("llmslo serve on PostgreSQL")
                results["postgresql"] = await run_responder("postgresql", work, args, url)
                report("postgresql", results["postgresql"], results["baseline"])
            finally:
                pg.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--senders", type=lambda t: [int(x) for x in t.split(",")], default=[4, 8, 16, 32],
                   help="comma-separated concurrencies, one storm each")
    p.add_argument("--groups", type=int, default=50)
    p.add_argument("--group-size", type=int, default=1)
    p.add_argument("--big", type=int, default=10_000)
    p.add_argument("--backends", type=lambda t: t.split(","), default=["sqlite", "postgresql"],
                   help="sqlite, postgresql (where the distribution's server can be started), or both")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "intake.json"))
    args = p.parse_args(argv)
    results = asyncio.run(main_async(args))
    write_results(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
