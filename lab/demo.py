"""``make demo``: one machine, two real incidents, end to end.

Starts the responder (embedded defaults), a small HTTP service in its own cgroup and a client
loop against it. Round 1 injects 20% packet loss on the service's port with nftables; round 2
runs busy processes in the service's cgroup. Each round fires an Alertmanager-shaped alert at the
responder and prints the thread it produced, then resolves it. Every rule, cgroup and process is
removed however the demo ends (Ctrl-C included).
"""
from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from lab import cgroups, faults
from lab.harness import LabService, ResponderProcess, alert_payload
from lab.load import LoadStats, run_load

HEALTHY_S = 20  # the recorder's baseline before the first fault
SETTLE_S = 3  # let the fault bite before the alert "fires"
GAP_S = 15  # healthy time between rounds
LOSS_PERCENT = 20
CPU_WORKERS = 4


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def print_thread(responder: ResponderProcess, incident: dict) -> None:
    ref = (incident.get("thread") or {}).get("console")
    path = responder.data_dir / "reports.jsonl"
    if not ref or not path.exists():
        print("(no thread posted yet)")
        return
    for line in path.read_text().splitlines():
        op = json.loads(line)
        if op.get("thread_ts") == ref["ts"] or op.get("ts") == ref["ts"]:
            print(f"--- {op['op']} ---")
            print(op["message"]["text"])


async def round_(responder: ResponderProcess, service: LabService, name: str, fault, labels: dict) -> dict:
    say(f"round {name}: injecting the fault")
    with fault:
        t0 = time.time()
        await asyncio.sleep(SETTLE_S)
        status, body = await responder.post_alert(alert_payload("firing", labels, starts_at=t0))
        print(f"alert sent: HTTP {status} {body}")
        inc = await responder.wait_verdict(body["incident_id"])
    pre = inc.get("preliminary")
    if pre:
        pv = pre["verdict"]
        say(f"round {name}: preliminary verdict {pv['domains'] or 'ABSTAIN'} {_likelihood(pv)}, posted "
            f"{pre['at'] - pre['received_at']:.2f} s after the alert arrived (from the flight recorder)")
    v = inc["verdict"]
    say(f"round {name}: verdict {v['domains'] or 'ABSTAIN'} {_likelihood(v)}"
        + (f" ({v['abstain_reason']})" if v.get("abstain_reason") else ""))
    status, _ = await responder.post_alert(alert_payload("resolved", labels, starts_at=t0, ends_at=time.time()))
    await asyncio.sleep(2)
    print_thread(responder, await responder.incident(inc["id"]))
    return inc


def _likelihood(v: dict) -> str:
    """"100% confidence, score 0.67" (calibrated), or "score 0.67" without a calibration."""
    if v.get("score") is None:
        return f"score {v['confidence']:.2f}"
    return f"{v['confidence']:.0%} confidence, score {v['score']:.2f}"


async def main() -> int:
    cgroups.sweep_stale()
    faults.sweep_stale_tables()
    data = Path(tempfile.mkdtemp(prefix="llmslo-demo-"))
    responder = ResponderProcess(data, token=secrets.token_urlsafe(16))
    service = LabService("demo")
    stop = asyncio.Event()
    stats = LoadStats()
    load = None
    try:
        say(f"starting the responder (data in {data}) and the lab service")
        responder.start()
        await responder.wait_ready()
        await service.start()
        assert service.proc is not None  # start() spawned it
        print(f"service pid {service.proc.pid} on port {service.port}, cgroup {service.cgroup.path}")
        load = asyncio.create_task(run_load(service.url, 20, stop, stats))
        say(f"healthy traffic for {HEALTHY_S}s (the recorder keeps the baseline)")
        await asyncio.sleep(HEALTHY_S)
        labels = {"alertname": "LLMTTFTBurn", "severity": "page", "service": "demo-llm",
                  "slo": "ttft", "cgroup": service.cgroup.path}
        r1 = await round_(responder, service, "1 (packet loss)",
                          faults.PacketLoss(service.port, LOSS_PERCENT), labels | {"round": "1"})
        say(f"healthy traffic for {GAP_S}s")
        await asyncio.sleep(GAP_S)
        r2 = await round_(responder, service, "2 (CPU contention)",
                          faults.CpuContention(service.cgroup, CPU_WORKERS), labels | {"round": "2"})
        say("summary")
        for name, inc, expected in (("packet loss", r1, "network"), ("CPU contention", r2, "app_cpu")):
            v = inc["verdict"]
            got = ", ".join(v["domains"]) or "abstain"
            print(f"{name:15} -> {got:10} {_likelihood(v)}   (injected: {expected})")
        print(f"client requests: {stats.ok} ok, {stats.errors} failed")
        print(f"incidents: {responder.url}/api/incidents (token in LLMSLO_WEBHOOK_TOKEN)")
        return 0
    finally:
        stop.set()
        if load:
            await asyncio.gather(load, return_exceptions=True)
        service.stop()
        responder.stop()
        print(f"cleaned up: nftables tables left {faults.lab_tables() or 'none'}", flush=True)


def run() -> int:
    # SIGTERM ends the demo like Ctrl-C does, so the finally blocks remove the faults.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        print("\ninterrupted; faults removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
