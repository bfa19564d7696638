"""The lab's shaped path: a queue the kernel sees, on a path of namespaces the lab made, removed
however the test ends."""
from __future__ import annotations

import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

import pytest

from lab import faults, netpath
from lab.netpath import ShapedPath

pytestmark = pytest.mark.lab

ECHO = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(4)\nc,_=s.accept()\n"
        "while True:\n d=c.recv(4096)\n if not d: break\n c.sendall(d)\n")
TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then tcpi_rtt is the 16th u32 (µs)


def kernel_rtt_ms(sock: socket.socket) -> float:
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), TCPI_RTT_OFFSET)[0] / 1e3


def round_trips_ms(sock: socket.socket, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.monotonic()
        sock.sendall(b"x" * 200)
        sock.recv(4096)
        out.append((time.monotonic() - t) * 1000)
    return out


def connect(path: ShapedPath, port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection((path.ns_addr, port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_shaped_path_delays_what_crosses_it_and_the_kernel_measures_it():
    delay = 120
    with ShapedPath(7) as path:
        assert path.exists()
        path.spawn([sys.executable, "-c", ECHO, path.ns_addr, "7000"])
        sock = connect(path, 7000)
        before = statistics.median(round_trips_ms(sock, 20))
        assert before < 5, before
        path.shape(delay)
        time.sleep(3)  # the bulk flow fills the queue
        shaped = round_trips_ms(sock, 15)
        assert statistics.median(shaped) > delay * 0.5, shaped
        assert kernel_rtt_ms(sock) > delay * 0.4  # what tcp_flow's sRTT reads
        path.unshape()
        time.sleep(0.5)
        assert statistics.median(round_trips_ms(sock, 20)) < 5
        sock.close()
        bulk_gone = not path._bulk
    assert bulk_gone and not path.exists()
    assert path.ns not in netpath.namespaces() and path.router_ns not in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", path.host_if], capture_output=True).returncode != 0
    assert all(p.poll() is not None for p in path.procs) and not path.procs


def test_a_path_left_by_a_killed_run_is_swept():
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys,time\nfrom lab.netpath import ShapedPath\np=ShapedPath(9).create()\np.shape(50)\n"
        "print(p.ns,flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        ns = child.stdout.readline().strip()
        assert ns in netpath.namespaces()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.5)  # its bulk processes die with it (parent-death signal)
    swept = faults.sweep_stale()
    assert ns in swept["netns"] and ns not in netpath.namespaces()
    assert not [n for n in netpath.namespaces() if n.startswith(f"{netpath.NS_PREFIX}{child.pid}-")]
