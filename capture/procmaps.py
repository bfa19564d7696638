"""Which shared libraries a process has mapped, as paths the agent can attach uprobes to.

A containerised process maps its image's libc or libssl, not the host's: the path in
``/proc/PID/maps`` is inside the container's mount namespace, and ``/proc/PID/root/<path>``
reaches the same file from the agent. Uprobes attach to a file (inode), so one attachment
covers every process that maps that file; libraries are therefore deduplicated by (device,
inode), and a process in the target still has to pass the in-kernel scope filter.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

# Bounds on a node-wide scan (the recorder's case): processes read, libraries returned.
MAX_PROCESSES = 4096
MAX_LIBRARIES = 32


@dataclass(frozen=True)
class Library:
    path: str  # as the agent opens it: /proc/PID/root/<path in the process's namespace>
    mapped_as: str  # the path in the process's own mount namespace
    pid: int  # one process that maps it
    dev_inode: tuple[int, int]


def mapped_libraries(pid: int, pattern: re.Pattern) -> list[str]:
    """The paths (in the process's namespace) of files mapped by ``pid`` whose base name
    matches ``pattern``."""
    found: dict[str, None] = {}
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or not parts[5].startswith("/"):
                    continue
                path = parts[5].rstrip("\n")
                if path.endswith(" (deleted)") or not pattern.search(os.path.basename(path)):
                    continue
                found[path] = None
    except OSError:
        return []
    return list(found)


def find_libraries(pids: list[int] | None, pattern: re.Pattern,
                   known: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset()) -> list[Library]:
    """The distinct files matching ``pattern`` mapped by ``pids`` (None: every process), leaving
    out those in ``known`` (by device and inode: the ones already probed)."""
    if pids is None:
        pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())[:MAX_PROCESSES]
    libs: dict[tuple[int, int], Library] = {}
    for pid in pids:
        for mapped_as in mapped_libraries(pid, pattern):
            path = f"/proc/{pid}/root{mapped_as}"
            try:
                st = os.stat(path)
            except OSError:
                continue
            # Identified by the stat of the path the uprobe will open (the maps' device numbers
            # can differ from stat's on overlay file systems).
            key = (st.st_dev, st.st_ino)
            if key not in libs and key not in known:
                libs[key] = Library(path=path, mapped_as=mapped_as, pid=pid, dev_inode=key)
        if len(libs) >= MAX_LIBRARIES:
            break
    return list(libs.values())
