"""What every probe is: its BPF program, metadata, and a decoder from its maps to a result.

A probe's maps are read into a *raw snapshot*: a flat dict of cumulative counts keyed by
``("c", cgroup_id, counter)``, ``("h", cgroup_id, histogram, bucket_upper_bound)`` or
``("p", cgroup_id, top_list, peer)``, plus point-in-time values ``("g", cgroup_id, gauge)``
(e.g. a CPU quota). Snapshots subtract (a window is the difference of two; a gauge keeps its
latest value) and sum over cgroups, which is how the same decoder serves a scoped capture and
the always-on recorder's per-cgroup baseline.

Most probes are a BPF program (``source``) whose maps ``read_raw`` decodes; some attach uprobes
to libraries found at load time (``attach_dynamic``); a few read what the kernel already counts
per cgroup (``sample``: cgroupfs files), where a BPF program would add cost and nothing else.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capture.schemas import Histogram, ProbeInfo, ProbeResult

RawSnapshot = dict[tuple, float]  # counts are integers; a gauge (e.g. a CPU quota) can be fractional

# Each probe is a folder of this package: its module (metadata, decoder) and, for a BPF probe,
# its program (program.bpf.c); headers the programs share are in include/.
PROBES_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = PROBES_DIR / "include"

TOP_N = 10


@dataclass(frozen=True)
class Probe:
    name: str
    summary: str
    source: str | None  # the program's file in the probe's folder; None for a probe that samples cgroupfs
    attach: tuple[str, ...]
    cost_class: str
    # Events per second above which a capture stops the probe: far above a real incident's rate,
    # low enough that a runaway workload cannot turn the probe into the incident.
    event_budget_per_s: int
    domains: tuple[str, ...]
    counters: dict[str, str]  # counter name -> unit
    histograms: dict[str, str]  # histogram name -> unit
    read_raw: Callable[[Any], RawSnapshot] | None = field(compare=False, default=None)
    # Extra compiler flags chosen from the running kernel (e.g. a tracepoint's field layout).
    cflags: Callable[[], list[str]] = field(compare=False, default=lambda: [])
    gauges: dict[str, str] = field(default_factory=dict)  # gauge name -> unit
    # Uprobes attached after the program loads: (bpf, scope or None for the whole node, the
    # libraries already probed as (device, inode), which it extends) -> notes saying what was
    # attached where. Raises ProbeAttachError when nothing could be and nothing was before; a
    # later call (the recorder's re-scan) attaches to the libraries that appeared since.
    attach_dynamic: Callable[[Any, Any, set[tuple[int, int]]], list[str]] | None = field(compare=False, default=None)
    # The shared libraries (by base name) those uprobes go in: a recorder whose probe found none
    # at start loads it again only once some process maps one.
    library: re.Pattern | None = field(compare=False, default=None)
    # After the tracepoints attach: (bpf, scope or None) -> notes. Fills in what the probe would
    # have learned had it been loaded earlier (the peers of connections already open).
    seed: Callable[[Any, Any], list[str]] | None = field(compare=False, default=None)
    # For cgroupfs probes: (cgroup ids, or None for every cgroup) -> cumulative raw snapshot.
    sample: Callable[[set[int] | None], RawSnapshot] | None = field(compare=False, default=None)
    # The per-event tracepoints ("tcp:tcp_probe") a sampling recorder detaches between its
    # samples; the others (connects, closes, socket owners) stay attached, so the probe's own
    # bookkeeping is current when the per-event ones come back. Empty: not sampled.
    sampled_attach: tuple[str, ...] = ()
    # The maps of per-event state that must not outlive a pause (cleared before re-attaching).
    sampled_state: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.sample is not None:
            return "cgroupfs"
        return "uprobe" if self.attach_dynamic is not None else "tracepoint"

    def bpf_text(self) -> str:
        # bcc rewrites map calls (filter_cfg.lookup ...) only in the main source text, not in
        # #included files, so the shared header is spliced in rather than included.
        if self.source is None:
            raise ValueError(f"probe {self.name} samples cgroupfs: it has no BPF program")
        return splice_includes((PROBES_DIR / self.name / self.source).read_text())

    def info(self) -> ProbeInfo:
        return ProbeInfo(name=self.name, summary=self.summary, kind=self.kind, attach=list(self.attach),
                         cost_class=self.cost_class, event_budget_per_s=self.event_budget_per_s,
                         domains=list(self.domains))


class ProbeAttachError(RuntimeError):
    """A probe found nothing to attach to (e.g. the target does not load libssl)."""


_LOCAL_INCLUDE = re.compile(r'^#include "([a-z_]+\.h)"$', re.M)


def splice_includes(text: str, seen: set[str] | None = None) -> str:
    """Replace each ``#include "x.h"`` of include/ with the header's text, once per header."""
    seen = set() if seen is None else seen

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return splice_includes((INCLUDE_DIR / name).read_text(), seen)

    return _LOCAL_INCLUDE.sub(one, text)


