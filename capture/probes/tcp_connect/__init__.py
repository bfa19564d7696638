"""tcp_connect probe: decoder and metadata for program.bpf.c beside it."""
from capture.probes.base import Probe, RawSnapshot, bump, peer_str, slot_upper

_OUTCOMES = {0: "attempts", 1: "established", 2: "failed"}


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["latency_us"].items():
        raw[("h", key.cgid, "connect_latency", slot_upper(key.slot))] = value.value
    for key, value in bpf["conns"].items():
        outcome = _OUTCOMES.get(key.outcome, "attempts")
        bump(raw, ("c", key.cgid, outcome), value.value)
        if outcome == "failed":
            bump(raw, ("p", key.cgid, "failed_peers", peer_str(key.peer)), value.value)
        elif outcome == "established":  # the workload's egress destinations
            bump(raw, ("p", key.cgid, "peers", peer_str(key.peer)), value.value)
    return raw


PROBE = Probe(
    name="tcp_connect",
    summary="TCP connect latency and failures by workload and peer",
    source="program.bpf.c",
    attach=("tracepoint:syscalls:sys_enter_connect", "tracepoint:sock:inet_sock_set_state"),
    cost_class="low",
    event_budget_per_s=50_000,
    domains=("network",),
    counters={"attempts": "connects", "established": "connects", "failed": "connects"},
    histograms={"connect_latency": "us"},
    read_raw=read_raw,
)
