"""Fixtures for the capture tests: real eBPF in the real kernel, real cgroups and processes.

These tests need root (CI runs as root). They are never skipped: a machine that cannot load the
probes fails them, loudly.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

from lab import cgroups, faults


@pytest.fixture(scope="session")
def _root_and_clean():
    assert os.geteuid() == 0, "the capture tests load eBPF programs and must run as root"
    cgroups.sweep_stale()
    faults.sweep_stale_tables()
    yield
    assert faults.lab_tables(os.getpid()) == [], "a test left an nftables table behind"


@pytest.fixture(autouse=True)
def _kernel_tests_need_root(request):
    """The kernel tier checks root and sweeps leftovers once per session; the rest of this
    folder (parsers, bounds, the API's refusals) runs as anyone."""
    if request.node.get_closest_marker("kernel") is not None:
        request.getfixturevalue("_root_and_clean")


@pytest.fixture
def workload_cgroup():
    cg = cgroups.WorkloadCgroup("test").create()
    yield cg
    cg.remove()


async def until_armed(agent, n: int = 1, timeout_s: float = 60.0) -> None:
    """Wait until ``n`` of the agent's captures have their probes attached and counting. Compiling
    and attaching takes about a second here and several under load; a fixed sleep races it."""
    deadline = time.monotonic() + timeout_s
    while len(agent.armed) < n:
        assert time.monotonic() < deadline, f"{len(agent.armed)} of {n} captures armed after {timeout_s:g} s"
        await asyncio.sleep(0.05)


def loaded_prog_ids() -> set[int]:
    """Every BPF program loaded in the kernel, as bpftool (not bcc) lists it."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def held_prog_ids(pid: int | None = None) -> set[int]:
    """The programs a process holds open (its fds' ``prog_id``): ours, not another process's
    that happens to load programs at the same time."""
    ids = set()
    fdinfo = f"/proc/{pid or os.getpid()}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def interruptible() -> None:
    """preexec_fn for a bcc tool the test stops with SIGINT: a shell without job control starts
    background commands with SIGINT ignored, children inherit that, and Python then installs
    no KeyboardInterrupt handler, so the tool would never stop. Restore the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
