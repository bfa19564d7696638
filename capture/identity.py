"""Who a capture is about: cgroup paths and ids, processes, and the owners of TCP ports.

Cgroup ids are inode numbers in the unified (v2) hierarchy: that is what the kernel's
bpf_get_current_cgroup_id() returns, on pure v2 nodes and on hybrid v1/v2 nodes alike.
"""
from __future__ import annotations

import functools
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from capture.schemas import CaptureTarget, RequestError


@functools.cache
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


# Resolving ports to processes reads /proc/*/fd: at most this many descriptors per resolution,
# and for at most RESOLVE_DEADLINE_S (a node with a million open files must not stall a capture).
MAX_FD_SCAN = 200_000
RESOLVE_DEADLINE_S = 5.0


def listening_port_owners(port: int) -> set[int]:
    """Pids holding a TCP socket bound to ``port`` (what ``ss -ltnp`` shows)."""
    return port_owners([port]).get(port, set())


def port_owners(ports: list[int], max_files: int = MAX_FD_SCAN,
                deadline_s: float = RESOLVE_DEADLINE_S) -> dict[int, set[int]]:
    """For each port, the pids holding a TCP socket listening on it: one pass over the socket
    tables and one over /proc/*/fd for all the ports, bounded in descriptors read and in time
    (RequestError when the bound is hit before every port was found)."""
    wanted_ports = set(ports)
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    p = int(local.rsplit(":", 1)[1], 16)
                    if p in wanted_ports and state == "0A":  # LISTEN
                        inode_port[f"socket:[{inode}]"] = p
        except FileNotFoundError:
            continue
    owners: dict[int, set[int]] = {}
    if not inode_port:
        return owners
    stop_at = time.monotonic() + deadline_s
    scanned = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with os.scandir(f"/proc/{entry.name}/fd") as fds:
                for fd in fds:
                    scanned += 1
                    try:
                        port = inode_port.get(os.readlink(fd.path))
                    except OSError:
                        continue
                    if port is not None:
                        owners.setdefault(port, set()).add(int(entry.name))
        except OSError:
            continue
        if scanned > max_files or time.monotonic() > stop_at:
            if set(owners) != set(inode_port.values()):
                raise RequestError(f"ports: finding the processes behind port(s) {sorted(wanted_ports)} read "
                                   f"{scanned} file descriptors without finding them all; name the pid or "
                                   "cgroup instead")
            break
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
    workloads: list[dict] = field(default_factory=list)  # CgroupIdentity of each cgroup involved
    notes: list[str] = field(default_factory=list)


# At most this many cgroups below a named one are put in scope (the filter map holds 64).
MAX_DESCENDANTS = 48


@dataclass(frozen=True)
class CgroupDir:
    """One directory of the unified hierarchy met by ``walk_cgroups``."""

    path: str  # relative to the unified root, "/..."
    dir: Path
    id: int  # its inode: the cgroup id the BPF probes see
    leaf: bool  # no child cgroups


def walk_cgroups(top: str = "/", limit: int = 2000) -> list[CgroupDir]:
    """``top`` and the cgroups below it, breadth first (shallow ones first), at most ``limit``;
    nothing when ``top`` does not exist. Directories removed during the walk are skipped."""
    start = "/" + top.strip("/")
    out: list[CgroupDir] = []
    queue: deque[tuple[Path, str]] = deque([(cgroup_dir(start) if start != "/" else unified_root(), start)])
    while queue and len(out) < limit:
        d, path = queue.popleft()
        try:
            ino = os.stat(d).st_ino
            with os.scandir(d) as it:
                children = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        out.append(CgroupDir(path=path, dir=d, id=ino, leaf=not children))
        for name in children:
            queue.append((d / name, path.rstrip("/") + "/" + name))
    return out


def descendants(path: str) -> list[str]:
    """``path`` and the cgroups below it (breadth first, bounded by MAX_DESCENDANTS)."""
    return [c.path for c in walk_cgroups(path, MAX_DESCENDANTS)] or ["/" + path.strip("/")]


# How many cgroup directories a search for pod and container cgroups may visit.
MAX_KUBEPODS_WALK = 20000


def kube_cgroups(pod_uids: list[str], container_ids: list[str]) -> tuple[list[str], list[str]]:
    """The cgroup paths on this node for pods (their pod cgroup) and containers (their
    container cgroup), and a note for each one that is not here.

    A pod with some of its containers named stands for those containers only. The search walks
    the unified hierarchy breadth first (kubelet's tree may sit anywhere: ``/kubepods.slice``,
    under a kind node's own cgroup, ...), bounded by MAX_KUBEPODS_WALK directories."""
    pod_dirs: dict[str, str] = {}
    container_dirs: dict[str, tuple[str, str | None]] = {}  # id -> (path, its pod's UID)
    for c in walk_cgroups("/", MAX_KUBEPODS_WALK):
        ident = parse_cgroup_path(c.path)
        if ident.container_id:
            container_dirs.setdefault(ident.container_id, (c.path, ident.pod_uid))
        elif ident.pod_uid:
            pod_dirs.setdefault(ident.pod_uid, c.path)
    paths: list[str] = []
    notes: list[str] = []
    named_pods = set()
    for cid in container_ids:
        # a full id, or a unique prefix of one (as `podman ps` prints it)
        matches = [full for full in container_dirs if full.startswith(cid)]
        if len(matches) == 1:
            path, pod_uid = container_dirs[matches[0]]
            paths.append(path)
            if pod_uid:
                named_pods.add(pod_uid)
        elif matches:
            notes.append(f"container id {cid} is the prefix of {len(matches)} containers on this node; "
                         "give more of it")
        else:
            notes.append(f"container {cid[:12]} has no cgroup on this node")
    for uid in pod_uids:
        if uid in named_pods:
            continue
        if uid in pod_dirs:
            paths.append(pod_dirs[uid])
        else:
            notes.append(f"pod {uid} has no cgroup on this node")
    return paths, notes


