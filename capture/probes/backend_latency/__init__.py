"""backend_latency probe: decoder and metadata for program.bpf.c beside it.

Results, per window:
- counters ``requests`` (requests that got a reply), ``slow_requests`` (those at or above
  ``SLOW_US``) and ``latency_sum_us``, so the mean is ``latency_sum_us / requests``;
- histogram ``latency`` (us, log2 buckets), the client-side time from the last write of a
  request to the first read of its reply;
- top lists by peer (``addr:port`` of the backend): ``peers`` (requests), ``latency_sum_us``
  (time spent waiting on each peer: a peer's mean is its sum over its ``peers`` count) and
  ``slow_peers`` (requests at or above ``SLOW_US`` per peer; peers with none are absent).

Connections opened before the probe loaded (a pool's) are measured too: their peers are read
from /proc when it attaches (``capture.probes.fdpeers``). Connections whose requests are TLS
records (a provider over HTTPS) are not timed: their answers are ``tls_http``'s, and would
otherwise pass for a backend's latency.
"""
from capture.probes.base import Probe, RawSnapshot, bump, peer_str, slot_upper
from capture.probes.fdpeers import seed_scope

# Must match SLOW_US in the BPF source: 2^16 us = 65.5 ms, a histogram bucket boundary.
SLOW_US = 65536

# The request and reply syscalls: every read/write-family call on the node runs these.
_PER_CALL = tuple(f"syscalls:sys_{edge}_{call}"
                  for call in ("write", "sendto", "writev", "sendmsg", "read", "recvfrom", "readv", "recvmsg")
                  for edge in ("enter", "exit"))


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["latency_us"].items():
        bump(raw, ("h", key.cgid, "latency", slot_upper(key.slot)), value.value)
    for key, v in bpf["peers"].items():
        cgid, peer = key.cgid, peer_str(key.peer)
        bump(raw, ("c", cgid, "requests"), v.requests)
        bump(raw, ("c", cgid, "slow_requests"), v.slow)
        bump(raw, ("c", cgid, "latency_sum_us"), v.latency_sum_us)
        bump(raw, ("p", cgid, "peers", peer), v.requests)
        bump(raw, ("p", cgid, "latency_sum_us", peer), v.latency_sum_us)
        if v.slow:
            bump(raw, ("p", cgid, "slow_peers", peer), v.slow)
    return raw


PROBE = Probe(
    name="backend_latency",
    summary="Request/reply latency of plain-TCP backends (e.g. PostgreSQL) by workload and peer",
    source="program.bpf.c",
    attach=tuple(f"tracepoint:{tp}" for tp in _PER_CALL)
    + ("tracepoint:syscalls:sys_enter_connect", "tracepoint:syscalls:sys_exit_connect",
       "tracepoint:syscalls:sys_enter_close", "tracepoint:sock:inet_sock_set_state"),
    # Every read/write-family syscall on the node runs two handlers, whatever the scope: measured
    # here about 0.1 us of BPF per handler run on a descriptor that is not a client socket, and
    # 0.6-0.9 us of added wall time per syscall with the tracepoint dispatch (100k-syscall loop).
    cost_class="high",
    # One event per reply in scope. A request costs about four in-scope handler runs of ~0.3 us
    # (write and read, enter and exit), so 20k requests/s cost ~25 ms of CPU per second (2.5% of
    # a core) on top of the node-wide cost above. Database clients in a scoped workload rarely
    # exceed that; a cache client (Redis) can, and is stopped with a truncated window saying so.
    event_budget_per_s=20_000,
    domains=("retrieval_backend",),
    counters={"requests": "requests", "slow_requests": "requests", "latency_sum_us": "us"},
    histograms={"latency": "us"},
    read_raw=read_raw,
    # The recorder samples the read/write syscalls; connect and close stay attached, so a
    # connection opened while they were detached still has its peer when they come back.
    sampled_attach=_PER_CALL,
    sampled_state=("awaiting", "calls"),
    # A database pool's connections predate any capture: their peers are read from /proc.
    seed=seed_scope,
)
