"""backend_latency against request/reply traffic the tests create: a loopback server with a known
delay per request, and a real PostgreSQL answering ``SELECT pg_sleep(0.1)`` to psql.

The probe is loaded through ProbeSession directly rather than the agent: loading returns only
once the program is attached, scoped and armed, so each workload starts (and connects: peers are
learned at connect()) after the probe is live, with no sleep guessed from compile time on a
shared, loaded machine.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest

from capture import identity
from capture.probes import CATALOG
from capture.probes.base import to_result
from capture.schemas import CaptureTarget, ProbeResult
from capture.session import ProbeSession
from common.net import free_port

pytestmark = pytest.mark.kernel

PROBE = CATALOG["backend_latency"]

# One listener per delay; each connection is served in its own thread: read a request line,
# sleep for the listener's delay, write a one-line reply. A delay of "greet" makes a server that
# speaks first (as MySQL's does): a greeting line on accept, then immediate replies.
DELAY_SERVER = r"""
import socket, sys, threading, time

def serve(conn, delay):
    if delay == "greet":
        conn.sendall(b"hello\n")
        delay = 0
    with conn, conn.makefile("rb") as lines:
        for _ in lines:
            time.sleep(delay)
            conn.sendall(b"reply\n")

def listen(delay):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    def accept():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn, delay), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]

print(*[listen(d if d == "greet" else float(d)) for d in sys.argv[1:]], flush=True)
sys.stdin.read()  # serve until the test closes stdin or kills us
"""

# Connects only after "go" (the probe is armed by then), then N requests on each connection in
# turn. The slow connection blocks in recv(); the fast one is non-blocking and tries recv() at
# once, so it gets EAGAIN before each reply arrives, which must not count as the reply.
CLIENT = r"""
import select, socket, sys
slow_port, fast_port, n = map(int, sys.argv[1:4])
sys.stdin.readline()
slow = socket.create_connection(("127.0.0.1", slow_port))
fast = socket.create_connection(("127.0.0.1", fast_port))
fast.setblocking(False)

def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        data += s.recv(100)
    return data

eagain = 0
for _ in range(n):
    slow.sendall(b"query\n")
    assert read_line(slow) == b"reply\n"
for _ in range(n):
    fast.send(b"query\n")
    data = b""
    while not data.endswith(b"\n"):
        try:
            data += fast.recv(100)
        except BlockingIOError:
            eagain += 1
            select.select([fast], [], [], 5)
    assert data == b"reply\n"
