"""Stopping a child process the one way the lab does it: SIGTERM so it can flush and clean up,
SIGKILL when it does not finish in time, and always reaped; and telling whether the owner of a
leftover (the pid in its name) is gone."""
from __future__ import annotations

import subprocess
from pathlib import Path


def owner_gone(owner: str) -> bool:
    """Whether ``owner``, the pid a leftover's name carries, names no running process."""
    return owner.isdigit() and not Path(f"/proc/{owner}").exists()


def stop(proc: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
