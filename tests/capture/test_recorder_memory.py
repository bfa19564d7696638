"""The flight recorder's memory bound holds in the process's real memory.

The recorder is fed, interval after interval, what a node with many busy cgroups makes its
probes' maps hold (per-cgroup counters, histogram buckets and peers that change every read,
more keys than one interval may keep), through the same read/diff/bound path as the BPF maps'
snapshots, until its ring has wrapped. Its status must stay within the stated bound, and the
child process must not grow by more than that bound plus 48 MiB (CPython's allocator keeps
freed arenas). The BPF side of a capture is bounded in the kernel: every map a program declares
has a fixed size (checked below), so what a capture reads back is bounded by those sizes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWANCE_MIB = 48

CHILD = textwrap.dedent(r'''
    import gc, itertools, json, os
    from capture.recorder import MAX_KEYS_PER_INTERVAL, Recorder

    def rss():
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    class BusyNode:
        """A probe's cumulative map snapshot on a node with 5,000 busy cgroups."""
        def __init__(self, salt):
            self.salt, self.n = salt, itertools.count(1)
        def read_raw(self):
            n = next(self.n)
            raw = {}
            for cg in range(5000):
                raw[("c", cg, "events")] = n * (cg + 1)
                raw[("h", cg, "lat", n % 20)] = n * 3
                raw[("p", cg, "peers", f"10.{cg // 250}.{cg % 250}.{n % 7}:443")] = n
            return raw

    rec = Recorder(probes=[], interval_s=5, history_s=300)  # a 60-interval ring
    for name in ("tcp_retrans", "tcp_connect", "runq_latency", "dns"):
        rec.sessions[name] = BusyNode(name)
    before = rss()
    for _ in range(rec.ring.maxlen * 2):
        rec._last_at = rec._last_at or 1.0
        rec.sample()
    st = rec.status()
    print(json.dumps({"grown": rss() - before, "status": st}))
''')


@pytest.mark.slow
def test_the_recorder_stays_within_its_bound():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    st = r["status"]
    assert st["intervals"] == st["max_intervals"] and st["dropped_entries"] > 0
    assert st["approx_bytes"] <= st["max_bytes"]
    limit = st["max_bytes"] + (ALLOWANCE_MIB << 20)
    assert r["grown"] <= limit, f"grew {r['grown'] / 2**20:.0f} MiB; bound {st['max_bytes'] / 2**20:.0f} MiB"


def test_every_bpf_map_has_a_fixed_size():
    probes = REPO / "capture" / "probes"
    sources = sorted(probes.glob("*/program.bpf.c")) + sorted((probes / "include").glob("*.h"))
    assert len(sources) >= 10, sources
    for src in sources:
        text = src.read_text()
        for m in re.finditer(r"BPF_(HASH|TABLE|ARRAY|PERCPU_ARRAY|HISTOGRAM|LRU_HASH|PERF_OUTPUT|RINGBUF_OUTPUT)\(([^;]*)\)",
                             text):
            kind, args = m.group(1), m.group(2)
            if kind in ("PERF_OUTPUT",):
                continue
            last = args.rsplit(",", 1)[-1].strip()
            assert last.isdigit() or re.fullmatch(r"[A-Z_][A-Z0-9_]*", last), (src.name, m.group(0))