def tracepoint_format(category: str, event: str) -> str:
    """The running kernel's description of a tracepoint's fields ("" when it has none)."""
    for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            return Path(f"{root}/events/{category}/{event}/format").read_text()
        except OSError:
            continue
    return ""


def slot_upper(slot: int) -> int:
    """bcc's bpf_log2l slot i holds values in [2^(i-1), 2^i): key it by its upper bound."""
    return 1 << int(slot)


def peer_str(peer: Any) -> str:
    """Render a ``struct peer_t`` (family, address, port) as ``addr:port``."""
    raw = bytes(peer.addr)
    if peer.family == socket.AF_INET:
        return f"{ipaddress.IPv4Address(raw[:4])}:{peer.port}"
    return f"[{ipaddress.IPv6Address(raw)}]:{peer.port}"


def bump(raw: RawSnapshot, key: tuple, n: int) -> None:
    """Add ``n`` to ``raw[key]`` (several map entries can fold into one snapshot key)."""
    raw[key] = raw.get(key, 0) + n


def diff(before: RawSnapshot, after: RawSnapshot) -> RawSnapshot:
    """The window between two cumulative snapshots. Counts never go backwards; an entry that
    disappeared (LRU eviction) contributes nothing rather than a negative count."""
    out = {}
    for key, value in after.items():
        if key[0] == "g":
            out[key] = value
            continue
        d = value - before.get(key, 0)
        if d > 0:
            out[key] = d
    return out


def to_result(probe: Probe, raw: RawSnapshot, cgroup_ids: set[int] | None, window_s: float,
              per_cgroup: bool = False) -> ProbeResult:
    """Sum a raw snapshot over ``cgroup_ids`` (None: every cgroup) into a typed result. Gauges
    are not summed: over several cgroups the result keeps the smallest (the tightest limit).
    With ``per_cgroup``, the counters are also kept per cgroup (``by_cgroup``)."""
    counters = {name: 0.0 for name in probe.counters}
    by_cgroup: dict[str, dict[str, float]] = {}
    gauges: dict[str, float] = {}
    hists = {name: Histogram(unit=unit) for name, unit in probe.histograms.items()}
    tops: dict[str, dict[str, int]] = {}
    for key, value in raw.items():
        kind, cgid = key[0], key[1]
        if cgroup_ids is not None and cgid not in cgroup_ids:
            continue
        if kind == "c":
            counters[key[2]] = counters.get(key[2], 0.0) + value
            if per_cgroup:
                mine = by_cgroup.setdefault(str(cgid), {})
                mine[key[2]] = mine.get(key[2], 0.0) + value
        elif kind == "h":
            # counts are integers: only a gauge can be fractional
            h = hists.setdefault(key[2], Histogram(unit="us"))
            h.buckets[key[3]] = h.buckets.get(key[3], 0) + int(value)
        elif kind == "p":
            t = tops.setdefault(key[2], {})
            t[key[3]] = t.get(key[3], 0) + int(value)
        elif kind == "g":
            gauges[key[2]] = min(gauges.get(key[2], value), value)
    top = {name: [{"peer": peer, "count": n} for peer, n in
                  sorted(entries.items(), key=lambda kv: -kv[1])[:TOP_N]]
           for name, entries in tops.items()}
    return ProbeResult(probe=probe.name, window_s=window_s, counters=counters, histograms=hists, top=top,
                       gauges=gauges, by_cgroup=by_cgroup)


def read_stats(bpf: Any) -> tuple[int, int, int]:
    """(events, lost, unattributed) from the program's ``stats`` array."""
    table = bpf["stats"]
    vals = [table[table.Key(i)].value for i in range(3)]
    return vals[0], vals[1], vals[2]

