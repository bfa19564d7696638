"""What the kernel already counts per cgroup, read from cgroupfs: where a cgroup's files are, on
cgroup v2 and on hybrid v1/v2 nodes, and how to parse them. The cgroupfs probes
(``cpu_throttle``, ``memory_pressure``) say which files they read and what the figures mean.

A cgroup is named by its id, the inode of its directory in the unified (v2) hierarchy, as the BPF
probes see it. On a pure v2 node every file is in that directory (``cpu.max``, ``cpu.stat``,
``memory.max``, ``memory.events``, ``*.pressure``). On a hybrid node the unified directory holds
only the pressure (PSI) files and CPU usage; quotas and memory limits are in the v1 hierarchy of
their controller. A unified cgroup's v1 directory is where its member processes are charged
(``/proc/PID/cgroup``, when they all agree), else the same relative path under the controller's
mount (how systemd and kubelet lay hybrid nodes out). Once found it is remembered, so a cgroup
whose last process died (an OOM kill) is still read from the same place.

Node-wide (the recorder), the unified hierarchy is walked breadth first, at most
``MAX_CGROUPS`` directories.
"""
from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capture.identity import cgroup_dir, cgroup_path_of, walk_cgroups

MAX_CGROUPS = 2000
# Member processes whose v1 cgroup is looked up to place a unified cgroup in a v1 hierarchy.
MEMBERS_CHECKED = 8
_CACHE_SIZE = 4096
# A v1 limit at or above this is "no limit" (the kernel shows PAGE_COUNTER_MAX pages in bytes).
UNLIMITED_BYTES = 1 << 62


@dataclass(frozen=True)
class Cgroup:
    """One unified-hierarchy cgroup: its id, its path relative to the unified root, its directory,
    and whether it has child cgroups (hierarchical files of a parent repeat its children's)."""

    id: int
    path: str
    dir: Path
    leaf: bool

    def v1_dir(self, controller: str) -> Path | None:
        """The cgroup's directory in ``controller``'s v1 hierarchy, or None (pure v2 node, or no
        counterpart found)."""
        return _v1_dir(self, controller)


# --- files --------------------------------------------------------------------------------------

