"""Real, reversible faults for the demo and the tests: nftables packet loss and CPU contention.

Every fault is a context manager that undoes itself however the block ends; the nftables table
and the busy processes are named after the owning process so a later run can sweep what a
SIGKILLed run left behind.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.cgroups import WorkloadCgroup

TABLE_PREFIX = "llmslo_lab_"


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, check=False)


class PacketLoss:
    """Drop ``percent`` % of TCP packets to and from ``port`` (loopback included), at random.

    nftables ``numgen random`` rather than netem: this kernel has no netem (KERNEL.md)."""

    def __init__(self, port: int, percent: int):
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        self.port, self.percent = int(port), int(percent)
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{self.port}"

    def __enter__(self) -> "PacketLoss":
        ruleset = f"""
table inet {self.table} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        tcp dport {self.port} numgen random mod 100 < {self.percent} drop
        tcp sport {self.port} numgen random mod 100 < {self.percent} drop
    }}
}}
"""
        r = _nft("-f", "-", stdin=ruleset)
        if r.returncode != 0:
            raise RuntimeError(f"nft refused the loss rule: {r.stderr.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        _nft("delete", "table", "inet", self.table)


def lab_tables(owner: int | None = None) -> list[str]:
    """The lab's nftables tables on this host, or only those created by process ``owner``."""
    r = _nft("list", "tables")
    names = [line.split()[-1] for line in r.stdout.splitlines() if TABLE_PREFIX in line]
    if owner is not None:
        names = [n for n in names if n.startswith(f"{TABLE_PREFIX}{owner}_")]
    return names


def sweep_stale_tables() -> list[str]:
    removed = []
    for table in lab_tables():
        owner = table[len(TABLE_PREFIX):].split("_")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _nft("delete", "table", "inet", table)
            removed.append(table)
    return removed


BUSY_LOOP = "import os,sys\nos.nice(0)\nwhile True: pass\n"


class CpuContention:
    """``workers`` busy processes inside the workload's own cgroup: they compete with it for CPU."""

    def __init__(self, cgroup: WorkloadCgroup, workers: int):
        self.cgroup, self.workers = cgroup, workers
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "CpuContention":
        try:
            for _ in range(self.workers):
                p = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
                self.procs.append(p)
                self.cgroup.add(p.pid)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()