print("done", eagain, flush=True)
"""


def spawn(*args: str, cgroup=None, **kw) -> subprocess.Popen:
    """A process started inside ``cgroup`` (moved there before it execs) or, without one, here."""
    procs = cgroup.dir / "cgroup.procs" if cgroup else None
    return subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: procs.write_text(str(os.getpid()))) if procs else None, **kw)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


async def capture(target: CaptureTarget, workload) -> ProbeResult:
    """Load the probe scoped to ``target`` (armed when this returns), run the blocking
    ``workload()``, then read the result. Everything runs in one worker thread."""
    def run() -> ProbeResult:
        scope = identity.resolve(target)
        t0 = time.monotonic()
        with ProbeSession(PROBE, scope) as session:
            workload()
            time.sleep(0.2)  # nothing is in flight, but let the last exits land
            r = to_result(PROBE, session.read_raw(), None, time.monotonic() - t0)
            stats, r.cost = session.stats(), session.cost()
            r.events, r.lost = stats.events, stats.lost
        return r
    return await asyncio.to_thread(run)


def peer_counts(r: ProbeResult, top: str) -> dict[str, int]:
    return {e["peer"]: e["count"] for e in r.top.get(top, [])}


def run_client(client: subprocess.Popen, timeout: float = 30.0) -> int:
    """Release the client and wait for it; returns the number it printed after "done"."""
    out, _ = client.communicate("go\n", timeout=timeout)
    words = out.split()
    assert words[:1] == ["done"], out
    return int(words[1])


async def test_counts_requests_and_latency_per_peer(workload_cgroup):
    """N request/replies to a server that answers after D = 80 ms, and N on a second connection
    answered after 5 ms, from a process in the target cgroup: exactly N requests per peer; the
    slow peer's N all in histogram buckets >= 65.5 ms (2^16 us) and in ``slow_peers``, the fast
    peer's N all below; each peer's mean within 20% of D, plus 5 ms on top for scheduling on a
    shared 2-core machine (the server cannot answer before D, so the mean is never below D).
    The fast connection is non-blocking and sees EAGAIN before each reply: had EAGAIN closed
    the request, its latency would be microseconds, failing the mean."""
    n, slow_d, fast_d = 10, 0.080, 0.005
    server = spawn(sys.executable, "-c", DELAY_SERVER, str(slow_d), str(fast_d))
    client = None
    try:
        slow_port, fast_port = map(int, server.stdout.readline().split())
        client = spawn(sys.executable, "-c", CLIENT, str(slow_port), str(fast_port), str(n), cgroup=workload_cgroup)
        eagain: list[int] = []
        r = await capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: eagain.append(run_client(client)))
    finally:
        stop(*[p for p in (server, client) if p])
    slow_peer, fast_peer = f"127.0.0.1:{slow_port}", f"127.0.0.1:{fast_port}"
    assert eagain[0] >= n, "the fast connection should have met EAGAIN before every reply"
    assert r.lost == 0
    assert peer_counts(r, "peers") == {slow_peer: n, fast_peer: n}, r.top
    assert r.counters["requests"] == 2 * n and r.events == 2 * n
    h = r.histograms["latency"]
    assert h.count == 2 * n
    assert sum(c for upper, c in h.buckets.items() if upper // 2 >= 65536) == n, h.buckets
    assert peer_counts(r, "slow_peers") == {slow_peer: n}
    assert r.counters["slow_requests"] == n
    sums = peer_counts(r, "latency_sum_us")
    for peer, d in ((slow_peer, slow_d), (fast_peer, fast_d)):
        mean_us = sums[peer] / n
        assert d * 1e6 <= mean_us <= 1.2 * d * 1e6 + 5000, (peer, mean_us)
    assert r.counters["latency_sum_us"] == sums[slow_peer] + sums[fast_peer]
    assert r.cost.bpf_run_count > 0 and r.cost.bpf_run_time_ns > 0


async def test_scope_by_cgroup_and_by_backend_port(workload_cgroup):
    """The same workload run outside the target cgroup is not counted by a capture scoped to the
    cgroup (nothing at all: requests 0, events 0), while a capture scoped to the slow backend's
    port, at the same time, counts exactly its N requests and none to the other port."""
    n = 10
    server = spawn(sys.executable, "-c", DELAY_SERVER, "0.02", "0.005")
    client = None
    try:
        slow_port, fast_port = map(int, server.stdout.readline().split())
        client = spawn(sys.executable, "-c", CLIENT, str(slow_port), str(fast_port), str(n))  # not in the cgroup

        def both() -> tuple[ProbeResult, ProbeResult]:
            by_port = ProbeSession(PROBE, identity.resolve(CaptureTarget(ports=[slow_port])))
            by_cgroup = ProbeSession(PROBE, identity.resolve(CaptureTarget(cgroups=[workload_cgroup.path])))
            with by_port, by_cgroup:
                run_client(client)
                time.sleep(0.2)
                out = []
                for s in (by_cgroup, by_port):
                    r = to_result(PROBE, s.read_raw(), None, 1.0)
                    r.events = s.stats().events
                    out.append(r)
            return out[0], out[1]

        cg_result, port_result = await asyncio.to_thread(both)
    finally:
        stop(*[p for p in (server, client) if p])
    assert cg_result.counters["requests"] == 0 and cg_result.events == 0
    assert cg_result.histograms["latency"].count == 0
    assert peer_counts(port_result, "peers") == {f"127.0.0.1:{slow_port}": n}
    assert port_result.counters["requests"] == n and port_result.histograms["latency"].count == n


# A request abandoned without reading its reply (a client-side timeout), then a new connection
# that gets the same descriptor number and first reads the server's greeting, then one request.
REUSING_CLIENT = r"""
import socket, sys, time
abandoned_port, greeting_port = map(int, sys.argv[1:3])
sys.stdin.readline()
old = socket.create_connection(("127.0.0.1", abandoned_port))
old.sendall(b"query\n")
old_fd = old.fileno()
old.close()
new = socket.create_connection(("127.0.0.1", greeting_port))
time.sleep(0.1)
assert new.recv(100) == b"hello\n"
new.sendall(b"query\n")
assert new.recv(100) == b"reply\n"
print("done", int(new.fileno() == old_fd), flush=True)
"""


async def test_new_connection_on_a_reused_descriptor_starts_idle(workload_cgroup):
    """A request is written on a connection that is then closed unanswered; a new connection
    reuses its descriptor number and first reads a greeting the server sends unasked. The
    greeting is not a reply (the abandoned request must not carry over to the new connection,
    which would count a bogus ~100 ms request); the one real request after it is counted."""
    server = spawn(sys.executable, "-c", DELAY_SERVER, "1.0", "greet")
    client = None
    try:
        abandoned_port, greeting_port = map(int, server.stdout.readline().split())
        client = spawn(sys.executable, "-c", REUSING_CLIENT, str(abandoned_port), str(greeting_port),
                       cgroup=workload_cgroup)
        same_fd: list[int] = []
        r = await capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: same_fd.append(run_client(client)))
    finally:
        stop(*[p for p in (server, client) if p])
    assert same_fd == [1], "the new connection should have reused the closed descriptor number"
    assert peer_counts(r, "peers") == {f"127.0.0.1:{greeting_port}": 1}, r.top
    assert r.counters["requests"] == 1 and r.histograms["latency"].fraction_above(65536) == 0


def postgres_bin() -> Path:
    found = sorted(glob("/usr/lib/postgresql/*/bin/postgres"))
    assert found, "PostgreSQL is not installed (scripts/setup.sh installs it)"
    return Path(found[-1]).parent




class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp dir, run as the ``postgres`` user, listening on 127.0.0.1
    only (its unix socket in the temp dir); stopped and deleted on exit."""

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="llmslo-pg-"))
        self.proc: subprocess.Popen | None = None
        self.log = None

    def __enter__(self) -> ThrowawayPostgres:
        try:
            shutil.chown(self.dir, "postgres", "postgres")
            data = self.dir / "data"
            subprocess.run([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N",
                            "-E", "UTF8", "--locale=C"], user="postgres", group="postgres", cwd=self.dir,
                           capture_output=True, text=True, check=True, timeout=120)
            self.log = open(self.dir / "server.log", "w")
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                 "-c", "fsync=off", "-c", "shared_buffers=16MB", "-c", "max_connections=10"],
                user="postgres", group="postgres", cwd=self.dir,
                stdout=subprocess.DEVNULL, stderr=self.log)
            deadline = time.monotonic() + 60
            while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                 timeout=10).returncode != 0:
                assert self.proc.poll() is None, (self.dir / "server.log").read_text()
                assert time.monotonic() < deadline, "PostgreSQL did not accept connections within 60 s"
                time.sleep(0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: fast shutdown, backends are terminated
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def test_real_postgresql_pg_sleep(workload_cgroup):
    """psql (libpq: non-blocking socket, send/recv via sendto/recvfrom) in the target cgroup
    runs ``SELECT pg_sleep(0.1)`` K times on one connection to a real PostgreSQL on 127.0.0.1.
    At least K requests to 127.0.0.1:<port> take >= 65.5 ms; connection start-up adds a few
    fast round trips (SSLRequest answered 'N', then start-up and trust authentication), and a
    loaded machine could push a start-up round trip over 65.5 ms too, hence "at least" K slow
    and at most 4 start-up requests besides the K queries. Only this one peer appears."""
    k = 5
    psql_args = [str(postgres_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                 "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"]
    for _ in range(k):
        psql_args += ["-c", "SELECT pg_sleep(0.1)"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "20"}
    with ThrowawayPostgres() as pg:
        def workload() -> None:
            client = spawn(*psql_args, "-p", str(pg.port), cgroup=workload_cgroup, env=env)
            try:
                out, _ = client.communicate(timeout=60)
                assert client.returncode == 0, out
            finally:
                stop(client)
        r = await capture(CaptureTarget(cgroups=[workload_cgroup.path]), workload)
    peer = f"127.0.0.1:{pg.port}"
    assert list(peer_counts(r, "peers")) == [peer], r.top
    assert peer_counts(r, "slow_peers").get(peer, 0) >= k, r.top
    assert k < r.counters["requests"] <= k + 4, r.counters
    h = r.histograms["latency"]
    assert sum(c for upper, c in h.buckets.items() if upper // 2 >= 65536) >= k, h.buckets
    print(f"postgres: {r.counters} buckets={dict(sorted(h.buckets.items()))}")


# N plain request/replies, then N HTTPS requests through http.client (OpenSSL writes its records
# with write()) and N through asyncio's TLS streams (records sent with send()).
MIXED_CLIENT = r"""
import asyncio, http.client, socket, ssl, sys
plain_port, tls_port, cafile, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sys.stdin.readline()
plain = socket.create_connection(("127.0.0.1", plain_port))
lines = plain.makefile("rb")
for _ in range(n):
    plain.sendall(b"query\n")
    assert lines.readline() == b"reply\n"
ctx = ssl.create_default_context(cafile=cafile)
conn = http.client.HTTPSConnection("127.0.0.1", tls_port, context=ctx, timeout=20)
for _ in range(n):
    conn.request("GET", "/")
    conn.getresponse().read()

async def streams():
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx)
    for _ in range(n):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        await reader.readexactly(length)
    writer.close()

asyncio.run(streams())
print("done 0", flush=True)
"""


async def test_tls_connections_are_left_to_tls_http(workload_cgroup):
    """Only the plain backend's N requests are counted: the TLS connections' requests start with
    a TLS record header, whether written with write() or send(), and are not timed here (a
    provider's answers must not pass for a backend's latency)."""
    from tests.standins.tls_server import TLSServer

    n = 8
    server = spawn(sys.executable, "-c", DELAY_SERVER, "0.01")
    client = None
    try:
        with TLSServer(delay_s=0.05) as tls:
            plain_port = int(server.stdout.readline())
            client = spawn(sys.executable, "-c", MIXED_CLIENT, str(plain_port), str(tls.port), str(tls.certfile), str(n),
                           cgroup=workload_cgroup)
            r = await capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: run_client(client, timeout=60))
            served = len(tls.served)
    finally:
        stop(*[p for p in (server, client) if p])
    assert served == 2 * n  # the TLS requests were made and answered
    assert peer_counts(r, "peers") == {f"127.0.0.1:{plain_port}": n}, r.top
    assert r.counters["requests"] == n and r.histograms["latency"].count == n


# Connects first (a pool's connection, older than any capture), says so, then makes N requests
# once released.
POOLED_CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = socket.create_connection(("127.0.0.1", port))
lines = conn.makefile("rb")
print("connected", flush=True)
sys.stdin.readline()
for _ in range(n):
    conn.sendall(b"query\n")
    assert lines.readline() == b"reply\n"
print("done 0", flush=True)
"""


async def test_a_connection_opened_before_the_probe_loaded_is_measured(workload_cgroup):
    """A database pool connects long before an alert: its peer is read from /proc when the probe
    attaches, so its N requests are counted (connect() was never seen)."""
    n = 10
    server = spawn(sys.executable, "-c", DELAY_SERVER, "0.005")
    client = None
    try:
        port = int(server.stdout.readline())
        client = spawn(sys.executable, "-c", POOLED_CLIENT, str(port), str(n), cgroup=workload_cgroup)
        assert client.stdout.readline().strip() == "connected"
        notes: list[str] = []

        def run() -> ProbeResult:
            with ProbeSession(PROBE, identity.resolve(CaptureTarget(cgroups=[workload_cgroup.path]))) as session:
                notes.extend(session.notes)
                run_client(client)
                time.sleep(0.2)
                return to_result(PROBE, session.read_raw(), None, 1.0)

        r = await asyncio.to_thread(run)
    finally:
        stop(*[p for p in (server, client) if p])
    assert notes == ["peers of 1 already-open TCP connection(s) read from /proc"], notes
    assert peer_counts(r, "peers") == {f"127.0.0.1:{port}": n}, r.top


# A connected UDP socket making request/reply exchanges (as a stub resolver does), released by "go".
UDP_CLIENT = r"""
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", port))
for _ in range(n):
    u.send(b"query")
    assert u.recv(100) == b"reply"
print("done 0", flush=True)
"""


async def test_a_connected_udp_socket_is_not_a_backend(workload_cgroup):
    """A resolver's queries go over a connected UDP socket: the dns probe times them, and they
    must not pass for a backend's replies. Only the TCP client's requests count."""
    import socket
    import threading

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    done = threading.Event()

    def echo() -> None:
        while not done.is_set():
            try:
                _, addr = udp.recvfrom(100)
            except TimeoutError:
                continue
            time.sleep(0.005)
            udp.sendto(b"reply", addr)

    n = 8
    server = spawn(sys.executable, "-c", DELAY_SERVER, "0.005")
    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    clients: list[subprocess.Popen] = []
    try:
        tcp_port = int(server.stdout.readline())

        def workload() -> None:
            clients.append(spawn(sys.executable, "-c", UDP_CLIENT, str(udp.getsockname()[1]), str(n),
                                 cgroup=workload_cgroup))
            clients.append(spawn(sys.executable, "-c", POOLED_CLIENT, str(tcp_port), str(n), cgroup=workload_cgroup))
            assert clients[1].stdout.readline().strip() == "connected"
            for c in clients:
                run_client(c)

        r = await capture(CaptureTarget(cgroups=[workload_cgroup.path]), workload)
    finally:
        done.set()
        thread.join(timeout=5)
        udp.close()
        stop(server, *clients)
    assert peer_counts(r, "peers") == {f"127.0.0.1:{tcp_port}": n}, r.top
    assert r.counters["requests"] == n


# A server in the workload: it accepts one connection, then answers each request line.
WORKLOAD_SERVER = r"""
import socket
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
with conn, conn.makefile("rb") as lines:
    for _ in lines:
        conn.sendall(b"reply\n")
"""


async def test_a_connection_the_workload_accepted_is_not_a_backend(workload_cgroup):
    """A connection the workload accepted before the probe loaded (a metrics scrape, a client's
    keep-alive) is the workload answering, not calling out: read from /proc, it is left out, or
    the gaps between the client's requests would be timed as a backend's replies."""
    import socket

    server = spawn(sys.executable, "-c", WORKLOAD_SERVER, cgroup=workload_cgroup)
    conn = None
    notes: list[str] = []
    try:
        port = int(server.stdout.readline())
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        lines = conn.makefile("rb")
        conn.sendall(b"first\n")
        assert lines.readline() == b"reply\n"  # accepted and established before the probe loads

        def run() -> ProbeResult:
            with ProbeSession(PROBE, identity.resolve(CaptureTarget(cgroups=[workload_cgroup.path]))) as session:
                notes.extend(session.notes)
                for _ in range(6):
                    time.sleep(0.05)  # the client's pause: what the server would wait for
                    conn.sendall(b"query\n")
                    assert lines.readline() == b"reply\n"
                time.sleep(0.2)
                return to_result(PROBE, session.read_raw(), None, 1.0)

        r = await asyncio.to_thread(run)
    finally:
        if conn is not None:
            conn.close()
        stop(server)
    assert not any("already-open" in n for n in notes), notes
    assert r.counters.get("requests", 0) == 0 and not r.top.get("peers"), (r.counters, r.top)