def read_text(path: Path | str) -> str | None:
    """A cgroupfs or procfs file's text, or None when it is missing (the cgroup or process is
    gone, or the kernel has no such file). os.open/os.read: about half the cost of open()."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_keyed(path: Path) -> dict[str, int] | None:
    """A flat keyed file (``cpu.stat``, ``memory.events``, ``memory.oom_control``): name -> int."""
    text = read_text(path)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def read_int(path: Path) -> int | None:
    """A single-value file; ``max`` (v2's "no limit") reads as None, like a missing file."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def read_psi(path: Path) -> dict[str, int] | None:
    """A pressure file (``cpu.pressure``): {"some": total us, "full": total us}."""
    text = read_text(path)
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field_ in rest.split():
            if field_.startswith("total=") and field_[6:].isdigit():
                out[kind] = int(field_[6:])
    return out


def pressure(cg: Cgroup, resource: str) -> dict[str, int]:
    """``<resource>_pressure_some_us`` / ``_full_us`` from the unified directory's PSI file, for
    leaf cgroups only (a parent's stall time repeats its children's, and results are summed over
    the cgroups in scope); {} where the kernel has no such file."""
    if not cg.leaf or (psi := read_psi(cg.dir / f"{resource}.pressure")) is None:
        return {}
    return {f"{resource}_pressure_some_us": psi.get("some", 0), f"{resource}_pressure_full_us": psi.get("full", 0)}


# --- v1 hierarchies -----------------------------------------------------------------------------

@functools.cache
def v1_mount(controller: str) -> Path | None:
    """Mount point of ``controller``'s v1 hierarchy (e.g. ``/sys/fs/cgroup/memory`` or
    ``/sys/fs/cgroup/cpu,cpuacct``), or None when the controller is not on v1 (pure v2)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[2] == "cgroup" and controller in parts[3].split(","):
                    return Path(parts[1])
    except OSError:
        pass
    return None


def proc_v1_path(pid: int, controller: str) -> str | None:
    """The process's cgroup path in ``controller``'s v1 hierarchy (None: not on v1)."""
    text = read_text(f"/proc/{pid}/cgroup")
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            return parts[2]
    return None


def member_pids(directory: Path, limit: int = MEMBERS_CHECKED) -> list[int]:
    text = read_text(directory / "cgroup.procs") or ""
    return [int(p) for p in text.split()[:limit]]


_lock = threading.Lock()
# (cgroup id, path, controller) -> v1 directory: learned while processes lived there.
_v1_cache: OrderedDict[tuple[int, str, str], Path] = OrderedDict()
# cgroup id -> path, so that a scoped sample does not walk the hierarchy each time.
_path_cache: OrderedDict[int, str] = OrderedDict()


def _remember(cache: OrderedDict, key, value) -> None:
    with _lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)


def _v1_dir(cg: Cgroup, controller: str) -> Path | None:
    mount = v1_mount(controller)
    if mount is None:
        return None
    if cg.path == "/":
        return mount
    key = (cg.id, cg.path, controller)
    # Where the member processes are charged, when they all are in one place.
    where = {w for w in (proc_v1_path(pid, controller) for pid in member_pids(cg.dir)) if w is not None}
    if len(where) == 1:
        d = mount / where.pop().lstrip("/")
        if d.is_dir():
            _remember(_v1_cache, key, d)
            return d
    with _lock:
        cached = _v1_cache.get(key)
    if cached is not None and cached.is_dir():
        return cached
    same = mount / cg.path.lstrip("/")
    return same if same.is_dir() else None


# --- which cgroups ------------------------------------------------------------------------------

def _has_children(d: Path) -> bool:
    try:
        with os.scandir(d) as it:
            return any(e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def locate(cgid: int, hint: str | None = None) -> Cgroup | None:
    """The cgroup with id ``cgid`` (None when it no longer exists)."""
    with _lock:
        cached = _path_cache.get(cgid)
    path = cgroup_path_of(cgid, hint or cached)
    if path is None:
        return None
    _remember(_path_cache, cgid, path)
    d = cgroup_dir(path)
    return Cgroup(id=cgid, path=path, dir=d, leaf=not _has_children(d))


def walk(max_cgroups: int = MAX_CGROUPS) -> list[Cgroup]:
    """Every cgroup of the unified hierarchy, breadth first (shallow ones first), at most
    ``max_cgroups``."""
    return [Cgroup(id=c.id, path=c.path, dir=c.dir, leaf=c.leaf) for c in walk_cgroups("/", max_cgroups)]


# --- snapshots ----------------------------------------------------------------------------------

@dataclass
class Figures:
    """One cgroup's readings: cumulative counters, point-in-time gauges, and whether the cgroup
    has a limit (node-wide, only limited cgroups report gauges, to keep the recorder small)."""

    counters: dict[str, int]
    gauges: dict[str, float]
    limited: bool = False


def snapshot(cgroup_ids: set[int] | None, read: Callable[[Cgroup], Figures]) -> dict[tuple, float]:
    """A cgroupfs probe's raw snapshot: ``read`` applied to each cgroup in ``cgroup_ids`` (None:
    the walked hierarchy), keyed ("c", id, name) and ("g", id, name). A cgroup that is gone or
    has no such files contributes nothing; missing files never raise."""
    node_wide = cgroup_ids is None
    cgroups = walk() if cgroup_ids is None else [c for c in (locate(i) for i in sorted(cgroup_ids)) if c]
    raw: dict[tuple, float] = {}
    for cg in cgroups:
        fig = read(cg)
        for name, count in fig.counters.items():
            if count or not node_wide:
                raw[("c", cg.id, name)] = count
        if fig.limited or not node_wide:
            for name, value in fig.gauges.items():
                raw[("g", cg.id, name)] = value
    return raw
