"""tcp_reset probe: decoder and metadata for program.bpf.c beside it."""
from capture.probes.base import Probe, RawSnapshot, bump, peer_str, tracepoint_format


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["resets"].items():
        cgid, n = key.cgid, value.value
        bump(raw, ("c", cgid, "sent" if key.sent else "received"), n)
        bump(raw, ("p", cgid, "sent_to" if key.sent else "received_from", peer_str(key.peer)), n)
    return raw


def cflags() -> list[str]:
    # Linux 6.10+ describes the reset's endpoints as socket addresses instead of ports.
    fmt = tracepoint_format("tcp", "tcp_send_reset")
    flags = ["-DSEND_RESET_SOCKADDR"] if "saddr[28]" in fmt else []
    if "enum sk_rst_reason" in fmt:
        flags.append("-DNEED_SK_RST_REASON")
    return flags


PROBE = Probe(
    name="tcp_reset",
    summary="TCP resets sent and received by owning workload and peer",
    source="program.bpf.c",
    attach=("tracepoint:tcp:tcp_send_reset", "tracepoint:tcp:tcp_receive_reset",
            "tracepoint:sock:inet_sock_set_state", "tracepoint:tcp:tcp_rcv_space_adjust"),
    cost_class="low",
    event_budget_per_s=50_000,
    domains=("network",),
    counters={"sent": "resets", "received": "resets"},
    histograms={},
    read_raw=read_raw,
    cflags=cflags,
)
