"""The kernel's own accounting of BPF program cost: run time and run count per program.

The kernel counts them only while statistics are enabled. BPF_ENABLE_STATS (Linux 5.8+) turns
them on for as long as the returned file descriptor stays open, so the agent holds one for its
lifetime instead of flipping the global ``kernel.bpf_stats_enabled`` sysctl for the whole node.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())

_stats_fd: int | None = None


def enable() -> bool:
    """Turn on run-time statistics for this process's lifetime. Returns False if unsupported."""
    global _stats_fd
    if _stats_fd is not None:
        return True
    if _SYS_BPF is None:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    attr = (ctypes.c_uint32 * 2)(_BPF_STATS_RUN_TIME, 0)
    fd = libc.syscall(_SYS_BPF, _BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return False
    _stats_fd = fd
    return True


def program_stats(fd: int) -> dict[str, int]:
    """``prog_id``, ``run_time_ns`` and ``run_cnt`` of a loaded program, from /proc fdinfo."""
    out: dict[str, int] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("prog_id", "run_time_ns", "run_cnt"):
                out[key] = int(value.strip())
    return out

