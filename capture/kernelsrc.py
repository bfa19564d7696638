"""Whether bcc can compile the probes on this node: the kernel's headers must be reachable.

bcc compiles each probe's C program when it loads, against the running kernel's headers: it
looks in ``/lib/modules/$(uname -r)/build`` (and ``source``), and, when neither holds any, in the
kernel itself (``/sys/kernel/kheaders.tar.xz``, with CONFIG_IKHEADERS, after ``modprobe
kheaders``). In a container those paths are the image's own unless the node's are mounted, which
is the mistake a first run on a new node most often makes; ``missing_headers`` names it at start,
in one line, instead of a compiler error per probe later. BTF (``/sys/kernel/btf/vmlinux``) is
reported beside it: the probes' tracepoints and uprobes do not need it, but a node without it
usually lacks the rest of a BPF tool chain's comforts too.
"""
from __future__ import annotations

import os
from pathlib import Path

MODULES = Path("/lib/modules")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
BTF = Path("/sys/kernel/btf/vmlinux")


def _has_headers(d: Path) -> bool:
    # A link into /usr/src that the container cannot follow counts as missing.
    return (d / "include" / "linux").is_dir()


def missing_headers(release: str | None = None, modules: Path = MODULES, kheaders: Path = KHEADERS,
                    btf: Path = BTF) -> str | None:
    """One line saying what is missing and what to mount, or None when bcc can compile here."""
    release = release or os.uname().release
    build, source = modules / release / "build", modules / release / "source"
    if _has_headers(build) or _has_headers(source) or kheaders.exists():
        return None
    where = f"{build}"
    if build.is_symlink():
        where += f" (a link to {os.readlink(build)}, which is not here)"
    btf_note = "" if btf.exists() else f"; no BTF at {btf} either"
    return (f"no kernel headers for {release}: looked in {where} and {kheaders}{btf_note}. Mount the "
            f"node's /lib/modules and /usr/src read-only at the same paths (the DaemonSet does), or install "
            f"linux-headers-{release} on the node; no probe can be compiled until then")
