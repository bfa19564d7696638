"""The probe catalog: every probe the agent can run, by name."""
from capture.probes import oom_kill, runq_latency, tcp_connect, tcp_reset, tcp_retrans
from capture.probes.base import Probe

CATALOG: dict[str, Probe] = {p.name: p for p in (tcp_retrans.PROBE, tcp_reset.PROBE, tcp_connect.PROBE,
                                                   runq_latency.PROBE, oom_kill.PROBE)}
