"""oom_kill probe: decoder and metadata for program.bpf.c beside it."""
from capture.probes.base import Probe, RawSnapshot, bump


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["kills"].items():
        cgid, n = key.cgid, value.value
        bump(raw, ("c", cgid, "oom_kills"), n)
        bump(raw, ("p", cgid, "victims", key.comm.decode(errors="replace")), n)
    return raw


PROBE = Probe(
    name="oom_kill",
    summary="OOM kills by cgroup and process name",
    source="program.bpf.c",
    attach=("tracepoint:oom:mark_victim", "tracepoint:sched:sched_process_exit"),
    cost_class="low",
    event_budget_per_s=10_000,
    domains=("app_memory",),
    counters={"oom_kills": "processes"},
    histograms={},
    read_raw=read_raw,
)
