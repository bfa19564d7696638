"""memory_pressure probe: memory limit hits, OOM events and memory pressure per cgroup, read
from cgroupfs.

No BPF program: the kernel counts these per memory cgroup; the probe reads a few files per
cgroup per sample and costs nothing per event.

Files, per cgroup (capture.cgroupfs finds a cgroup's v1 directory on hybrid nodes):
- v2, the unified directory, where the memory controller is enabled: ``memory.events.local``
  (this cgroup's own events; ``memory.events``, hierarchical, for leaves on kernels without it):
  ``max`` -> limit_hits, ``oom`` -> oom_events, ``oom_kill`` -> oom_kills; ``memory.max`` ->
  limit_bytes ("max": none); ``memory.current`` -> usage_bytes. Read first.
- v1, the memory hierarchy (hybrid nodes): ``memory.failcnt`` (times the usage hit the limit) ->
  limit_hits; ``memory.oom_control`` ``oom_kill`` -> oom_kills. v1 has no count of OOM events,
  only whether the cgroup is under OOM now, so oom_events is oom_kill there (a lower bound: an
  OOM that killed nothing is not counted). ``memory.limit_in_bytes`` -> limit_bytes (absent
  when unlimited), ``memory.usage_in_bytes`` -> usage_bytes.
- PSI, always the unified directory: ``memory.pressure`` some/full ``total=`` (us), leaf
  cgroups only (a parent repeats its children's stalls; results sum over the scope).
Gauge ``cgroup_version`` (1 or 2) says which hierarchy the limit and events came from.
"""
from __future__ import annotations

from capture import cgroupfs
from capture.cgroupfs import Cgroup, Figures
from capture.probes.base import Probe, RawSnapshot


def read_cgroup(cg: Cgroup) -> Figures:
    counters: dict[str, int] = {}
    gauges: dict[str, float] = {}
    limit = None
    events = cgroupfs.read_keyed(cg.dir / "memory.events.local")
    if events is None and cg.leaf:
        events = cgroupfs.read_keyed(cg.dir / "memory.events")
    if events is not None or (cg.dir / "memory.max").exists():
        events = events or {}
        counters["limit_hits"] = events.get("max", 0)
        counters["oom_events"] = events.get("oom", 0)
        counters["oom_kills"] = events.get("oom_kill", 0)
        gauges["cgroup_version"] = 2
        limit = cgroupfs.read_int(cg.dir / "memory.max")
        usage = cgroupfs.read_int(cg.dir / "memory.current")
    elif (d := cg.v1_dir("memory")) is not None and (d / "memory.failcnt").exists():
        oom = cgroupfs.read_keyed(d / "memory.oom_control") or {}
        counters["limit_hits"] = cgroupfs.read_int(d / "memory.failcnt") or 0
        counters["oom_kills"] = oom.get("oom_kill", 0)
        counters["oom_events"] = oom.get("oom_kill", 0)
        gauges["cgroup_version"] = 1
        limit = cgroupfs.read_int(d / "memory.limit_in_bytes")
        if limit is not None and limit >= cgroupfs.UNLIMITED_BYTES:
            limit = None
        usage = cgroupfs.read_int(d / "memory.usage_in_bytes")
    else:
        usage = None
    if limit is not None:
        gauges["limit_bytes"] = limit
    if usage is not None:
        gauges["usage_bytes"] = usage
    counters |= cgroupfs.pressure(cg, "memory")
    return Figures(counters=counters, gauges=gauges, limited=limit is not None)


def sample(cgroup_ids: set[int] | None) -> RawSnapshot:
    return cgroupfs.snapshot(cgroup_ids, read_cgroup)


PROBE = Probe(
    name="memory_pressure",
    summary="Memory limit hits, OOM events and memory pressure (PSI) per cgroup, from cgroupfs (v2 or v1)",
    source=None,
    attach=("cgroupfs:memory.events", "cgroupfs:memory.max", "cgroupfs:memory.failcnt",
            "cgroupfs:memory.oom_control", "cgroupfs:memory.pressure"),
    cost_class="low",
    # Nothing runs per event: the budget can never be exceeded.
    event_budget_per_s=1_000_000_000,
    domains=("app_memory",),
    counters={"limit_hits": "events", "oom_events": "events", "oom_kills": "processes",
              "memory_pressure_some_us": "us", "memory_pressure_full_us": "us"},
    histograms={},
    gauges={"limit_bytes": "bytes", "usage_bytes": "bytes", "cgroup_version": "1 or 2 (hierarchy read)"},
    sample=sample,
)
