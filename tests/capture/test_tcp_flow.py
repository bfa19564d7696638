"""tcp_flow against TCP transfers the tests make: a client in a WorkloadCgroup sends and receives
a known number of bytes to a loopback server, and the probe's counts are compared with them.

Ground truth is what the test's own processes sent and read. bcc's tcplife-bpfcc (TX_KB/RX_KB)
was tried as a second oracle and is not usable here: it reads tcp_sock.bytes_acked and
bytes_received through the 6.1 headers' struct layout on the 6.18 kernel, and printed
TX_KB=83886994 RX_KB=0 for a connection that sent 3,000 KB and received 1,000 KB (the same
kind of garbage for every connection), so these tests rely on the ground truth alone.

The probe is loaded through ProbeSession directly rather than the agent: loading returns only
once the program is attached, scoped and armed, so each workload starts (and connects: client
sockets' owners are learned at connect()) after the probe is live, with no sleep guessed from
compile time on a shared, loaded machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from capture import identity
from capture.probes import CATALOG
from capture.probes.base import to_result
from capture.probes.tcp_flow import mean_rtt_us
from capture.schemas import CaptureTarget, ProbeResult
from capture.session import ProbeSession

pytestmark = pytest.mark.kernel

PROBE = CATALOG["tcp_flow"]

# Each connection: read exactly S bytes, send R bytes, then either close at once ("close") or
# wait for the client to close first ("wait"). Prints its port; serves until killed.
SERVER = r"""
import socket, sys, threading
host, S, R, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def serve(c):
    with c:
        got = 0
        while got < S:
            b = c.recv(min(65536, S - got))
            if not b:
                return
            got += len(b)
        c.sendall(b"r" * R)
        if mode == "wait":
            while c.recv(65536):
                pass

srv = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
srv.bind((host, 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# After "go": one connection, send S bytes, read exactly R, then (wait_eof=1) read until the
# server's FIN or (0) close at once.
CLIENT = r"""
import socket, sys
host, port, S, R, wait_eof = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sys.stdin.readline()
s = socket.create_connection((host, port), timeout=20)
s.sendall(b"s" * S)
got = 0
while got < R:
    b = s.recv(65536)
    assert b, "server closed early"
    got += len(b)
assert got == R, got
if wait_eof:
    while s.recv(65536):
        pass
s.close()
print("done", flush=True)
"""

# Serves each connection either by reading at once ("read") or by never reading ("hold"): the
# kernel then ACKs pushed data when the application reads it, or only when its delayed-ACK timer
# (40 ms) fires, once the first segments' quick ACKs are spent.
DRIP_SERVER = r"""
import socket, sys, threading
mode = sys.argv[1]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
held = []

def serve(c):
    while c.recv(65536):
        pass
    c.close()

while True:
    c, _ = srv.accept()
    if mode == "read":
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    else:
        held.append(c)
"""

# After "go": one connection to each port, then N rounds of 100 bytes on each, 50 ms apart.
DRIP_CLIENT = r"""
import socket, sys, time
ports, n = [int(p) for p in sys.argv[1].split(",")], int(sys.argv[2])
sys.stdin.readline()
conns = [socket.create_connection(("127.0.0.1", p), timeout=20) for p in ports]
for _ in range(n):
    for c in conns:
        c.sendall(b"m" * 100)
    time.sleep(0.05)
for c in conns:
    c.close()
print("done", flush=True)
"""


def spawn(*args: str, cgroup=None) -> subprocess.Popen:
    """A Python process started inside ``cgroup`` (moved there before it execs) or, without one, here."""
    procs = cgroup.dir / "cgroup.procs" if cgroup else None
    return subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: procs.write_text(str(os.getpid()))) if procs else None)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.kill()
        p.wait()


def release(*clients: subprocess.Popen, timeout: float = 60.0) -> None:
    """Let the clients start at once, then wait for each to say it is done."""
    for c in clients:
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in clients:
        out, _ = c.communicate(timeout=timeout)
        assert out.strip() == "done", out


