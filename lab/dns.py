"""The lab's DNS server, with runtime faults, and a way to point a client process at it.

:class:`DnsStandin` answers real DNS queries (dnslib) over UDP and TCP port 53 on a loopback
address of its own (``127.53.x.y``: a resolv.conf names a server by address only, always on
port 53, so each server gets its own address and concurrent runs never share one). It answers:

- the exact names in ``records`` (``{name: IPv4 address}``, e.g. ``{"api.provider.lab":
  "127.0.0.1"}``) with that A record;
- every ``*.<zone>`` name with the A records in ``addresses`` (and ``addresses6`` as AAAA);
- chosen names with NXDOMAIN or SERVFAIL, any name after a delay; anything else NXDOMAIN.

Faults change at runtime with :meth:`DnsStandin.set_faults`: a delay before every answer and
a fraction of lookups answered SERVFAIL (glibc's ``getaddrinfo`` then fails with EAI_AGAIN).
The failure draw is made once per *lookup*, not per query: the A and AAAA queries that one
``getaddrinfo`` call sends from one socket share a verdict, so ``failure_fraction`` is the
fraction of the client's lookups that fail, all with EAI_AGAIN. (Drawn per query, a lookup
whose AAAA alone failed would succeed, and one whose A alone failed would end in EAI_NODATA.)
Draws come from a random generator seeded by ``seed``.

The host's ``/etc/resolv.conf`` is never touched: :meth:`DnsStandin.client_argv` wraps a
command so it runs in a mount namespace of its own (``unshare --mount``), where a temporary
``resolv.conf`` naming this server and an ``nsswitch.conf`` with ``hosts: files dns`` are
bind-mounted over the real ones. The wrapper ``exec``s the command, so the process keeps the
pid that ``subprocess.Popen`` reports. The temporary directory is named after the creating
process (``llmslo-lab-dns-<pid>-*``) so :func:`sweep_stale` can remove what a killed run left.
"""
from __future__ import annotations

import collections
import errno
import os
import random
import shutil
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError, DNSRecord
from dnslib.server import DNSHandler, DNSLogger

ZONE = "llmslo.test"
DIR_PREFIX = "llmslo-lab-dns-"
# A client's A and AAAA queries of one lookup arrive within milliseconds of each other; a verdict
# older than this belongs to an earlier lookup that happened to get the same source port.
_LOOKUP_WINDOW_S = 1.0

_BIND = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && '
         'exec "$@"')


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    # No SO_REUSEADDR: on UDP it would let a second server share the address and split the
    # queries between two servers.
    allow_reuse_address = False
    daemon_threads = True
    resolver: _ZoneResolver  # set after binding; dnslib's handler reads both from its server
    logger: DNSLogger


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = False
    daemon_threads = True
    resolver: _ZoneResolver
    logger: DNSLogger


class _TCPHandler(DNSHandler):
    """Every length-prefixed query on a connection, in order. dnslib's own handler answers one
    query and closes, but glibc (``use-vc``) writes its A and AAAA queries back to back on one
    connection and fails the lookup when the second answer never comes. In order means a delay
    fault is served twice to a TCP lookup (UDP queries are answered in parallel)."""

    def handle(self) -> None:
        self.protocol = "tcp"
        self.request.settimeout(10)  # an idle client does not keep the thread
        buf = b""
        try:
            while True:
                while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                    data = self.request.recv(8192)
                    if not data:
                        return
                    buf += data
                length = struct.unpack("!H", buf[:2])[0]
                msg, buf = buf[2:2 + length], buf[2 + length:]
                try:
                    reply = self.get_reply(msg)
                except DNSError:
                    return
                self.request.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


class _ZoneResolver:
    def __init__(self, standin: DnsStandin) -> None:
        self.standin = standin

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        s = self.standin
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        s.queries.append((qname, qtype, handler.protocol))
        delay = s.delays.get(qname, s.delay_s)
        if delay > 0:
            time.sleep(delay)  # each query has its own thread (ThreadingMixIn)
        reply = request.reply()
        if qname in s.servfail or s._draw_failure(handler.client_address, qname, qtype):
            reply.header.rcode = RCODE.SERVFAIL
        elif qname in s.records:
            if qtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(s.records[qname]), ttl=30))
        elif qname in s.nxdomain or not (qname == s.zone or qname.endswith("." + s.zone)):
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype == "A":
            for addr in s.addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(addr), ttl=30))
        elif qtype == "AAAA" and s.addresses6:
            for addr in s.addresses6:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(addr), ttl=30))
        return reply  # other types: NOERROR with no answer (NODATA)


