"""The agent's /metrics: the flight recorder's per-cgroup counters and the agent's own cost.

A custom collector reads the recorder at scrape time, so nothing is duplicated into
prometheus_client's own metric objects. Series:

  llmslo_recorder_events_total{probe, counter, cgroup, container_id, pod_uid}
      what the always-on probes counted per cgroup since the agent started (retransmits,
      resets, connect failures, DNS failures, HTTP 429/5xx, throttled periods, OOM kills ...)
  llmslo_recorder_bpf_run_seconds_total{probe}, llmslo_recorder_bpf_runs_total{probe}
      what those probes cost the node (kernel BPF statistics)
  llmslo_recorder_entries, llmslo_recorder_covers_seconds, llmslo_recorder_approx_bytes
  llmslo_agent_captures_total, llmslo_agent_active_captures
"""
from __future__ import annotations

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from capture import identity


def _cgroup_labels(cgids: set[int]) -> dict[int, tuple[str, str, str]]:
    """cgroup id -> (path, container id, pod UID): one walk of the hierarchy per scrape, not a
    walk per cgroup (a cgroup gone since it was counted is labelled by its id)."""
    paths = {c.id: c.path for c in identity.walk_cgroups("/", limit=10_000)}
    out = {}
    for cgid in cgids:
        path = paths.get(cgid) or f"id:{cgid}"
        ident = identity.parse_cgroup_path(path, cgid)
        out[cgid] = (path, ident.container_id or "", ident.pod_uid or "")
    return out


class AgentCollector:
    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        agent, rec = self.agent, self.agent.recorder
        yield CounterMetricFamily("llmslo_agent_captures", "Captures this agent has completed",
                                  value=agent.completed)
        yield GaugeMetricFamily("llmslo_agent_active_captures", "Captures running now", value=len(agent.active))
        if rec is None:
            return
        events = CounterMetricFamily("llmslo_recorder_events", "Events the always-on probes counted per cgroup",
                                     labels=["probe", "counter", "cgroup", "container_id", "pod_uid"])
        totals = sorted(rec.totals.items())
        labels = _cgroup_labels({cgid for (_, cgid, _), _ in totals})
        for (probe, cgid, counter), value in totals:
            events.add_metric([probe, counter, *labels[cgid]], value)
        yield events
        run_s = CounterMetricFamily("llmslo_recorder_bpf_run_seconds", "BPF run time of the always-on probes",
                                    labels=["probe"])
        runs = CounterMetricFamily("llmslo_recorder_bpf_runs", "BPF program runs of the always-on probes",
                                   labels=["probe"])
        for probe, cost in rec.cost().items():
            run_s.add_metric([probe], cost["bpf_run_time_ns"] / 1e9)
            runs.add_metric([probe], cost["bpf_run_count"])
        yield run_s
        yield runs
        st = rec.status()
        yield GaugeMetricFamily("llmslo_recorder_entries", "Entries held in the recorder's ring", value=st["entries"])
        yield GaugeMetricFamily("llmslo_recorder_approx_bytes", "Estimated memory of the recorder's ring",
                                value=st["approx_bytes"])
        yield GaugeMetricFamily("llmslo_recorder_covers_seconds", "How far back the recorder reaches now",
                                value=st["covers_s"])


def agent_registry(agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry
