"""A local stand-in for a DNS server, and a way to point a test's client process at it.

:class:`DnsStandin` answers real DNS queries (dnslib) over UDP and TCP port 53 on a loopback
address of its own (``127.53.x.y``, chosen so concurrent test runs never share a server), for
one zone: every ``*.<zone>`` name has A records (``127.0.0.1`` and ``127.0.0.2`` by default)
and no AAAA records; chosen names get NXDOMAIN or SERVFAIL, and any name can be answered after
a delay. Names outside the zone get NXDOMAIN. Queries received are kept in :attr:`queries`.

The host's ``/etc/resolv.conf`` is never touched: :meth:`DnsStandin.client_argv` wraps a
command so it runs in a mount namespace of its own (``unshare --mount``), where a temporary
``resolv.conf`` naming the stand-in and an ``nsswitch.conf`` with ``hosts: files dns`` are
bind-mounted over the real ones. The wrapper ``exec``s the command, so the process keeps the
pid that ``subprocess.Popen`` reports.
"""
from __future__ import annotations

import errno
import random
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSHandler, DNSLogger

ZONE = "llmslo.test"

_BIND = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && '
         'exec "$@"')


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    # No SO_REUSEADDR: on UDP it would let a second stand-in share the address and split the
    # queries between two servers.
    allow_reuse_address = False
    daemon_threads = True


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = False
    daemon_threads = True


class _ZoneResolver:
    def __init__(self, standin: "DnsStandin") -> None:
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
        if qname in s.servfail:
            reply.header.rcode = RCODE.SERVFAIL
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
    """A DNS server for ``*.<zone>`` on ``<address>:53``; use as a context manager."""

    def __init__(self, zone: str = ZONE, addresses: Iterable[str] = ("127.0.0.1", "127.0.0.2"),
                 addresses6: Iterable[str] = (), delay_s: float = 0.0, delays: Mapping[str, float] | None = None,
                 nxdomain: Iterable[str] = (), servfail: Iterable[str] = ()) -> None:
        self.zone = zone.lower()
        self.addresses = list(addresses)
        self.addresses6 = list(addresses6)
        self.delay_s = delay_s
        self.delays = {k.lower(): v for k, v in (delays or {}).items()}
        self.nxdomain = {n.lower() for n in nxdomain}
        self.servfail = {n.lower() for n in servfail}
        self.queries: list[tuple[str, str, str]] = []  # (name, type, "udp" | "tcp")
        self.address = ""
        self._servers: list[socketserver.BaseServer] = []
        self._dir: Path | None = None

    # -- lifecycle

    def start(self) -> "DnsStandin":
        self._bind()
        self._dir = Path(tempfile.mkdtemp(prefix="llmslo-dns-"))
        options = "options timeout:2 attempts:1\n"
        (self._dir / "resolv.conf").write_text(f"nameserver {self.address}\n{options}")
        (self._dir / "resolv-tcp.conf").write_text(f"nameserver {self.address}\noptions timeout:2 attempts:1 use-vc\n")
        (self._dir / "nsswitch.conf").write_text("hosts: files dns\n")
        return self

    def _bind(self) -> None:
        rng = random.Random()
        last: OSError | None = None
        for _ in range(50):
            address = f"127.53.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
            servers: list[socketserver.BaseServer] = []
            try:
                for cls in (_UDPServer, _TCPServer):
                    srv = cls((address, 53), DNSHandler)
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
                threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
            return
        raise RuntimeError(f"no free loopback address for the DNS stand-in: {last}")

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "DnsStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients

    def client_argv(self, argv: list[str], tcp: bool = False) -> list[str]:
        """``argv`` run in its own mount namespace, resolving through this server only (over
        TCP with ``tcp=True``: glibc's ``use-vc`` option)."""
        assert self._dir is not None, "start() the stand-in first"
        resolv = self._dir / ("resolv-tcp.conf" if tcp else "resolv.conf")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND, "sh",
                str(resolv), str(self._dir / "nsswitch.conf"), *argv]

    def query_count(self, name: str, qtype: str = "A") -> int:
        return sum(1 for n, t, _ in self.queries if n == name.lower() and t == qtype)


def resolve_directly(standin: DnsStandin, name: str, timeout: float = 2.0) -> DNSRecord:
    """One A query sent straight to the stand-in (no libc), e.g. to check it is up."""
    q = DNSRecord.question(name)
    return DNSRecord.parse(q.send(standin.address, 53, timeout=timeout))
