"""A network path the kernel can see being slow: a namespace of the lab's own, reached through a
router namespace whose queue a fault fills.

A user-space proxy that holds data back is invisible to the kernel's TCP view: it acknowledges at
once, so the caller's smoothed RTT stays at loopback values. Real network delay is queueing on a
path. This kernel has no ``netem`` (and no ``fq``), but it has ``tbf``, veth pairs and network
namespaces, so the lab builds the real thing:

- ``create()``: host ⇄ router namespace ⇄ far namespace ``llmslo-lab-net-<pid>-<n>``, over two
  veth pairs (a /30 each, in a /24 of 10.213.0.0/16 no other address on the host uses), the
  router forwarding;
- ``spawn(argv)``: a process inside the far namespace (``ip netns exec``), e.g. a forwarder
  whose listening address (``ns_addr``) is then the far end of the path;
- ``shape(delay_ms)``: a token bucket (``tbf``) on the router's interface towards the far side at
  ``rate_mbit``, whose queue holds ``delay_ms`` of data, and a bulk TCP flow from the host into
  the far namespace that keeps the queue full. Every other segment sent that way waits behind
  it, and the sender's kernel measures that wait in its RTT: up to ``delay_ms`` when the queue is
  full, less on average as the bulk flow's congestion control backs off at each drop;
- ``unshape()``, ``remove()``: undo, in that order; ``remove`` deletes both namespaces, which takes
  the veth pairs with them.

Everything carries the owning process's pid, so ``sweep_stale`` removes what a killed run left.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from lab import process
from lab.harness import die_with_parent

NS_PREFIX = "llmslo-lab-net-"
DEFAULT_RATE_MBIT = 20.0
# The bulk flow: a sender on the host, a sink in the namespace; they die with their parent.
SINK = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(4)\n"
        "while True:\n c,_=s.accept()\n while c.recv(1<<16): pass\n")
# Loss-based congestion control (cubic, as most bulk traffic runs): it grows until the queue
# drops, so the queue stays near full. (BBR, this host's default, paces at the bottleneck's rate
# and keeps the queue nearly empty: no delay to see.)
SENDER = ("import socket,sys,time\nb=bytes(1<<16)\n"
          "while True:\n try:\n  c=socket.socket()\n"
          "  c.setsockopt(socket.IPPROTO_TCP,socket.TCP_CONGESTION,b'cubic')\n"
          "  c.settimeout(5);c.connect((sys.argv[1],int(sys.argv[2])))\n"
          "  while True: c.sendall(b)\n except OSError: time.sleep(0.2)\n")
BULK_PORT = 9


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _must(*argv: str) -> None:
    r = _run(*argv)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")


class ShapedPath:
    """A far namespace reached through a router namespace (``index`` tells several of one process
    apart, 0-31). The router forwards, and its queue towards the far side is the one ``shape``
    fills: a queue of forwarded packets, as at a real bottleneck. (A queue on the sending host's
    own interface would not do: TCP small queues keep each local socket to about a millisecond
    of data in it.)"""

    def __init__(self, index: int = 0, rate_mbit: float = DEFAULT_RATE_MBIT):
        if not 0 <= index < 32:
            raise ValueError("index must be in 0..31")
        pid = os.getpid()
        self.ns = f"{NS_PREFIX}{pid}-{index}"
        self.router_ns = f"{self.ns}r"
        tag = f"{pid % 100_000}x{index}"  # names stay within the kernel's 15 characters
        self.host_if, self.router_in, self.router_out, self.ns_if = f"llh{tag}", f"llr{tag}a", f"llr{tag}b", f"llf{tag}"
        # 10.213.T.0/24 for this process (T free on this host), in /30s: two per path
        # (host-router, router-far)
        octet = _octet()
        self.host_addr, self.router_in_addr = _pair(octet, index * 2)
        self.router_out_addr, self.ns_addr = _pair(octet, index * 2 + 1)
        self.rate_mbit = float(rate_mbit)
        self.delay_ms: float | None = None
        self.procs: list[subprocess.Popen] = []
        self._bulk: list[subprocess.Popen] = []

    # -- lifecycle

    def create(self) -> ShapedPath:
        r, f = self.router_ns, self.ns
        try:
            for ns in (r, f):
                _must("ip", "netns", "add", ns)
                _must("ip", "-n", ns, "link", "set", "lo", "up")
            _must("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.router_in, "netns", r)
            _must("ip", "-n", r, "link", "add", self.router_out, "type", "veth", "peer", "name", self.ns_if, "netns", f)
            _must("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _must("ip", "link", "set", self.host_if, "up")
            _must("ip", "-n", r, "addr", "add", f"{self.router_in_addr}/30", "dev", self.router_in)
            _must("ip", "-n", r, "addr", "add", f"{self.router_out_addr}/30", "dev", self.router_out)
            _must("ip", "-n", r, "link", "set", self.router_in, "up")
            _must("ip", "-n", r, "link", "set", self.router_out, "up")
            _must("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _must("ip", "-n", f, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            _must("ip", "-n", f, "link", "set", self.ns_if, "up")
            _must("ip", "-n", f, "route", "add", "default", "via", self.router_out_addr)
            _must("ip", "route", "add", f"{self.ns_addr}/32", "via", self.router_in_addr, "dev", self.host_if)
        except BaseException:
            self.remove()
            raise
        return self

    def spawn(self, argv: list[str], **popen_kw) -> subprocess.Popen:
        """``argv`` inside the far namespace; killed by ``remove`` (and when this process dies)."""
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        popen_kw.setdefault("preexec_fn", die_with_parent)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **popen_kw)
        self.procs.append(p)
        return p

    def shape(self, delay_ms: float) -> None:
        """Queue up to ``delay_ms`` of data on the way into the far namespace, and keep it full."""
        if delay_ms <= 0:
            raise ValueError("delay_ms must be positive")
        _must("tc", "-n", self.router_ns, "qdisc", "replace", "dev", self.router_out, "root", "tbf", "rate",
              f"{self.rate_mbit:g}mbit", "burst", "32kb", "latency", f"{delay_ms:g}ms")
        self.delay_ms = float(delay_ms)
        if not self._bulk:
            sink = self.spawn([sys.executable, "-c", SINK, self.ns_addr, str(BULK_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sender = subprocess.Popen([sys.executable, "-c", SENDER, self.ns_addr, str(BULK_PORT)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
            self._bulk = [sink, sender]

    def unshape(self) -> None:
        for p in self._bulk:
            process.stop(p, timeout_s=2.0)
        self.procs = [p for p in self.procs if p not in self._bulk]
        self._bulk = []
        if self.delay_ms is not None:
            _run("tc", "-n", self.router_ns, "qdisc", "del", "dev", self.router_out, "root")
            self.delay_ms = None

    def remove(self) -> None:
        """Stop what runs in it, undo the shaping, delete both namespaces (and so the veth pairs)."""
        self.unshape()
        for p in self.procs:
            process.stop(p, timeout_s=2.0)
        self.procs = []
        for ns in (self.ns, self.router_ns):
            _run("ip", "netns", "del", ns)
        _run("ip", "link", "del", self.host_if)  # normally gone with the router's namespace
        _run("ip", "route", "del", f"{self.ns_addr}/32")

    def stop(self) -> None:
        """``remove``, under the name the stack stops its other parts with."""
        self.remove()

    def exists(self) -> bool:
        return self.ns in namespaces()

    def __enter__(self) -> ShapedPath:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove()


def _pair(octet: int, block: int) -> tuple[str, str]:
    """The two usable addresses of the ``block``-th /30 (0-63) of 10.213.``octet``.0/24."""
    return f"10.213.{octet}.{block * 4 + 1}", f"10.213.{octet}.{block * 4 + 2}"


_octets: dict[int, int] = {}  # pid -> the third octet its paths use


def _octet() -> int:
    """This process's /24 in 10.213.0.0/16: from its pid, moved on past any /24 an address on this
    host already uses (another lab run's paths), so two runs never share addresses or routes."""
    pid = os.getpid()
    if pid not in _octets:
        shown = _run("ip", "-o", "-4", "addr", "show").stdout
        used = {int(t) for t in re.findall(r"inet 10\.213\.(\d+)\.", shown)}
        free = [t for t in ((pid + k) % 256 for k in range(256)) if t not in used]
        if not free:
            raise RuntimeError("no free /24 left in 10.213.0.0/16 for the lab's network paths")
        _octets[pid] = free[0]
    return _octets[pid]


def namespaces() -> list[str]:
    """The lab's network namespaces on this host."""
    r = _run("ip", "netns", "list")
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(NS_PREFIX)]


def sweep_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone (their veth pairs go with them)."""
    removed = []
    for ns in namespaces():
        owner = ns[len(NS_PREFIX):].split("-")[0]
        if process.owner_gone(owner):
            _run("ip", "netns", "del", ns)
            removed.append(ns)
    return removed
