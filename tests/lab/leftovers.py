"""What a lab run can leave behind, named after the process that owned it: cgroups in every
hierarchy, temporary directories and network namespaces (nft tables: ``lab.faults.lab_tables``;
processes: ``lab.harness.lab_processes``)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from capture.cgroupfs import v1_mount
from capture.identity import unified_root


def lab_cgroups(owner: int) -> list[Path]:
    """Lab cgroup directories named after ``owner``, in the unified, cpu and memory hierarchies."""
    found = []
    for root in (unified_root(), v1_mount("cpu"), v1_mount("memory")):
        if root is None:
            continue
        for d, subdirs, _ in os.walk(root):
            for s in subdirs:
                if s.startswith("llmslo-lab-") and s.endswith(f"-{owner}"):
                    found.append(Path(d) / s)
            if Path(d) != root and len(Path(d).relative_to(root).parts) >= 3:
                subdirs[:] = []  # lab cgroups sit just below the session's own cgroup
    return found


def lab_dirs(owner: int) -> list[Path]:
    return [d for d in Path(tempfile.gettempdir()).glob("llmslo-lab-*") if f"-{owner}-" in d.name]


def lab_namespaces(owner: int) -> list[str]:
    from lab.netpath import NS_PREFIX, namespaces

    return [n for n in namespaces() if n.startswith(f"{NS_PREFIX}{owner}-")]
