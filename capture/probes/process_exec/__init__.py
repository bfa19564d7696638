"""process_exec probe: decoder and metadata for program.bpf.c beside it.

Counter ``execs``; top lists ``executables`` (execs per path as given to execve, cut at 127
bytes) and ``commands`` (execs per command name, the kernel's 15-byte comm). The agent compares
``executables`` with the recorder's baseline to list programs new in the incident. Not evidence
for any attribution domain: it says what ran, not what was slow.
"""
from capture.probes.base import Probe, RawSnapshot, bump


def _text(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace") or "(empty)"


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["execs"].items():
        cgid, n = key.cgid, value.value
        bump(raw, ("c", cgid, "execs"), n)
        bump(raw, ("p", cgid, "executables", _text(key.filename)), n)
        bump(raw, ("p", cgid, "commands", _text(key.comm)), n)
    return raw


PROBE = Probe(
    name="process_exec",
    summary="Programs executed (execve) by workload, by executable path and command name",
    source="program.bpf.c",
    attach=("tracepoint:sched:sched_process_exec",),
    cost_class="low",
    event_budget_per_s=20_000,
    domains=(),
    counters={"execs": "processes"},
    histograms={},
    read_raw=read_raw,
)