def resolve(target: CaptureTarget) -> ResolvedTarget:
    r = ResolvedTarget(ports=set(target.ports))
    cgroups = list(target.cgroups)
    if target.pods or target.containers:
        found, notes = kube_cgroups(target.pods, target.containers)
        if not found:
            raise RequestError("; ".join(notes))
        cgroups += found
        r.notes += notes
    for path in cgroups:
        # A named cgroup covers its descendants: a pod's processes live in its containers'
        # cgroups, and the kernel reports the leaf's id.
        for sub in descendants(path):
            cid = cgroup_id(sub)
            r.cgroup_ids.add(cid)
            r.baseline_cgroups.add(cid)
            r.workloads.append(parse_cgroup_path(sub, cid).to_dict())
    pids = set(target.pids)
    owners_by_port = port_owners(target.ports) if target.ports else {}
    for port in target.ports:
        owners = owners_by_port.get(port, set())
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
            if not any(w["id"] == cid for w in r.workloads):
                r.workloads.append(parse_cgroup_path(path, cid).to_dict())
    return r


def target_pids(scope: ResolvedTarget) -> list[int]:
    """The scope's own pids plus the processes directly in each of its cgroups (the in-kernel
    filter matches a process's own cgroup id, and a named cgroup's descendants are in the scope
    already): the processes whose libraries a uprobe probe must attach to."""
    pids = set(scope.pids)
    hints = {w.get("id"): w.get("path") for w in scope.workloads}
    for cgid in scope.cgroup_ids:
        path = cgroup_path_of(cgid, hints.get(cgid))
        if path is None:
            continue
        try:
            pids.update(int(p) for p in (cgroup_dir(path) / "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(pids)


# --- container and pod identity from a cgroup path ----------------------------------------------
# kubelet names pod cgroups after the pod UID and QoS class, and the container runtime names the
# container's cgroup after the container id. Both the systemd and the cgroupfs cgroup drivers:
#   systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
#             cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
#   cgroupfs: /kubepods/burstable/pod<uid>/<id>     (guaranteed pods sit right under kubepods)
# Containers outside Kubernetes, as their runtimes name them:
#   podman:   /libpod_parent/libpod-<id> (cgroupfs manager) | /machine.slice/libpod-<id>.scope
#             (systemd manager); its monitor's cgroup is libpod-conmon-<id>[.scope], not the container
#   docker:   /docker/<id> (cgroupfs driver) | /system.slice/docker-<id>.scope (systemd driver)
_CONTAINER_SCOPE = re.compile(r"^(cri-containerd|crio|docker|libpod)-([0-9a-f]{64})(?:\.scope)?$")
_BARE_CONTAINER = re.compile(r"^([0-9a-f]{64})$")
_POD_SYSTEMD = re.compile(r"^kubepods(?:-(besteffort|burstable))?-pod([0-9a-f_]{36})\.slice$")
_POD_CGROUPFS = re.compile(r"^pod([0-9a-f-]{36})$")
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", "libpod": "podman"}


@dataclass
class CgroupIdentity:
    """What a cgroup path says about the workload: container, runtime, pod UID, QoS class."""

    id: int
    path: str
    container_id: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None
    qos: str | None = None
    driver: str | None = None  # "systemd" or "cgroupfs" (kubelet's cgroup driver)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_cgroup_path(path: str, cgid: int = 0) -> CgroupIdentity:
    ident = CgroupIdentity(id=cgid, path=path)
    parts = [p for p in path.split("/") if p]
    if "kubepods.slice" in parts or any(p.startswith("kubepods-") for p in parts):
        ident.driver = "systemd"
    elif "kubepods" in parts:
        ident.driver = "cgroupfs"
    for i, part in enumerate(parts):
        if m := _CONTAINER_SCOPE.match(part):
            ident.runtime, ident.container_id = _RUNTIMES[m.group(1)], m.group(2)
        elif ident.driver == "cgroupfs" and ident.pod_uid and (m := _BARE_CONTAINER.match(part)):
            ident.container_id = m.group(1)
        elif i and parts[i - 1] == "docker" and (m := _BARE_CONTAINER.match(part)):
            ident.runtime, ident.container_id = "docker", m.group(1)
        elif m := _POD_SYSTEMD.match(part):
            ident.pod_uid = m.group(2).replace("_", "-")
            ident.qos = m.group(1) or "guaranteed"
        elif ident.driver == "cgroupfs" and (m := _POD_CGROUPFS.match(part)):
            ident.pod_uid = m.group(1)
            parent = parts[i - 1] if i else ""
            ident.qos = parent if parent in ("besteffort", "burstable") else "guaranteed"
    return ident


def cgroup_path_of(cgid: int, hint: str | None = None) -> str | None:
    """The unified-hierarchy path whose directory inode is ``cgid`` (a walk; ``hint`` first)."""
    root = unified_root()
    if hint:
        try:
            if os.stat(cgroup_dir(hint)).st_ino == cgid:
                return hint
        except OSError:
            pass
    if os.stat(root).st_ino == cgid:
        return "/"
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            try:
                if os.stat(full).st_ino == cgid:
                    return "/" + os.path.relpath(full, root)
            except OSError:
                continue
    return None