def capture(target: CaptureTarget, workload) -> ProbeResult:
    """Load the probe scoped to ``target`` (armed when the load returns), run ``workload()``,
    then read the result."""
    scope = identity.resolve(target)
    t0 = time.monotonic()
    with ProbeSession(PROBE, scope) as session:
        workload()
        time.sleep(0.3)  # the last segments and reads of a closed connection land in this time
        r = to_result(PROBE, session.read_raw(), None, time.monotonic() - t0)
        stats, r.cost = session.stats(), session.cost()
        r.events, r.lost = stats.events, stats.lost
    return r


def peer_counts(r: ProbeResult, top: str) -> dict[str, int]:
    return {e["peer"]: e["count"] for e in r.top.get(top, [])}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_bytes_per_peer_match_what_the_client_sent_and_read(workload_cgroup, host):
    """A client in the cgroup sends S = 3,000,000 bytes and reads R = 1,000,000. bytes_acked
    must be S and bytes_received R, exactly, all for the server's address.

    Why exact (tolerance 0): the SYN's sequence number is acknowledged before the socket is
    ESTABLISHED, and tcp_probe fires only in ESTABLISHED, so the first event's snd_una is
    already past it (it is the baseline); the FIN is sent after the last event the client's
    socket can see (the server closes first, then the client), so it is never counted either.
    The ACK of the last request bytes rides on the server's first reply segment and shows in
    snd_una at the next one (R spans many segments). Received bytes are what recvmsg returned
    (sock_recv_length), exact by construction. There is no loss on loopback to retransmit."""
    S, R = 3_000_000, 1_000_000
    server = spawn("-c", SERVER, host, str(S), str(R), "close")
    client = None
    try:
        port = int(server.stdout.readline())
        client = spawn("-c", CLIENT, host, str(port), str(S), str(R), "1", cgroup=workload_cgroup)
        r = capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: release(client))
    finally:
        stop(server, *([client] if client else []))
    peer = f"127.0.0.1:{port}" if host == "127.0.0.1" else f"[::1]:{port}"
    assert r.lost == 0
    assert r.counters["bytes_acked"] == S, r.counters
    assert r.counters["bytes_received"] == R, r.counters
    assert peer_counts(r, "tx_bytes_peers") == {peer: S}
    assert peer_counts(r, "rx_bytes_peers") == {peer: R}
    # Loopback: a sRTT of tens of microseconds, far below 10 ms.
    assert r.histograms["srtt"].count > 0
    assert 0 < mean_rtt_us(r)[peer] < 10_000, r.top
    assert r.events > 0 and r.cost.bpf_run_count > 0 and r.cost.bpf_run_time_ns > 0


def test_server_side_is_attributed_through_the_owner_learned_at_recvmsg(workload_cgroup):
    """The server runs in the cgroup and the client outside. The server's ACKs arrive in
    softirq, where the current task is not the server: they are attributed through the owner
    that owners.h learns at the server's first recvmsg (tcp_rcv_space_adjust).

    bytes_received must be S exactly (counted at recvmsg, in the server's own context).
    bytes_acked is R minus at most one segment (65,483 bytes of payload at loopback's MTU): the
    client ACKs data as it arrives, but the ACK of the last segment can travel only on the
    client's FIN, and tcp_probe shows snd_una before the segment it fires for is processed, so
    progress carried by the last segment a socket receives in ESTABLISHED is not seen.
    (Measured: exactly R in 4 of 4 runs; the tolerance covers the FIN-only case.)"""
    S, R = 1_000_000, 2_000_000
    server = spawn("-c", SERVER, "127.0.0.1", str(S), str(R), "wait", cgroup=workload_cgroup)
    client = None
    try:
        port = int(server.stdout.readline())
        client = spawn("-c", CLIENT, "127.0.0.1", str(port), str(S), str(R), "0")
        r = capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: release(client))
    finally:
        stop(server, *([client] if client else []))
    assert r.counters["bytes_received"] == S, r.counters
    assert R - 65_483 <= r.counters["bytes_acked"] <= R, r.counters
    (peer,) = peer_counts(r, "rx_bytes_peers")  # the client's ephemeral port
    assert peer.startswith("127.0.0.1:") and peer != f"127.0.0.1:{port}"
    assert peer_counts(r, "tx_bytes_peers") == {peer: r.counters["bytes_acked"]}