class DnsStandin:
    """A DNS server on ``<address>:53``; use as a context manager or ``start()``/``stop()``."""

    def __init__(self, zone: str = ZONE, addresses: Iterable[str] = ("127.0.0.1", "127.0.0.2"),
                 addresses6: Iterable[str] = (), delay_s: float = 0.0, delays: Mapping[str, float] | None = None,
                 nxdomain: Iterable[str] = (), servfail: Iterable[str] = (),
                 records: Mapping[str, str] | None = None, seed: int | None = None,
                 resolver_timeout_s: int = 5, max_queries_kept: int = 100_000) -> None:
        self.zone = zone.lower()
        self.addresses = list(addresses)
        self.addresses6 = list(addresses6)
        self.records = {k.lower().rstrip("."): v for k, v in (records or {}).items()}
        self.delay_s = delay_s
        self.delays = {k.lower(): v for k, v in (delays or {}).items()}
        self.nxdomain = {n.lower() for n in nxdomain}
        self.servfail = {n.lower() for n in servfail}
        self.failure_fraction = 0.0
        # glibc gives up on a server after this long: a fault delay at or above it is a failure
        self.resolver_timeout_s = int(resolver_timeout_s)
        # (name, type, "udp" | "tcp"), the most recent ones: a lab run answers millions
        self.queries: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=max_queries_kept)
        self.lookups_failed = 0  # lookups answered SERVFAIL by the failure fault
        self.address = ""
        self._rng = random.Random(seed)
        self._verdicts: dict[tuple, tuple[float, bool, set[str]]] = {}
        self._lock = threading.Lock()
        self._servers: list[_UDPServer | _TCPServer] = []
        self._dir: Path | None = None

    # -- faults

    def set_faults(self, delay_ms: float = 0, failure_fraction: float = 0.0) -> None:
        """Delay every answer by ``delay_ms`` (replacing the default delay; per-name delays
        still win) and answer ``failure_fraction`` of lookups with SERVFAIL. ``set_faults()``
        clears both."""
        if not 0 <= delay_ms <= 60_000:
            raise ValueError(f"delay_ms must be in 0..60000, not {delay_ms}")
        if not 0.0 <= failure_fraction <= 1.0:
            raise ValueError(f"failure_fraction must be in 0..1, not {failure_fraction}")
        self.delay_s = delay_ms / 1000.0
        self.failure_fraction = float(failure_fraction)

    def clear_faults(self) -> None:
        self.set_faults()

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._rng.seed(seed)
            self._verdicts.clear()

    def _draw_failure(self, client: tuple, qname: str, qtype: str) -> bool:
        """One verdict per lookup: a query shares the verdict of a query for the same name, of
        another type, from the same client socket, less than a second before (glibc's A and
        AAAA pair); anything else (a second A from a reused port, a resend) draws afresh."""
        fraction = self.failure_fraction
        now = time.monotonic()
        key = (client[0], client[1], qname)
        with self._lock:
            seen = self._verdicts.get(key)
            if seen is not None and now - seen[0] < _LOOKUP_WINDOW_S and qtype not in seen[2]:
                seen[2].add(qtype)
                return seen[1]
            if len(self._verdicts) > 4096:
                self._verdicts = {k: v for k, v in self._verdicts.items() if now - v[0] < _LOOKUP_WINDOW_S}
            # Always draw, also at fraction 0, so a seed gives the same sequence whatever the faults.
            failed = self._rng.random() < fraction
            self._verdicts[key] = (now, failed, {qtype})
            if failed:
                self.lookups_failed += 1
            return failed

    # -- lifecycle

    def start(self) -> DnsStandin:
        self._bind()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
        opts = f"options timeout:{self.resolver_timeout_s} attempts:1"
        (self._dir / "resolv.conf").write_text(f"nameserver {self.address}\n{opts}\n")
        (self._dir / "resolv-tcp.conf").write_text(f"nameserver {self.address}\n{opts} use-vc\n")
        (self._dir / "nsswitch.conf").write_text("hosts: files dns\n")
        return self

    def _bind(self) -> None:
        rng = random.Random()
        last: OSError | None = None
        for _ in range(50):
            address = f"127.53.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
            servers: list[_UDPServer | _TCPServer] = []
            try:
                for cls, handler in ((_UDPServer, DNSHandler), (_TCPServer, _TCPHandler)):
                    srv: _UDPServer | _TCPServer = cls((address, 53), handler)
                    srv.resolver = _ZoneResolver(self)
                    srv.logger = DNSLogger(logf=lambda *_: None)
                    servers.append(srv)
            except OSError as e:
                for srv in servers:
                    srv.server_close()
                if e.errno != errno.EADDRINUSE:
                    raise
                last = e
                continue
            self.address = address
            self._servers = servers
            for srv in servers:
                threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                                 name=f"dns-{address}-{srv.socket_type}").start()
            return
        raise RuntimeError(f"no free loopback address for the DNS server: {last}")

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> DnsStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients

    @property
    def resolv_conf(self) -> Path:
        """The resolv.conf that :meth:`client_argv` mounts (the server's address and options)."""
        assert self._dir is not None, "start() the server first"
        return self._dir / "resolv.conf"

    def client_argv(self, argv: list[str], tcp: bool = False) -> list[str]:
        """``argv`` run in its own mount namespace, resolving through this server only (over
        TCP with ``tcp=True``: glibc's ``use-vc`` option). Compose with a ``preexec_fn`` (e.g.
        joining a cgroup): the wrapper and the command inherit what the preexec sets."""
        assert self._dir is not None, "start() the server first"
        resolv = self._dir / ("resolv-tcp.conf" if tcp else "resolv.conf")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND, "sh",
                str(resolv), str(self._dir / "nsswitch.conf"), *argv]

    def query_count(self, name: str, qtype: str = "A") -> int:
        return sum(1 for n, t, _ in list(self.queries) if n == name.lower() and t == qtype)


def resolve_directly(standin: DnsStandin, name: str, qtype: str = "A", tcp: bool = False,
                     timeout: float = 2.0) -> DNSRecord:
    """One query sent straight to the server (no libc), e.g. to check it is up."""
    q = DNSRecord.question(name, qtype)
    return DNSRecord.parse(q.send(standin.address, 53, tcp=tcp, timeout=timeout))


def sweep_stale() -> list[Path]:
    """Remove the temporary directories of DNS servers whose process no longer exists (a run
    killed with SIGKILL); the server threads died with it. Returns what was removed."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            pid = int(d.name[len(DIR_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
