"""Who a capture is about: cgroup paths and ids, processes, and the owners of TCP ports.

Cgroup ids are inode numbers in the unified (v2) hierarchy: that is what the kernel's
bpf_get_current_cgroup_id() returns, on pure v2 nodes and on hybrid v1/v2 nodes alike.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from capture.schemas import CaptureTarget, RequestError


def unified_root() -> Path:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` or ``.../unified`` on hybrid)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    raise RuntimeError("no cgroup2 hierarchy is mounted; the agent needs one for cgroup ids")


def cgroup_dir(path: str) -> Path:
    """A cgroup path relative to the unified root (``/kubepods.slice/...``) as a directory."""
    root = unified_root()
    p = Path(path)
    if p.is_absolute() and root in p.parents or p == root:
        return p
    return root / path.lstrip("/")


def cgroup_id(path: str) -> int:
    d = cgroup_dir(path)
    try:
        return os.stat(d).st_ino
    except FileNotFoundError:
        raise RequestError(f"cgroup {path!r} does not exist on this node") from None


def pid_cgroup_path(pid: int) -> str:
    """The process's path in the unified hierarchy (the ``0::`` line of /proc/PID/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except FileNotFoundError:
        raise RequestError(f"pid {pid} does not exist on this node") from None
    return "/"


def process_identity(pid: int) -> dict:
    """pid, comm and executable, for reports (best effort: the process may be gone)."""
    ident: dict = {"pid": pid}
    try:
        ident["comm"] = Path(f"/proc/{pid}/comm").read_text().strip()
        ident["exe"] = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    return ident


def listening_port_owners(port: int) -> set[int]:
    """Pids holding a TCP socket bound to ``port`` (what ``ss -ltnp`` shows)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":  # LISTEN
                        inodes.add(inode)
        except FileNotFoundError:
            continue
    owners: set[int] = set()
    if not inodes:
        return owners
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) in wanted:
                        owners.add(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return owners


@dataclass
class ResolvedTarget:
    """A target turned into what the kernel filters on, plus what the baseline can use."""

    cgroup_ids: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    # cgroups whose recorder history stands for this target's baseline: the named cgroups and
    # the non-root cgroups of the named processes. The root cgroup holds everything on a plain
    # host, so it is never used as a process's baseline.
    baseline_cgroups: set[int] = field(default_factory=set)
    processes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resolve(target: CaptureTarget) -> ResolvedTarget:
    r = ResolvedTarget(ports=set(target.ports))
    for path in target.cgroups:
        cid = cgroup_id(path)
        r.cgroup_ids.add(cid)
        r.baseline_cgroups.add(cid)
    pids = set(target.pids)
    for port in target.ports:
        owners = listening_port_owners(port)
        if owners:
            r.notes.append(f"port {port} is served by pid(s) {sorted(owners)}")
        pids |= owners
    root_id = os.stat(unified_root()).st_ino
    for pid in sorted(pids):
        path = pid_cgroup_path(pid)
        r.pids.add(pid)
        r.processes.append(process_identity(pid) | {"cgroup": path})
        cid = cgroup_id(path)
        if cid != root_id:
            r.baseline_cgroups.add(cid)
    return r
