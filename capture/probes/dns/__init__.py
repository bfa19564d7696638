"""dns probe: decoder, metadata and libc discovery for program.bpf.c beside it.

getaddrinfo is probed in the libc each target process actually maps (``/proc/PID/maps``), so a
container's own libc is covered; one uprobe per library file serves every process mapping it,
and the in-kernel scope filter keeps only the target's calls.

Top lists: ``hosts`` (lookups per host name), ``failed_hosts`` (failed lookups per host),
``slow_hosts`` (total time spent resolving each host, in microseconds: a sum, so it adds over
cgroups and windows and ranks hosts by what their resolution cost the workload; the mean per host
is ``slow_hosts / hosts``, see :func:`mean_latency_us`), ``errors`` (failures per EAI_* code) and
``answers`` (``"<ip> <host>"``: lookups of ``host`` that returned ``ip``, see
:func:`names_by_address`). Host names are cut at 63 bytes.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

from capture import identity, procmaps
from capture.probes.base import Probe, ProbeAttachError, RawSnapshot, bump, slot_upper
from capture.schemas import ProbeResult

# glibc's libc.so.6, and musl's (Alpine), whose loader is its libc and whose struct addrinfo
# has the same x86_64 layout.
LIBC = re.compile(r"^(libc\.so|ld-musl-.*\.so)")
SYMBOL = "getaddrinfo"

# <netdb.h>: the same values in glibc and musl.
EAI_NAMES = {-1: "EAI_BADFLAGS", -2: "EAI_NONAME", -3: "EAI_AGAIN", -4: "EAI_FAIL", -5: "EAI_NODATA",
             -6: "EAI_FAMILY", -7: "EAI_SOCKTYPE", -8: "EAI_SERVICE", -9: "EAI_ADDRFAMILY",
             -10: "EAI_MEMORY", -11: "EAI_SYSTEM", -12: "EAI_OVERFLOW"}

_COUNTS = {0: "lookups", 1: "failures", 2: "literal_lookups"}


def error_name(code: int) -> str:
    return EAI_NAMES.get(code, f"EAI_{code}")


def _host(raw: Any) -> str:
    data = bytes(raw).split(b"\0", 1)[0]
    return data.decode("utf-8", "replace") or "(empty)"


def _address(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data[:16]))


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["counts"].items():
        bump(raw, ("c", key.cgid, _COUNTS.get(key.kind, "lookups")), value.value)
    for key, value in bpf["latency_us"].items():
        bump(raw, ("h", key.cgid, "latency", slot_upper(key.slot)), value.value)
    for key, value in bpf["hosts"].items():
        host = _host(key.host)
        bump(raw, ("p", key.cgid, "hosts", host), value.lookups)
        bump(raw, ("p", key.cgid, "slow_hosts", host), value.latency_us)
        if value.failures:
            bump(raw, ("p", key.cgid, "failed_hosts", host), value.failures)
    for key, value in bpf["errors"].items():
        bump(raw, ("p", key.cgid, "errors", error_name(key.err)), value.value)
    for key, value in bpf["answers"].items():
        bump(raw, ("p", key.cgid, "answers", f"{_address(key.family, key.addr)} {_host(key.host)}"), value.value)
    return raw


def names_by_address(result: ProbeResult) -> dict[str, str]:
    """ip -> the host name whose lookups returned it most often (from the ``answers`` top list),
    for naming the peers other probes report by address."""
    best: dict[str, tuple[int, str]] = {}
    for entry in result.top.get("answers", []):
        ip, _, host = str(entry["peer"]).partition(" ")
        if host and entry["count"] > best.get(ip, (0, ""))[0]:
            best[ip] = (entry["count"], host)
    return {ip: host for ip, (_, host) in best.items()}


def mean_latency_us(result: ProbeResult) -> dict[str, float]:
    """host -> mean getaddrinfo latency in microseconds, for hosts in both ``hosts`` and
    ``slow_hosts`` (each list keeps its own top N)."""
    lookups = {e["peer"]: e["count"] for e in result.top.get("hosts", [])}
    return {e["peer"]: e["count"] / lookups[e["peer"]] for e in result.top.get("slow_hosts", [])
            if lookups.get(e["peer"])}


def attach_dynamic(bpf, scope: identity.ResolvedTarget | None, known: set[tuple[int, int]]) -> list[str]:
    """Probe getaddrinfo in every libc the target maps and ``known`` does not hold yet (scope
    None: every process's, within procmaps' bounds). Returns one note per library attached."""
    if scope is None:
        libs = procmaps.find_libraries(None, LIBC, known)
        where = "any process on this node"
    else:
        pids = identity.target_pids(scope)
        if not pids:
            raise ProbeAttachError("no process of the target is running (no pid named, none in its "
                                   "cgroups), so there is no libc to probe for getaddrinfo")
        libs = procmaps.find_libraries(pids, LIBC, known)
        where = f"the target's processes {pids[:8]}{' ...' if len(pids) > 8 else ''}"
    if not libs and known:
        return []  # nothing new since the last scan
    if not libs:
        raise ProbeAttachError(f"no libc is mapped by {where}: statically linked programs (e.g. Go's "
                               f"pure resolver) do not call libc's getaddrinfo")
    notes, failed = [], []
    for lib in libs:
        try:
            bpf.attach_uprobe(name=lib.path, sym=SYMBOL, fn_name="on_getaddrinfo", pid=-1)
        except Exception as e:  # bcc raises bare Exceptions (symbol missing, file gone)
            failed.append(f"{lib.mapped_as} (pid {lib.pid}): {e}")
            continue
        try:
            bpf.attach_uretprobe(name=lib.path, sym=SYMBOL, fn_name="on_getaddrinfo_return", pid=-1)
        except Exception as e:
            bpf.detach_uprobe(name=lib.path, sym=SYMBOL)
            failed.append(f"{lib.mapped_as} (pid {lib.pid}): {e}")
            continue
        notes.append(f"uprobe {SYMBOL} on {lib.mapped_as} (mapped by pid {lib.pid})")
        known.add(lib.dev_inode)
    if not notes and not known:
        raise ProbeAttachError(f"could not probe {SYMBOL} in any libc of {where}: {'; '.join(failed)}")
    notes += [f"not probed: {f}" for f in failed]
    return notes


PROBE = Probe(
    name="dns",
    summary="getaddrinfo latency, failures and answers by workload and host name",
    source="program.bpf.c",
    attach=("uprobe:libc:getaddrinfo", "uretprobe:libc:getaddrinfo"),
    cost_class="low",
    # A workload resolving without a cache makes at most a few hundred lookups a second; 5000
    # in scope is already a runaway loop. Measured here: about 1.3 us of BPF per lookup (entry
    # 0.4, return 0.9) and about 1.2 us added to a getaddrinfo call in all, so at the budget the
    # probe costs under 1% of one CPU.
    event_budget_per_s=5_000,
    domains=("dns",),
    counters={"lookups": "lookups", "failures": "lookups", "literal_lookups": "lookups"},
    histograms={"latency": "us"},
    read_raw=read_raw,
    attach_dynamic=attach_dynamic,
    library=LIBC,
)
