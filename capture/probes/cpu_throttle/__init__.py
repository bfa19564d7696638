"""cpu_throttle probe: CPU quota throttling and CPU pressure per cgroup, read from cgroupfs.

No BPF program: the kernel already counts CFS bandwidth throttling and pressure stalls per
cgroup, so the probe costs a few file reads per cgroup per sample and nothing per event.

Files, per cgroup (capture.cgroupfs finds a cgroup's v1 directory on hybrid nodes):
- v2, the unified directory: ``cpu.stat`` nr_periods, nr_throttled, throttled_usec, and
  ``cpu.max`` ("<quota> <period>", or "max" for none); present where the cpu controller is
  enabled. Read first.
- v1, the cpu hierarchy (hybrid nodes): ``cpu.stat`` nr_periods, nr_throttled, throttled_time
  (nanoseconds), ``cpu.cfs_quota_us`` (-1 for none) and ``cpu.cfs_period_us``.
- PSI, always the unified directory: ``cpu.pressure`` some/full ``total=`` (microseconds). Only
  leaf cgroups report it: a parent's stall time repeats its children's, and results are summed
  over the cgroups in scope (so a pod's figure is the sum over its containers).
Gauge ``cgroup_version`` (1 or 2) says which hierarchy the throttling and quota came from;
``quota_cores`` is absent when the cgroup has no quota.
"""
from __future__ import annotations

from capture import cgroupfs
from capture.cgroupfs import Cgroup, Figures
from capture.probes.base import Probe, RawSnapshot


def read_cgroup(cg: Cgroup) -> Figures:
    counters: dict[str, int] = {}
    gauges: dict[str, float] = {}
    quota = None
    v2 = cgroupfs.read_keyed(cg.dir / "cpu.stat") or {}
    if "nr_throttled" in v2:
        counters["nr_periods"] = v2.get("nr_periods", 0)
        counters["nr_throttled"] = v2["nr_throttled"]
        counters["throttled_us"] = v2.get("throttled_usec", 0)
        gauges["cgroup_version"] = 2
        parts = (cgroupfs.read_text(cg.dir / "cpu.max") or "").split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0:
            quota = int(parts[0]) / int(parts[1])
    elif (d := cg.v1_dir("cpu")) is not None and (v1 := cgroupfs.read_keyed(d / "cpu.stat")) is not None:
        counters["nr_periods"] = v1.get("nr_periods", 0)
        counters["nr_throttled"] = v1.get("nr_throttled", 0)
        counters["throttled_us"] = v1.get("throttled_time", 0) // 1000
        gauges["cgroup_version"] = 1
        q, period = cgroupfs.read_int(d / "cpu.cfs_quota_us"), cgroupfs.read_int(d / "cpu.cfs_period_us")
        if q is not None and q > 0 and period:
            quota = q / period
    if quota is not None:
        gauges["quota_cores"] = round(quota, 6)
    counters |= cgroupfs.pressure(cg, "cpu")
    return Figures(counters=counters, gauges=gauges, limited=quota is not None)


def sample(cgroup_ids: set[int] | None) -> RawSnapshot:
    return cgroupfs.snapshot(cgroup_ids, read_cgroup)


PROBE = Probe(
    name="cpu_throttle",
    summary="CPU quota throttling and CPU pressure (PSI) per cgroup, from cgroupfs (v2 or v1)",
    source=None,
    attach=("cgroupfs:cpu.stat", "cgroupfs:cpu.max", "cgroupfs:cpu.cfs_quota_us", "cgroupfs:cpu.pressure"),
    cost_class="low",
    # Nothing runs per event: the budget can never be exceeded.
    event_budget_per_s=1_000_000_000,
    domains=("app_cpu",),
    counters={"nr_periods": "periods", "nr_throttled": "periods", "throttled_us": "us",
              "cpu_pressure_some_us": "us", "cpu_pressure_full_us": "us"},
    histograms={},
    gauges={"quota_cores": "cores", "cgroup_version": "1 or 2 (hierarchy read)"},
    sample=sample,
)
