"""Lab and test cgroups: created below this process's own cgroup, removed however a run ends.

Only the unified (v2) hierarchy is used here: it gives the workload its own cgroup id, which is
what the probes filter on. (CPU quota and memory limits, on v1 or v2, come with the lab issue.)
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
    """Remove lab cgroups left by runs whose process is gone (e.g. killed with SIGKILL)."""
    removed = []
    parent = unified_root() / pid_cgroup_path(os.getpid()).lstrip("/")
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
