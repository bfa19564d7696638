"""tcp_retrans probe: decoder and metadata for program.bpf.c beside it."""
from capture.probes.base import Probe, RawSnapshot, bump, peer_str


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["retrans"].items():
        cgid, n = key.cgid, value.value
        bump(raw, ("c", cgid, "synack_retransmits" if key.synack else "retransmits"), n)
        bump(raw, ("p", cgid, "peers", peer_str(key.peer)), n)
    return raw


PROBE = Probe(
    name="tcp_retrans",
    summary="TCP retransmits (data and SYN-ACK) by owning workload and peer",
    source="program.bpf.c",
    attach=("tracepoint:tcp:tcp_retransmit_skb", "tracepoint:tcp:tcp_retransmit_synack",
            "tracepoint:sock:inet_sock_set_state",
            "tracepoint:tcp:tcp_rcv_space_adjust"),
    cost_class="low",
    event_budget_per_s=50_000,
    domains=("network",),
    counters={"retransmits": "segments", "synack_retransmits": "segments"},
    histograms={},
    read_raw=read_raw,
)
