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
  llmslo_early_warning_score{domain, <workload labels>}
      the attribution model's latest score per scored workload and domain (capture.early_warning)
  llmslo_early_warning_firing{domain, signal, <workload labels>}
      1 while a domain's early warning fires, with the signal that decided it
  llmslo_early_warning_began_at_seconds{domain, signal, <workload labels>}
      while it fires, when the trouble began (Unix seconds: the start of the window that first
      named the domain); the generated alert is built on it and passes it on as its began_at
  llmslo_early_warning_anomaly{kind, what, name, <workload labels>}
      for 10 minutes after a workload did what it had never done (a new egress peer, a new
      executable) and it was flagged: its score (capture.early_warning)
  llmslo_early_warning_evaluations_total, llmslo_early_warning_cpu_seconds_total,
  llmslo_early_warning_raised_total: how often it ran, what that cost, how many warnings it raised

The workload labels are the same on every early-warning series (empty when unknown): namespace,
pod, workload_kind and workload (from the Kubernetes API), pod_uid, container_id and cgroup.
"""
from __future__ import annotations

import time

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from capture import identity
from capture.early_warning import shown


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
        yield from early_warning_families(agent)


WORKLOAD_LABELS = ("namespace", "pod", "workload_kind", "workload", "pod_uid", "container_id", "cgroup")


def early_warning_families(agent):
    """The early warning's series (capture.early_warning), none when it does not run."""
    if agent.early_warning is None:
        return
    score = GaugeMetricFamily("llmslo_early_warning_score", "The attribution model's latest score per workload and "
                              "domain, on the workload's recorder history", labels=["domain", *WORKLOAD_LABELS])
    firing = GaugeMetricFamily("llmslo_early_warning_firing", "1 while the kernel early warning fires for a workload "
                               "and domain", labels=["domain", "signal", *WORKLOAD_LABELS])
    began = GaugeMetricFamily("llmslo_early_warning_began_at_seconds", "While the kernel early warning fires, when "
                              "the trouble began (Unix seconds)", labels=["domain", "signal", *WORKLOAD_LABELS])
    workloads = agent.early_warnings()["workloads"]
    for w in workloads:
        values = [w["labels"].get(k, "") for k in WORKLOAD_LABELS]
        for domain, value in sorted(w["scores"].items()):
            score.add_metric([domain, *values], value)
        for d in w["domains"]:
            if d["firing"]:
                firing.add_metric([d["domain"], d["signal"], *values], 1.0)
                began.add_metric([d["domain"], d["signal"], *values], d["began_at"])
    anomaly = GaugeMetricFamily("llmslo_early_warning_anomaly", "A flagged anomaly of a workload (something it never "
                                "did before), its score, for 10 minutes", labels=["kind", "what", "name", *WORKLOAD_LABELS])
    now = time.time()
    for w in workloads:
        values = [w["labels"].get(k, "") for k in WORKLOAD_LABELS]
        for a in w["anomalies"]:
            if shown(a, now):
                anomaly.add_metric([a["kind"], a["what"], a.get("name", ""), *values], a["score"])
    yield score
    yield firing
    yield began
    yield anomaly
    st = agent.early_warning.status()
    yield CounterMetricFamily("llmslo_early_warning_evaluations", "Early-warning evaluations (one per recorder "
                              "interval)", value=st["evaluations"])
    yield CounterMetricFamily("llmslo_early_warning_cpu_seconds", "CPU time the early-warning evaluations took",
                              value=st["cpu_s"])
    yield CounterMetricFamily("llmslo_early_warning_raised", "Early warnings raised since the agent started",
                              value=st["raised"])


def agent_registry(agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry
