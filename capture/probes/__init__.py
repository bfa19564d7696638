"""The probe catalog: every probe the agent can run, by name.

Each module in this package that defines ``PROBE`` is one catalog entry (a probe is its BPF
program plus the module beside it holding its metadata and decoder), listed in ``ORDER`` first
and then by name.
"""
import importlib
import pkgutil

from capture.probes.base import Probe

# The order `llmslo capture --list-probes` and /v1/probes show: network, dns and http, backends,
# cpu, memory, process behaviour. Modules not listed follow by name.
ORDER = ("tcp_retrans", "tcp_reset", "tcp_connect", "tcp_flow", "dns", "tls_http", "backend_latency",
         "runq_latency", "cpu_throttle", "oom_kill", "memory_pressure", "process_exec")


def _discover() -> dict[str, Probe]:
    found = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name == "base":
            continue
        probe = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "PROBE", None)
        if isinstance(probe, Probe):
            found[probe.name] = probe
    rank = {name: i for i, name in enumerate(ORDER)}
    return {name: found[name] for name in sorted(found, key=lambda n: (rank.get(n, len(ORDER)), n))}


CATALOG: dict[str, Probe] = _discover()
