"""runq_latency probe: decoder and metadata for program.bpf.c beside it."""
from capture.probes.base import Probe, RawSnapshot, slot_upper


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["wait_us"].items():
        raw[("h", key.cgid, "runq_wait", slot_upper(key.slot))] = value.value
    return raw


PROBE = Probe(
    name="runq_latency",
    summary="Run-queue wait (CPU starvation) per cgroup, log2 histogram",
    source="program.bpf.c",
    attach=("tracepoint:sched:sched_wakeup", "tracepoint:sched:sched_wakeup_new",
            "tracepoint:sched:sched_switch"),
    cost_class="medium",
    # Every context switch on the node reaches the program; this bounds the in-scope ones.
    event_budget_per_s=200_000,
    domains=("app_cpu",),
    counters={},
    histograms={"runq_wait": "us"},
    read_raw=read_raw,
    # The flight recorder samples it (every tracepoint is per event); a thread's enqueue time
    # from before a pause would time a wait across it, so those are forgotten at each re-attach.
    # The owner map stays: a thread's cgroup does not change while the probe is paused.
    sampled_attach=("sched:sched_wakeup", "sched:sched_wakeup_new", "sched:sched_switch"),
    sampled_state=("enqueued",),
)
