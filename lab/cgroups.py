"""Lab and test cgroups: created below this process's own cgroup, removed however a run ends.

The workload's cgroup is in the unified (v2) hierarchy: it gives the workload its own cgroup
id, which is what the probes filter on. CPU quota and memory limits are set on whichever
hierarchy has the controller (v1 on hybrid nodes, else v2). Every lab cgroup's name ends in the
creating process's pid, so ``sweep_stale`` can remove what a killed run left in any hierarchy.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from capture.cgroupfs import proc_v1_path, v1_mount
from capture.identity import pid_cgroup_path, unified_root
from lab import process

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

    def create(self) -> WorkloadCgroup:
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

    def __enter__(self) -> WorkloadCgroup:
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
        if process.owner_gone(owner):
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

    def __enter__(self) -> MemoryLimit:
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

    def __enter__(self) -> CpuQuota:
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


class ServiceCgroups:
    """Every cgroup one lab service lives in, created empty and unlimited, with limits set and
    lifted at runtime (the fault injectors' knobs):

    - ``unified``: its own unified (v2) cgroup, which names it (cgroup id, alert label, capture
      target), as :class:`WorkloadCgroup`;
    - CPU quota and memory limit: on hybrid nodes a v1 ``cpu`` and a v1 ``memory`` cgroup beside
      it (``cpu.cfs_quota_us``, ``memory.limit_in_bytes``), else the unified cgroup itself
      (``cpu.max``, ``memory.max``, once the parent delegates the controllers).

    ``enter()`` is a ``preexec_fn``: the child joins all of them before it execs, so no instant of
    the service runs outside. The names end in this process's pid, so :func:`sweep_stale` removes
    what a killed run left, in every hierarchy.
    """

    PERIOD_US = 100_000

    def __init__(self, name: str):
        self.unified = WorkloadCgroup(name)
        self.path = self.unified.path
        self.dir = self.unified.dir
        cpu_mount, mem_mount = v1_mount("cpu"), v1_mount("memory")
        self.cpu_v1 = cpu_mount is not None and (cpu_mount / "cpu.cfs_quota_us").exists()
        self.memory_v1 = mem_mount is not None and (mem_mount / "memory.limit_in_bytes").exists()
        self.cpu_dir = (cpu_mount / _v1_path("cpu").lstrip("/") / f"{PREFIX}{name}-cpu-{os.getpid()}"
                        if cpu_mount is not None and self.cpu_v1 else self.dir)
        self.memory_dir = (mem_mount / _v1_path("memory").lstrip("/") / f"{PREFIX}{name}-mem-{os.getpid()}"
                           if mem_mount is not None and self.memory_v1 else self.dir)
        self.memory_target: int | None = None  # the limit asked for (a restart applies it in full)

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys([self.dir, self.cpu_dir, self.memory_dir]))

    def create(self) -> ServiceCgroups:
        try:
            for d in self.dirs:
                d.mkdir(exist_ok=True)
            if not (self.cpu_v1 and self.memory_v1):
                try:  # pure v2: the parent must hand the controllers down (not possible everywhere)
                    (self.dir.parent / "cgroup.subtree_control").write_text(
                        " ".join(c for c, v1 in (("+cpu", self.cpu_v1), ("+memory", self.memory_v1)) if not v1))
                except OSError:
                    pass
        except BaseException:
            self.remove()
            raise
        return self

    def enter(self) -> None:
        """Join every cgroup of the service (from a ``preexec_fn``: the child, before exec)."""
        me = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(me)

    def add(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return self.unified.pids()

    # -- CPU quota

    def set_cpu_quota(self, cores: float | None) -> None:
        """At most ``cores`` CPUs for the whole service (None: no quota)."""
        quota = None if cores is None else max(1000, round(cores * self.PERIOD_US))
        if self.cpu_v1:
            (self.cpu_dir / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(str(quota if quota is not None else -1))
        else:
            self._v2_file("cpu.max").write_text(f"{quota or 'max'} {self.PERIOD_US}")

    def cpu_quota(self) -> float | None:
        """The CPUs the quota allows, read back from the kernel (None: no quota)."""
        if self.cpu_v1:
            quota = int((self.cpu_dir / "cpu.cfs_quota_us").read_text())
            period = int((self.cpu_dir / "cpu.cfs_period_us").read_text())
        else:
            q, p = self._v2_file("cpu.max").read_text().split()
            quota, period = (-1 if q == "max" else int(q)), int(p)
        return None if quota < 0 else quota / period

    def cpu_stat(self) -> dict[str, int]:
        """``cpu.stat`` of the quota's cgroup (v1: nr_throttled, throttled_time ns; v2: throttled_usec)."""
        text = (self.cpu_dir / "cpu.stat").read_text()
        return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}

    # -- memory limit

    def set_memory_limit(self, limit_bytes: int | None) -> int | None:
        """Limit the service's memory to ``limit_bytes`` (None: no limit); past it the kernel
        reclaims, then OOM-kills. Returns the limit now in force.

        v2 accepts any limit (it reclaims and OOM-kills to get under it). v1 refuses a limit below
        what it cannot reclaim at once (EBUSY): the limit is then lowered step by step as far as
        the kernel accepts (the service runs at the edge, where its next allocations fail or get
        it OOM-killed), and :meth:`apply_memory_target` puts the full limit in place when the
        cgroup is empty (a restart after the OOM kill)."""
        self.memory_target = limit_bytes
        if not self.memory_v1:
            self._v2_file("memory.max").write_text("max" if limit_bytes is None else str(limit_bytes))
            return limit_bytes
        limit_file = self.memory_dir / "memory.limit_in_bytes"
        if limit_bytes is None:
            limit_file.write_text("-1")
            return None
        try:
            limit_file.write_text(str(limit_bytes))
            return limit_bytes
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
        page = os.sysconf("SC_PAGE_SIZE")

        def usage_now() -> int:
            return int((self.memory_dir / "memory.usage_in_bytes").read_text()) // page * page + page

        candidate = usage_now()
        step = max(page, (candidate - limit_bytes) // 20 // page * page)
        in_force = None
        for _ in range(40):
            try:
                limit_file.write_text(str(candidate))
                in_force = candidate
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                if in_force is not None:
                    break  # as low as the kernel can reclaim to now
                candidate = usage_now()  # usage grew between reading and writing: from the top again
                continue
            if candidate <= limit_bytes:
                break
            candidate = max(limit_bytes, candidate - step)
        return in_force

    def apply_memory_target(self) -> None:
        """Put the requested limit in place in full (call while the cgroup is empty)."""
        if self.memory_target is not None:
            self.set_memory_limit(self.memory_target)

    def memory_limit(self) -> int | None:
        if self.memory_v1:
            value = int((self.memory_dir / "memory.limit_in_bytes").read_text())
            return None if value >= 1 << 62 else value
        text = self._v2_file("memory.max").read_text().strip()
        return None if text == "max" else int(text)

    def memory_events(self) -> dict[str, int]:
        """Limit hits and OOM kills: v1 ``failcnt`` and ``memory.oom_control``'s ``oom_kill``;
        v2 ``memory.events`` (``max``, ``oom_kill``)."""
        if self.memory_v1:
            oom = dict(line.split() for line in (self.memory_dir / "memory.oom_control").read_text().splitlines())
            return {"max": int((self.memory_dir / "memory.failcnt").read_text()),
                    "oom_kill": int(oom.get("oom_kill", 0))}
        events = dict(line.split() for line in self._v2_file("memory.events").read_text().splitlines())
        return {"max": int(events.get("max", 0)), "oom_kill": int(events.get("oom_kill", 0))}

    def _v2_file(self, name: str) -> Path:
        f = self.dir / name
        if not f.exists():
            raise RuntimeError(f"{f} does not exist: the {name.split('.')[0]} controller is not delegated to "
                               f"{self.dir.parent} (its cgroup.subtree_control)")
        return f

    def remove(self) -> None:
        """Kill what is inside every cgroup of the service and remove them."""
        for d in self.dirs:
            remove_tree(d)

    def __enter__(self) -> ServiceCgroups:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()
