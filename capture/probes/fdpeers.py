"""Peers of TCP connections opened before a probe loaded, read from /proc into a probe's
``fd_peers`` map (the one fdpeers.h fills at connect()): keep-alive pools to an LLM provider or a
database live far longer than a capture, and a probe that only learned peers at connect() would
never see them. Used by tls_http and backend_latency.
"""
from __future__ import annotations

import ctypes
import os
import socket
import sys
from collections.abc import Callable

from capture.identity import ResolvedTarget, target_pids

# Bounds on seeding: processes read, descriptors written.
MAX_SEEDED_PROCESSES = 256
MAX_SEEDED_FDS = 4096


def _hex_addr(text: str) -> bytes:
    """/proc/net/tcp{,6} prints addresses as 32-bit words in host byte order."""
    return b"".join(int(text[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(text), 8))


def established_peers(pid: int) -> dict[int, tuple[int, bytes, int]]:
    """Socket inode -> (family, address bytes, remote port) for the ESTABLISHED TCP client
    sockets of ``pid``'s network namespace: what connect() made. A connection accepted by a
    listener (its local port is one the namespace listens on: a scrape of the service's metrics,
    a client's keep-alive request) is the service answering, not calling out, and is left out."""
    rows: list[tuple[int, int, bytes, int, int]] = []  # (inode, family, remote address, remote port, local port)
    listening: set[int] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) < 10:
                        continue
                    local_port = int(cols[1].rsplit(":", 1)[1], 16)
                    if cols[3] == "0A":  # TCP_LISTEN
                        listening.add(local_port)
                    elif cols[3] == "01":  # TCP_ESTABLISHED
                        addr, port = cols[2].split(":")
                        rows.append((int(cols[9]), family, _hex_addr(addr), int(port, 16), local_port))
        except OSError:
            continue
    return {inode: (family, addr, port) for inode, family, addr, port, local in rows if local not in listening}


def socket_fds(pid: int) -> dict[int, int]:
    """Socket inode -> descriptor for ``pid``'s open sockets."""
    out: dict[int, int] = {}
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in entries:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out[int(link[8:-1])] = int(name)
    return out


def seed_fd_peers(bpf, pids: list[int] | None, select: Callable[[int], bool] | None = None) -> int:
    """Write the peers of open TCP connections into the probe's fd_peers, as fdpeers.h would have
    at their connect(); returns how many. ``pids``: the processes to read (None: every process
    on the node that ``select`` accepts), at most MAX_SEEDED_PROCESSES of them with sockets."""
    candidates = pids if pids is not None else [int(d) for d in os.listdir("/proc") if d.isdigit()]
    table = bpf["fd_peers"]
    seeded = read = 0
    by_netns: dict[str, dict[int, tuple[int, bytes, int]]] = {}  # one TCP table per namespace
    for pid in candidates:
        if select is not None and not select(pid):
            continue
        fds = socket_fds(pid)
        if not fds:
            continue
        read += 1
        if read > MAX_SEEDED_PROCESSES:
            break
        try:
            netns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if netns not in by_netns:
            by_netns[netns] = established_peers(pid)
        for inode, (family, addr, port) in by_netns[netns].items():
            fd = fds.get(inode)
            if fd is None:
                continue
            key = table.Key(tgid=pid, fd=fd)
            leaf = table.Leaf()
            leaf.family, leaf.port = family, port
            ctypes.memmove(leaf.addr, addr, len(addr))
            table[key] = leaf
            seeded += 1
            if seeded >= MAX_SEEDED_FDS:
                return seeded
    return seeded


def seed_scope(bpf, scope: ResolvedTarget | None) -> list[str]:
    """``Probe.seed`` for a probe that times client sockets: the target's processes (every
    process on the node for the unscoped recorder), with a note."""
    seeded = seed_fd_peers(bpf, None if scope is None else target_pids(scope))
    return [f"peers of {seeded} already-open TCP connection(s) read from /proc"] if seeded else []
