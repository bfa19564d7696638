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

from capture.identity import pid_cgroup_path, unified_root

PREFIX = "llmslo-lab-"


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

    def pids(self, directory: Path | None = None) -> list[int]:
        try:
            return [int(p) for p in ((directory or self.dir) / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def remove(self, kill: bool = True) -> None:
        """Kill (or move out) what is inside, then remove the directory and any nested ones
        (tests build kubepods-style trees below it), deepest first."""
        if not self.dir.exists():
            return
        dirs = sorted((Path(d) for d, _, _ in os.walk(self.dir)), key=lambda d: -len(d.parts))
        for d in dirs:
            for _ in range(50):
                pids = self.pids(d)
                if not pids:
                    break
                for pid in pids:
                    try:
                        if kill:
                            os.kill(pid, signal.SIGKILL)
                        else:
                            (self.parent / "cgroup.procs").write_text(str(pid))
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

    def __enter__(self) -> "WorkloadCgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


def sweep_stale() -> list[str]:
    """Remove lab cgroups left by runs whose process is gone (e.g. killed with SIGKILL), below
    this process's own cgroup in the unified hierarchy and in the v1 cpu and memory ones."""
    from capture.cgroupfs import v1_mount  # lab imports capture, never the other way

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
            cg = WorkloadCgroup.__new__(WorkloadCgroup)
            cg.parent, cg.dir = parent, d
            cg.remove()
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
        cg = WorkloadCgroup.__new__(WorkloadCgroup)
        cg.parent, cg.dir = self.dir.parent, self.dir
        cg.remove()


def _v1_path(controller: str) -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


class CpuQuota:
    """A CPU-limited cgroup below this process's own cpu cgroup, on whichever hierarchy has the
    cpu controller: v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) on hybrid nodes, else v2
    (``cpu.max``). ``cores=None`` makes the same cgroup without a quota, as a control.

    On v2 a process is in one cgroup only, so the quota cgroup is also the workload's: target
    ``path`` (set on v2). On v1 the process is added here *and* to a unified WorkloadCgroup."""

    def __init__(self, name: str, cores: float | None, period_us: int = 100_000):
        from capture.cgroupfs import v1_mount  # lab imports capture, never the other way

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
        cg = WorkloadCgroup.__new__(WorkloadCgroup)
        cg.parent, cg.dir = self.dir.parent, self.dir
        cg.remove()