def test_traffic_outside_the_cgroup_is_not_counted(workload_cgroup):
    """A client in the cgroup moves 100,000 bytes up and 50,000 down while a client outside it
    moves 3,000,000 up and 1,000,000 down, at the same time, to a second server on the same
    host. The capture scoped to the cgroup counts exactly the inside client's bytes and peer."""
    S, R = 100_000, 50_000
    # A server answers every connection with the same sizes: one server per client.
    inside_server = spawn("-c", SERVER, "127.0.0.1", str(S), str(R), "close")
    outside_server = spawn("-c", SERVER, "127.0.0.1", "3000000", "1000000", "close")
    clients: list[subprocess.Popen] = []
    try:
        in_port = int(inside_server.stdout.readline())
        out_port = int(outside_server.stdout.readline())
        clients = [spawn("-c", CLIENT, "127.0.0.1", str(in_port), str(S), str(R), "1", cgroup=workload_cgroup),
                   spawn("-c", CLIENT, "127.0.0.1", str(out_port), "3000000", "1000000", "1")]
        r = capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: release(*clients))
    finally:
        stop(inside_server, outside_server, *clients)
    peer = f"127.0.0.1:{in_port}"
    assert r.counters["bytes_acked"] == S, r.counters
    assert r.counters["bytes_received"] == R, r.counters
    assert peer_counts(r, "tx_bytes_peers") == {peer: S}
    assert peer_counts(r, "rx_bytes_peers") == {peer: R}
    assert set(peer_counts(r, "rtt_samples")) <= {peer}


def test_srtt_per_peer_separates_a_prompt_peer_from_one_that_delays_its_acks(workload_cgroup):
    """A client in the cgroup sends 100 bytes every 50 ms, 60 times, on two connections: to a
    server that reads at once (the kernel ACKs pushed data as it is read: sRTT of tens of
    microseconds on loopback) and to one that never reads (after the first ~16 quick ACKs,
    each segment is ACKed by the 40 ms delayed-ACK timer, and the kernel's sRTT climbs toward
    40 ms: the exponential average over 16 quick and 44 delayed samples is about 25 ms).

    Asserted: each peer has at least 30 of its 60 samples (one per ACK, at most one per 10 ms;
    measured 60 and 60); the prompt peer's mean sRTT is below 10 ms (measured 58-142 us) and
    the delaying peer's above 5 ms (measured 25.2-26.5 ms in 4 of 4 runs) and 10x the prompt
    one's; over 20% of the cgroup's samples are >= 8 ms (measured 35%).

    Why not packet loss, as first planned: under 20% nftables loss (30-40 request/reply rounds)
    the mean sRTT rose to 6-50 ms in 4 of 6 runs but stayed at 220-310 us in the other 2.
    Whether a retransmission timeout ends up inside an RTT sample depends on timing (Karn's rule
    discards samples of retransmitted data), so it is not a check that holds every run. The
    delayed-ACK timer is deterministic.

    Also checks the documented lag of bytes_acked: the prompt peer's ACKs each arrive on their
    own, and the progress each brings shows at the next one, so the last 100 bytes, whose ACK
    is the last segment the socket receives while ESTABLISHED, are not counted."""
    n = 60
    prompt = spawn("-c", DRIP_SERVER, "read")
    holding = spawn("-c", DRIP_SERVER, "hold")
    client = None
    try:
        prompt_port, holding_port = int(prompt.stdout.readline()), int(holding.stdout.readline())
        client = spawn("-c", DRIP_CLIENT, f"{prompt_port},{holding_port}", str(n), cgroup=workload_cgroup)
        r = capture(CaptureTarget(cgroups=[workload_cgroup.path]), lambda: release(client))
    finally:
        stop(prompt, holding, *([client] if client else []))
    fast, slow = f"127.0.0.1:{prompt_port}", f"127.0.0.1:{holding_port}"
    samples, mean = peer_counts(r, "rtt_samples"), mean_rtt_us(r)
    assert samples.get(fast, 0) >= n // 2 and samples.get(slow, 0) >= n // 2, samples
    assert r.histograms["srtt"].count == samples[fast] + samples[slow]
    assert 0 < mean[fast] < 10_000, mean
    assert mean[slow] > 5_000 and mean[slow] > 10 * mean[fast], mean
    assert r.histograms["srtt"].fraction_above(8192) > 0.2, r.histograms["srtt"].buckets
    assert peer_counts(r, "tx_bytes_peers")[fast] == (n - 1) * 100
