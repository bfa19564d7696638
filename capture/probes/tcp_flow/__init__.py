"""tcp_flow probe: decoder and metadata for program.bpf.c beside it.

Counts received bytes from sock:sock_recv_length (what the workload read) where the kernel has
it (6.3+), else from tcp_probe's data_len, which under-counts coalesced segments over 64 KiB.

Per-peer mean sRTT: a top list's counts are summed over cgroups, so a mean cannot be one. The
probe reports two top lists instead, ``rtt_sum_us`` (sum of sampled sRTTs, microseconds) and
``rtt_samples`` (number of samples); ``mean_rtt_us`` divides one by the other for the peers
present in both (each list keeps its own top N, so a peer can be missing from one of them).
"""
from __future__ import annotations

from capture.probes.base import Probe, RawSnapshot, bump, peer_str, slot_upper, tracepoint_format
from capture.schemas import ProbeResult


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["srtt_us"].items():
        raw[("h", key.cgid, "srtt", slot_upper(key.slot))] = value.value
    for key, f in bpf["flows"].items():
        cgid, peer = key.cgid, peer_str(key.peer)
        bump(raw, ("c", cgid, "bytes_received"), f.rx_bytes)
        bump(raw, ("c", cgid, "bytes_acked"), f.acked_bytes)
        if not key.peer.family:  # read before any segment of the socket was seen: no peer
            continue
        if f.rx_bytes:
            bump(raw, ("p", cgid, "rx_bytes_peers", peer), f.rx_bytes)
        if f.acked_bytes:
            bump(raw, ("p", cgid, "tx_bytes_peers", peer), f.acked_bytes)
        if f.rtt_samples:
            bump(raw, ("p", cgid, "rtt_sum_us", peer), f.rtt_sum_us)
            bump(raw, ("p", cgid, "rtt_samples", peer), f.rtt_samples)
    return raw


def cflags() -> list[str]:
    return [] if tracepoint_format("sock", "sock_recv_length") else ["-DRX_FROM_DATA_LEN"]


def mean_rtt_us(result: ProbeResult) -> dict[str, float]:
    """Mean sampled sRTT in microseconds per peer, from the ``rtt_sum_us`` and ``rtt_samples``
    top lists of a tcp_flow result."""
    return result.peer_means("rtt_sum_us", "rtt_samples")


PROBE = Probe(
    name="tcp_flow",
    summary="TCP bytes received and acknowledged, and smoothed RTT, by owning workload and peer",
    source="program.bpf.c",
    attach=("tracepoint:tcp:tcp_probe", "tracepoint:sock:sock_recv_length", "tracepoint:sock:inet_sock_set_state",
            "tracepoint:tcp:tcp_rcv_space_adjust"),
    # One event per received segment (data or ACK): busier than connects or retransmits.
    cost_class="medium",
    # Measured here (BPF stats, 70 MB over loopback): ~0.28 us per tcp_probe run and ~0.21 us
    # per socket read, in scope or not. 200k events/s is then ~5-10% of one CPU: above what a
    # 10 Gbit/s host's GRO-merged segments and ACKs produce (tens of thousands per second),
    # and about where the probe itself would start to matter.
    event_budget_per_s=200_000,
    domains=("network",),
    counters={"bytes_received": "bytes", "bytes_acked": "bytes"},
    histograms={"srtt": "us"},
    read_raw=read_raw,
    cflags=cflags,
    # Detached between samples: a socket's last snd_una would count the bytes acked meanwhile.
    sampled_attach=("tcp:tcp_probe", "sock:sock_recv_length"),
    sampled_state=("sockets",),
)
