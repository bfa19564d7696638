"""Kernel peers joined to trace dependencies: which dependency's path a kernel signal is on.

The kernel names a peer by address and port (``10.0.0.7:5432``: the probes' top lists); a span
names where its call went by ``network.peer.address`` when the instrumentation knows it, else by
``server.address`` (often a host name) and ``server.port`` (the trace evidence's per-dependency
``peers``). The dns probe's answers (``host -> addresses`` the service's own lookups returned)
bridge the two. Two peers are on the same path when

- their ports differ: never (when both are known);
- their addresses are equal, or the span's host name resolved to the kernel's address;
- the span names a host the capture saw no answer for: unless their ports differ (a name that
  cannot be resolved here is matched on its port alone);
- either is any address (``*:53``, the resolver's path): when both ports are known and equal.

A cause on one dependency's path (retransmits to its address) explains the symptoms of that
dependency only; a cause without peers (run-queue waits, a slow resolver) explains every call.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from capture.schemas import UNKNOWN_PEER, CaptureResult, ProbeResult

# The top lists that name the peers a probe's counts came from (the first one present counts).
KERNEL_PEER_LISTS = ("peers", "received_from", "failed_peers", "throttled_peers", "error_peers",
                     "responses_by_peer")

Hosts = dict[str, set[str]]
# The path a name lookup takes: to a resolver, any address, port 53. A cause on another
# dependency's path (retransmits to a provider) does not slow the lookups.
WILDCARD = "*"
RESOLVER = frozenset({f"{WILDCARD}:53"})


def split(peer: str) -> tuple[str, str | None]:
    """("10.0.0.7", "5432") from "10.0.0.7:5432"; ("::1", "53") from "[::1]:53"; ("db", None) from "db"."""
    if peer.startswith("["):
        addr, _, rest = peer[1:].partition("]")
        return addr, rest[1:] if rest.startswith(":") and rest[1:] else None
    if peer.count(":") == 1:
        addr, _, port = peer.partition(":")
        return addr, port or None
    return peer, None


def _is_ip(addr: str) -> bool:
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        return False
    return True


def hosts_from(capture: CaptureResult | None) -> Hosts:
    """host name -> the addresses the service's lookups returned for it, in either window."""
    out: Hosts = {}
    if capture is None:
        return out
    for window in (capture.incident, capture.baseline):
        dns = window.get("dns")
        for entry in dns.top.get("answers", []) if dns is not None else []:
            ip, _, host = str(entry.get("peer", "")).partition(" ")
            if ip and host:
                out.setdefault(host, set()).add(ip)
    return out


def kernel_peers(result: ProbeResult | None, lists: Iterable[str] = KERNEL_PEER_LISTS) -> frozenset[str] | None:
    """The known peers of a probe result's first top list present; None when it names none."""
    if result is None:
        return None
    for name in lists:
        entries = result.top.get(name)
        if entries:
            known = frozenset(str(e["peer"]).split(" ")[0] for e in entries
                              if e.get("peer") and e["peer"] != UNKNOWN_PEER and e.get("count"))
            return known or None
    return None


def same(kernel_peer: str, span_peer: str, hosts: Hosts) -> bool:
    ka, kp = split(kernel_peer)
    sa, sp = split(span_peer)
    if kp is not None and sp is not None and kp != sp:
        return False
    if WILDCARD in (ka, sa):  # any address: the port alone decides, and it must be known
        return kp is not None and sp is not None
    if sa == ka:
        return True
    if sa in hosts:
        return ka in hosts[sa]
    # A host name the capture saw no answer for: the ports decided above (different: no);
    # equal or unknown, it cannot be ruled out.
    return not _is_ip(sa)


def on_path(kernel: frozenset[str] | None, spans: frozenset[str] | None, hosts: Hosts) -> bool:
    """Whether a kernel signal's peers and a dependency's are on one path; unknown on either
    side (None or empty) is taken as yes, as before peers were known."""
    if not kernel or not spans:
        return True
    return any(same(k, s, hosts) for k in kernel for s in spans)


# The kernel's per-peer counts a dependency's row can show: (probe, top list, what it counts).
PATH_COUNTS = (("tcp_retrans", "peers", "retransmits"), ("tcp_reset", "received_from", "resets received"),
               ("tcp_connect", "failed_peers", "failed connects"))


def kernel_on_path(capture: CaptureResult | None, span_peers: frozenset[str],
                   hosts: Hosts) -> list[tuple[str, float | None, float, str]]:
    """(what, baseline, incident, unit) of the kernel's per-peer evidence on a dependency's path:
    the counts per second (``PATH_COUNTS``, only those seen in either window) and the mean sRTT
    in ms (``tcp_flow``, when it sampled those peers); nothing when the dependency's peers are
    unknown."""
    if capture is None or not span_peers:
        return []

    def on_path(entry: dict) -> bool:
        peer = str(entry.get("peer") or "")
        return bool(peer) and peer != UNKNOWN_PEER and any(same(peer, s, hosts) for s in span_peers)

    out: list[tuple[str, float | None, float, str]] = []
    for probe, top, what in PATH_COUNTS:
        rates: list[float | None] = []
        for window in (capture.baseline, capture.incident):
            r = window.get(probe)
            if r is None or not r.window_s:
                rates.append(None)
                continue
            rates.append(sum(e.get("count", 0) for e in r.top.get(top, []) if on_path(e)) / r.window_s)
        base, inc = rates
        if inc is not None and (inc or base):
            out.append((what, base, inc, "/s"))
    rtts: list[float | None] = []
    for window in (capture.baseline, capture.incident):
        flow = window.get("tcp_flow")
        lists = flow.top if flow is not None else {}
        total = sum(e.get("count", 0) for e in lists.get("rtt_sum_us", []) if on_path(e))
        samples = sum(e.get("count", 0) for e in lists.get("rtt_samples", []) if on_path(e))
        rtts.append(total / samples / 1000.0 if samples and total else None)
    if rtts[1] is not None:
        out.append(("sRTT", rtts[0], rtts[1], "ms"))
    return out
