"""Lab and test cgroups: created below this process's own cgroup, removed however a run ends.

The workload's cgroup is in the unified (v2) hierarchy: it gives the workload its own cgroup
id, which is what the probes filter on. CPU quota and memory limits are set on whichever
hierarchy has the controller (v1 on hybrid nodes, else v2). Every lab cgroup's name ends in the
creating process's pid, so ``sweep_stale`` can remove what a killed run left in any hierarchy.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from capture.cgroupfs import proc_v1_path, v1_mount
from capture.identity import pid_cgroup_path, unified_root

PREFIX = "llmslo-lab-"


def remove_tree(top: Path, move_to: Path | None = None) -> None:
    """Empty ``top`` and every cgroup below it (SIGKILL their processes, or move them to
    ``move_to``), then remove the directories, deepest first. Any hierarchy, v1 or v2."""
    if not top.exists():
        return
    for d in sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda d: -len(d.parts)):
        for _ in range(50):
            try:
                pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
            except FileNotFoundError:
                pids = []
            if not pids:
                break
            for pid in pids:
                try:
                    if move_to is None:
                        os.kill(pid, signal.SIGKILL)
                    else:
                        (move_to / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass
            time.sleep(0.05)
        for _ in range(50):  # a killed process leaves its cgroup a moment after it dies
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)


class WorkloadCgroup:
    def __init__(self, name: str):
        own = pid_cgroup_path(os.getpid())
        self.parent = unified_root() / own.lstrip("/")
        self.dir = self.parent / f"{PREFIX}{name}-{os.getpid()}"
        # The path as alert labels and capture targets name it: relative to the unified root.
        self.path = "/" + str(self.dir.relative_to(unified_root()))

    def create(self) -> "WorkloadCgroup":
        self.dir.mkdir(exist_ok=True)
        return self

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.dir / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, kill: bool = True) -> None:
        """Kill (or move out to the parent) what is inside, then remove the directory and any
        nested ones (tests build kubepods-style trees below it)."""
        remove_tree(self.dir, move_to=None if kill else self.parent)

    def __enter__(self) -> "WorkloadCgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


def sweep_stale() -> list[str]:
    """Remove lab cgroups left by runs whose process is gone (e.g. killed with SIGKILL), below
    this process's own cgroup in the unified hierarchy and in the v1 cpu and memory ones."""
    removed = []
    parents = [unified_root() / pid_cgroup_path(os.getpid()).lstrip("/")]
    for controller in ("cpu", "memory"):
        mount = v1_mount(controller)
        if mount is not None:
            parents.append(mount / _v1_path(controller).lstrip("/"))
    for parent in parents:
        removed += _sweep(parent)
    return removed


def _sweep(parent: Path) -> list[str]:
    removed = []
    for d in parent.glob(PREFIX + "*"):
        owner = d.name.rsplit("-", 1)[-1]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            remove_tree(d)
            removed.append(str(d))
    return removed


class MemoryLimit:
    """A memory-limited cgroup below this process's own memory cgroup, on whichever hierarchy
    has the memory controller: v1 (``memory.limit_in_bytes``) on hybrid nodes, else v2
    (``memory.max``). Processes added here are OOM-killed past the limit."""

    def __init__(self, name: str, limit_bytes: int):
        self.limit_bytes = limit_bytes
        v1 = Path("/sys/fs/cgroup/memory")
        if (v1 / "memory.limit_in_bytes").exists():
            own = _v1_path("memory")
            self.dir = v1 / own.lstrip("/") / f"{PREFIX}{name}-{os.getpid()}"
            self.limit_file = "memory.limit_in_bytes"
        else:
            self.dir = unified_root() / pid_cgroup_path(os.getpid()).lstrip("/") / f"{PREFIX}{name}-mem-{os.getpid()}"
            self.limit_file = "memory.max"

    def __enter__(self) -> "MemoryLimit":
        self.dir.mkdir(exist_ok=True)
        (self.dir / self.limit_file).write_text(str(self.limit_bytes))
        return self

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc) -> None:
        remove_tree(self.dir)


def _v1_path(controller: str) -> str:
    """This process's cgroup in ``controller``'s v1 hierarchy."""
    return proc_v1_path(os.getpid(), controller) or "/"


class CpuQuota:
    """A CPU-limited cgroup below this process's own cpu cgroup, on whichever hierarchy has the
    cpu controller: v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) on hybrid nodes, else v2
    (``cpu.max``). ``cores=None`` makes the same cgroup without a quota, as a control.

    On v2 a process is in one cgroup only, so the quota cgroup is also the workload's: target
    ``path`` (set on v2). On v1 the process is added here *and* to a unified WorkloadCgroup."""

    def __init__(self, name: str, cores: float | None, period_us: int = 100_000):
        self.cores, self.period_us = cores, period_us
        self.quota_us = None if cores is None else max(1000, round(cores * period_us))
        mount = v1_mount("cpu")
        leaf = f"{PREFIX}{name}-cpu-{os.getpid()}"
        self.path: str | None = None
        if mount is not None and (mount / "cpu.cfs_quota_us").exists():
            self.version = 1
            self.dir = mount / _v1_path("cpu").lstrip("/") / leaf
        else:
            self.version = 2
            self.dir = unified_root() / pid_cgroup_path(os.getpid()).lstrip("/") / leaf
            self.path = "/" + str(self.dir.relative_to(unified_root()))

    def __enter__(self) -> "CpuQuota":
        self.dir.mkdir(exist_ok=True)
        try:
            if self.version == 1:
                (self.dir / "cpu.cfs_period_us").write_text(str(self.period_us))
                (self.dir / "cpu.cfs_quota_us").write_text(str(self.quota_us or -1))
            else:
                try:  # the cpu controller must be enabled for the parent's children
                    (self.dir.parent / "cgroup.subtree_control").write_text("+cpu")
                except OSError:
                    pass
                if not (self.dir / "cpu.max").exists():
                    raise RuntimeError(f"{self.dir}: no cpu.max; enable the cpu controller in "
                                       f"{self.dir.parent}/cgroup.subtree_control")
                (self.dir / "cpu.max").write_text(f"{self.quota_us or 'max'} {self.period_us}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exc) -> None:
        remove_tree(self.dir)
