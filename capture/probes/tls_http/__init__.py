"""tls_http probe: decoder, metadata and uprobe attachment for program.bpf.c beside it.

The uprobes go on the libssl file(s) the target's processes map (found in /proc/PID/maps, so a
container's own libssl is probed, not the host's). The peer of a TLS connection is the peer of
its socket descriptor, which fdpeers.h learns at connect(); connections the target opened
before the probe loaded are seeded from /proc (the process's descriptors and its network
namespace's TCP table), since keep-alive pools to LLM providers live far longer than a capture.
"""
from __future__ import annotations

import re
import socket

from capture import procmaps
from capture.identity import ResolvedTarget, target_pids
from capture.probes.base import Probe, ProbeAttachError, RawSnapshot, bump, peer_str, slot_upper
from capture.probes.fdpeers import seed_fd_peers
from capture.schemas import UNKNOWN_PEER

LIBSSL = re.compile(r"^libssl\.so")

# symbol -> (entry handler, return handler). SSL_write_ex and SSL_read_ex appeared in OpenSSL
# 1.1.1; whichever of the four a library exports is attached.
SYMBOLS = {
    "SSL_write": ("ssl_write_enter", "ssl_write_return"),
    "SSL_write_ex": ("ssl_write_enter", "ssl_write_return"),
    "SSL_read": ("ssl_read_enter", "ssl_read_return"),
    "SSL_read_ex": ("ssl_read_ex_enter", "ssl_read_return"),
}

def peer_label(peer) -> str:
    """``addr:port``, or "unknown" for a connection whose socket was never seen (family 0)."""
    return peer_str(peer) if peer.family in (socket.AF_INET, socket.AF_INET6) else UNKNOWN_PEER


def _status_counter(status: int) -> str | None:
    if status == 429:
        return "status_429"
    if 500 <= status <= 599:  # includes 529 (Anthropic's "overloaded")
        return "status_5xx"
    if 400 <= status <= 499:
        return "status_4xx_other"
    if 200 <= status <= 299:
        return "status_2xx"
    return None


def read_raw(bpf) -> RawSnapshot:
    raw: RawSnapshot = {}
    for key, value in bpf["statuses"].items():
        cgid, n, status, peer = key.cgid, value.value, key.status, peer_label(key.peer)
        bump(raw, ("c", cgid, "responses"), n)
        if counter := _status_counter(status):
            bump(raw, ("c", cgid, counter), n)
        bump(raw, ("p", cgid, "status_by_peer", f"{peer} {status}"), n)
        if status == 429:
            bump(raw, ("p", cgid, "throttled_peers", peer), n)
        elif 500 <= status <= 599:
            bump(raw, ("p", cgid, "error_peers", peer), n)
    for key, value in bpf["ttfb_us"].items():
        bump(raw, ("h", key.cgid, "ttfb", slot_upper(key.slot)), value.value)
    for key, value in bpf["peer_ttfb"].items():
        # Mean time to first byte per peer = ttfb_ms_by_peer / responses_by_peer.
        peer = peer_label(key.peer)
        bump(raw, ("p", key.cgid, "ttfb_ms_by_peer", peer), value.sum_us // 1000)
        bump(raw, ("p", key.cgid, "responses_by_peer", peer), value.count)
    return raw


# --- attachment ----------------------------------------------------------------------------------

def attach_dynamic(bpf, scope: ResolvedTarget | None, known: set[tuple[int, int]]) -> list[str]:
    pids = None if scope is None else target_pids(scope)
    libs = procmaps.find_libraries(pids, LIBSSL, known)
    if not libs and known:
        return []  # nothing new since the last scan
    if not libs:
        if scope is None:
            raise ProbeAttachError("no process on this node maps libssl: nothing for tls_http to probe")
        shown = ", ".join(map(str, pids[:10])) + (", ..." if len(pids) > 10 else "") if pids else "none found"
        raise ProbeAttachError(f"the target (pids: {shown}) does not map libssl; tls_http sees HTTPS only "
                               "through a dynamically loaded libssl (start the capture after the client "
                               "has loaded its TLS library)")
    from bcc import BPF  # imported late, as in capture.session

    notes = []
    for lib in libs:
        exported = {name for name, _ in BPF.get_user_functions_and_addresses(lib.path, r"^SSL_(read|write)(_ex)?$")}
        attached = []
        for sym, (enter_fn, return_fn) in SYMBOLS.items():
            if sym.encode() not in exported:
                continue
            bpf.attach_uprobe(name=lib.path, sym=sym, fn_name=enter_fn, pid=-1)
            bpf.attach_uretprobe(name=lib.path, sym=sym, fn_name=return_fn, pid=-1)
            attached.append(sym)
        if attached:
            notes.append(f"uprobes on {', '.join(attached)} in {lib.mapped_as} (as mapped by pid {lib.pid})")
            known.add(lib.dev_inode)
        else:
            notes.append(f"{lib.mapped_as} (pid {lib.pid}) exports none of {', '.join(SYMBOLS)}")
    if not any(n.startswith("uprobes on") for n in notes) and not known:
        raise ProbeAttachError(f"the target does not map libssl with SSL_read/SSL_write symbols: {'; '.join(notes)}")
    # node-wide (no pids): the processes that map libssl
    seeded = seed_fd_peers(bpf, pids, select=lambda pid: bool(procmaps.mapped_libraries(pid, LIBSSL)))
    if seeded:
        notes.append(f"peers of {seeded} already-open TCP connection(s) read from /proc")
    return notes


PROBE = Probe(
    name="tls_http",
    summary="HTTP/1.x response statuses (429, 5xx) and time to first byte per peer, from the target's libssl",
    source="program.bpf.c",
    attach=("uprobe:libssl:SSL_write", "uprobe:libssl:SSL_write_ex", "uprobe:libssl:SSL_read",
            "uprobe:libssl:SSL_read_ex", "uretprobe:libssl:SSL_write", "uretprobe:libssl:SSL_write_ex",
            "uretprobe:libssl:SSL_read", "uretprobe:libssl:SSL_read_ex",
            "tracepoint:syscalls:sys_enter_write", "tracepoint:syscalls:sys_enter_sendto",
            "tracepoint:syscalls:sys_enter_connect", "tracepoint:syscalls:sys_exit_connect",
            "tracepoint:syscalls:sys_enter_close"),
    cost_class="medium",
    # Events are HTTP responses; an LLM client makes tens to hundreds a second. The cost is in
    # the uprobe traps, not the BPF (0.3-0.7 us per run): measured here (a VM), a probed SSL call
    # costs about 13 us of CPU whether it has an entry probe, a return probe or both, and a
    # response takes 3-4 calls (write, then head and body reads), so 2,000 responses/s is about
    # 0.1 CPU here. Streamed bodies pay per read without counting as events.
    event_budget_per_s=2_000,
    domains=("provider_throttling", "provider_latency", "traffic"),
    counters={"responses": "responses", "status_429": "responses", "status_5xx": "responses",
              "status_4xx_other": "responses", "status_2xx": "responses"},
    histograms={"ttfb": "us"},
    read_raw=read_raw,
    attach_dynamic=attach_dynamic,
    library=LIBSSL,
)
