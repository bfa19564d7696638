"""tls_http against real HTTPS: a local TLS server answers a scripted sequence of statuses, real
clients (CPython's http.client, which calls SSL_read_ex/SSL_write_ex, and `openssl s_client`,
which calls SSL_read/SSL_write) in a real cgroup read them, and the probe's uprobes on the
clients' libssl must count exactly what the server answered them."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import pytest

from capture import identity
from capture.agent import CaptureAgent
from capture.probes.base import to_result
from capture.probes.tls_http import PROBE
from capture.schemas import CaptureRequest, CaptureTarget, ProbeResult
from capture.session import ProbeLoadError, ProbeSession
from tests.capture.conftest import until_armed
from tests.standins.tls_server import Reply, TLSServer

pytestmark = pytest.mark.kernel

# A keep-alive HTTPS client: loads libssl (import ssl) and optionally connects, says "ready",
# waits for "go", then makes n requests on one TLS connection and prints the statuses it got.
CLIENT = r"""
import http.client, ssl, sys
port, cafile, n, connect_first = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=cafile), timeout=20)
if connect_first:
    conn.connect()
print("ready", flush=True)
sys.stdin.readline()
got = []
for _ in range(n):
    conn.request("POST", "/v1/chat/completions", body=b'{"model": "m", "messages": []}',
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    got.append(r.status)
conn.close()
print(" ".join(map(str, got)), flush=True)
"""

STARTUP_TIMEOUT_S = 20  # a python client importing ssl on a loaded 2-core machine


def spawn(argv: list[str], cgroup=None) -> subprocess.Popen:
    """Start ``argv`` with pipes for stdin and stdout, inside ``cgroup`` from before exec."""
    enter = None
    if cgroup is not None:
        procs = cgroup.dir / "cgroup.procs"

        def enter() -> None:  # runs in the child
            procs.write_text(str(os.getpid()))
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, preexec_fn=enter)


def start_client(port: int, certfile: str, n: int, cgroup=None, connect_first: bool = False) -> subprocess.Popen:
    return spawn([sys.executable, "-c", CLIENT, str(port), certfile, str(n), "1" if connect_first else "0"], cgroup)


def wait_line(p: subprocess.Popen, timeout: float = STARTUP_TIMEOUT_S) -> str:
    """The next line the process prints (it must print one within ``timeout``)."""
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    assert out, f"process {p.pid} printed nothing within {timeout}s"
    return out[0].strip()


def go(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()


def run_clients(clients: list[subprocess.Popen]) -> list[list[int]]:
    for c in clients:
        go(c)
    return [[int(s) for s in wait_line(c, 60).split()] for c in clients]


def stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def capture_around(target: CaptureTarget, action) -> tuple[ProbeResult, list[str], tuple[int, int]]:
    """Load the probe scoped to ``target`` (compiled, attached and armed when load() returns),
    run ``action``, and read the result: (result, attach notes, (events, lost))."""
    with ProbeSession(PROBE, identity.resolve(target)) as s:
        t0 = time.monotonic()
        action()
        raw = s.read_raw()
        st = s.stats()
        return to_result(PROBE, raw, None, time.monotonic() - t0), s.notes, (st.events, st.lost)


def counts(r: ProbeResult) -> dict[str, int]:
    return {k: int(v) for k, v in r.counters.items()}


def top(r: ProbeResult, name: str) -> dict[str, int]:
    return {e["peer"]: e["count"] for e in r.top.get(name, [])}


# The 200s' bodies are 128 KiB of fake status lines, 16 bytes each, so every TLS record (16 KiB)
# the client reads after the head starts with "HTTP/1.1 500 xx\n": a body read mistaken for a
# response start would show up as a 5xx.
FAKE_LINES = b"HTTP/1.1 500 xx\n" * 8192


def test_statuses_counted_exactly_per_peer(workload_cgroup):
    """5 responses 429, 3 responses 200 (with long bodies read in many SSL_read_ex calls) and
    2 responses 529 on one keep-alive TLS connection from a process in the target cgroup:
    counted exactly, under the peer 127.0.0.1:<port>."""
    statuses = [429, 429, 200, 529, 429, 200, 429, 529, 200, 429]
    script = [Reply(200, body=FAKE_LINES) if s == 200 else s for s in statuses]
    with TLSServer(script) as srv:
        client = start_client(srv.port, srv.certfile, len(script), workload_cgroup)
        out: list[list[int]] = []
        try:
            assert wait_line(client) == "ready"  # libssl is mapped: the probe can find it
            result, notes, (events, lost) = capture_around(CaptureTarget(cgroups=[workload_cgroup.path]),
                                                           lambda: out.extend(run_clients([client])))
        finally:
            stop([client])
    peer = f"127.0.0.1:{srv.port}"
    assert out == [statuses] and srv.served == statuses
    assert any("SSL_read_ex" in n and "SSL_write_ex" in n for n in notes), notes
    assert counts(result) == {"responses": 10, "status_429": 5, "status_5xx": 2, "status_4xx_other": 0,
                              "status_2xx": 3}
    assert top(result, "status_by_peer") == {f"{peer} 429": 5, f"{peer} 200": 3, f"{peer} 529": 2}
    assert top(result, "throttled_peers") == {peer: 5}
    assert top(result, "error_peers") == {peer: 2}
    assert top(result, "responses_by_peer") == {peer: 10}
    assert result.histograms["ttfb"].count == 10
    assert (events, lost) == (10, 0)


def test_ttfb_histogram_sees_a_slow_provider(workload_cgroup):
    """The server sleeps 100 ms after reading each request before answering: every time to
    first byte lands in a bucket at or above 64 ms.

    Tolerance: the lower bound is physical (the first byte cannot come before the server's
    sleep ends), so all 5 must be >= 65,536 us; the upper bound allows up to ~2 s of scheduling
    delay on a shared 2-core machine (no bucket above 2^21 us)."""
    n = 5
    with TLSServer([200] * n, delay_s=0.1) as srv:
        client = start_client(srv.port, srv.certfile, n, workload_cgroup)
        out: list[list[int]] = []
        try:
            assert wait_line(client) == "ready"
            result, _, _ = capture_around(CaptureTarget(cgroups=[workload_cgroup.path]),
                                          lambda: out.extend(run_clients([client])))
        finally:
            stop([client])
    assert out == [[200] * n]
    h = result.histograms["ttfb"]
    assert h.unit == "us"
    assert h.count == n, h.buckets
    # Bucket keys are upper bounds: [2^16, 2^17) us has key 2^17.
    assert all(upper >= 2 ** 17 for upper in h.buckets), h.buckets
    assert all(upper <= 2 ** 21 for upper in h.buckets), h.buckets
    peer = f"127.0.0.1:{srv.port}"
    assert top(result, "responses_by_peer") == {peer: n}
    assert 100 * n <= top(result, "ttfb_ms_by_peer")[peer] <= 2100 * n


async def test_scope_counts_only_the_target_cgroup(workload_cgroup):
    """Through the capture agent: a client in the target cgroup gets 503, 503, 404, 200 while
    a client outside it gets six 429s from another server at the same time. Only the first
    client's responses are counted."""
    inside_script, outside_script = [503, 503, 404, 200], [429] * 6
    agent = CaptureAgent(recorder=False)
    with TLSServer(inside_script) as srv_in, TLSServer(outside_script) as srv_out:
        inside = start_client(srv_in.port, srv_in.certfile, len(inside_script), workload_cgroup)
        outside = start_client(srv_out.port, srv_out.certfile, len(outside_script))
        try:
            assert await asyncio.to_thread(wait_line, inside) == "ready"
            assert await asyncio.to_thread(wait_line, outside) == "ready"
            req = CaptureRequest(target=CaptureTarget(cgroups=[workload_cgroup.path]), probes=["tls_http"],
                                 duration_s=12, baseline_s=0)
            task = asyncio.create_task(agent.capture(req))
            await until_armed(agent)
            assert not task.done(), "the capture ended before the clients ran"
            statuses = await asyncio.to_thread(run_clients, [inside, outside])
            result = await task
        finally:
            stop([inside, outside])
    assert statuses == [inside_script, outside_script]
    r = result.incident["tls_http"]
    assert r.error is None, r.error
    peer = f"127.0.0.1:{srv_in.port}"
    assert counts(r) == {"responses": 4, "status_429": 0, "status_5xx": 2, "status_4xx_other": 1,
                         "status_2xx": 1}
    assert top(r, "status_by_peer") == {f"{peer} 503": 2, f"{peer} 404": 1, f"{peer} 200": 1}
    assert top(r, "throttled_peers") == {}
    assert r.events == 4 and r.lost == 0
    assert r.cost.bpf_run_count > 0 and r.cost.bpf_run_time_ns > 0
    assert any("libssl" in n for n in r.notes), r.notes


def test_peer_of_a_connection_opened_before_the_capture(workload_cgroup):
    """A pooled connection opened (TCP and TLS handshake) before the probe loaded: its connect()
    was never seen, so its peer comes from /proc at attach time, not "unknown"."""
    with TLSServer([429, 429, 200]) as srv:
        client = start_client(srv.port, srv.certfile, 3, workload_cgroup, connect_first=True)
        out: list[list[int]] = []
        try:
            assert wait_line(client) == "ready"  # connected
            result, notes, _ = capture_around(CaptureTarget(cgroups=[workload_cgroup.path]),
                                              lambda: out.extend(run_clients([client])))
        finally:
            stop([client])
    assert out == [[429, 429, 200]]
    peer = f"127.0.0.1:{srv.port}"
    assert top(result, "throttled_peers") == {peer: 2}
    assert top(result, "status_by_peer") == {f"{peer} 429": 2, f"{peer} 200": 1}
    assert any("already-open TCP connection" in n for n in notes), notes


def test_openssl_s_client_uses_the_non_ex_family(workload_cgroup):
    """`openssl s_client` calls SSL_write/SSL_read (not the _ex family CPython uses). Two
    requests over its one connection, answered 429 then 200, are both counted."""
    with TLSServer([429, 200]) as srv:
        client = spawn(["openssl", "s_client", "-quiet", "-ign_eof", "-CAfile", srv.certfile,
                        "-connect", f"127.0.0.1:{srv.port}"], workload_cgroup)
        request = "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        bodies: list[str] = []

        def two_requests() -> None:
            for _ in range(2):
                client.stdin.write(request)
                client.stdin.flush()
                while True:  # the head, a blank line, then the one-line JSON body
                    line = wait_line(client, 20)
                    if line.startswith("{"):
                        bodies.append(line)
                        break

        try:
            # Connected and past the handshake before the probe loads: its peer is read from /proc.
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while srv.handshakes < 1:
                assert time.monotonic() < deadline, "s_client never completed a TLS handshake"
                time.sleep(0.05)
            result, _, _ = capture_around(CaptureTarget(cgroups=[workload_cgroup.path]), two_requests)
        finally:
            stop([client])
    assert len(bodies) == 2 and '"status": 429' in bodies[0]
    peer = f"127.0.0.1:{srv.port}"
    assert top(result, "status_by_peer") == {f"{peer} 429": 1, f"{peer} 200": 1}
    assert result.histograms["ttfb"].count == 2


def test_target_without_libssl_is_refused(workload_cgroup):
    """A target whose processes never load libssl cannot be probed: the load fails with a
    message that says so."""
    idle = spawn([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
                 workload_cgroup)
    try:
        assert wait_line(idle) == "ready"
        with pytest.raises(ProbeLoadError, match="does not map libssl"):
            ProbeSession(PROBE, identity.resolve(CaptureTarget(cgroups=[workload_cgroup.path]))).load()
    finally:
        stop([idle])
