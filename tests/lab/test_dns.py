"""The lab's DNS server and its faults, seen by real resolvers.

Ground truth on the client side: a child process calls glibc's ``getaddrinfo`` (AF_UNSPEC, as
an HTTP client does: an A and an AAAA query per lookup) in a mount namespace of its own whose
``/etc/resolv.conf`` names the server (``DnsStandin.client_argv``), and reports each lookup's
answer or EAI code and its duration; dnslib's own client sends single queries. The server's
counters are compared with what the clients saw. The host's ``/etc/resolv.conf`` and this
process's mounts are checked unchanged afterwards.

Timing: the server sleeps before it answers, so a delayed lookup can never be faster than the
delay (exact lower bound); upper bounds allow 500 ms for a loaded 2-CPU machine.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE

from lab import dns
from lab.dns import DnsStandin, resolve_directly
from lab.harness import REPO
from lab.provider import ProviderProcess

# the stand-in listens on port 53 of a loopback address of its own
pytestmark = pytest.mark.needs_root

NAME = "api.provider.lab"
SLACK_S = 0.5

RESOLVER = r"""
import json, socket, sys, time
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "resolv.conf":
        print(json.dumps(open("/etc/resolv.conf").read()), flush=True)
        continue
    host, n = args[0], int(args[1])
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        rec = {}
        try:
            rec["addrs"] = sorted({a[4][0] for a in socket.getaddrinfo(host, 443, 0, socket.SOCK_STREAM)})
        except socket.gaierror as e:
            rec["err"] = e.errno
        rec["s"] = time.perf_counter() - t0
        out.append(rec)
    print(json.dumps(out), flush=True)
"""


class Child:
    """A line-oriented child process: send a command, read one JSON line back."""

    def __init__(self, argv: list[str]):
        self.p = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def ask(self, line: str, timeout: float = 60.0):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out: list[str] = []
        t = threading.Thread(target=lambda: out.append(self.p.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert out and out[0], f"no answer to {line!r}: {self.p.poll()} {self.p.stderr.read() if out else ''}"
        return json.loads(out[0])

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def host_state() -> tuple:
    """The host's resolv.conf (content, inode, mtime) and this process's mounts on /etc."""
    st = os.stat("/etc/resolv.conf")
    mounts = sorted(line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if " /etc/" in line)
    return Path("/etc/resolv.conf").read_bytes(), st.st_ino, st.st_mtime_ns, mounts


def test_getaddrinfo_in_a_child_sees_records_delay_and_failures():
    """A real glibc resolver in a child process, through the mount-namespace resolv.conf:

    - healthy: every lookup answers 127.0.0.1 (and only that: no AAAA record);
    - ``delay_ms=250``: every lookup takes at least 250 ms;
    - ``failure_fraction=0.4`` over 40 lookups: the lookups that failed (all EAI_AGAIN) are
      exactly as many as the server failed, some but not all, and the server saw exactly one A
      and one AAAA query per lookup (one verdict per lookup: no lookup half-failed);
    - fraction 1: all fail, over UDP and over TCP (``use-vc``); cleared: all succeed again.
    The host's resolv.conf and this process's mounts are untouched; the child's resolv.conf
    names the server."""
    before = host_state()
    with DnsStandin(records={NAME: "127.0.0.1"}, seed=5) as server:
        udp = Child(server.client_argv([sys.executable, "-c", RESOLVER]))
        tcp = Child(server.client_argv([sys.executable, "-c", RESOLVER], tcp=True))
        try:
            seen_conf = udp.ask("resolv.conf")
            assert seen_conf.startswith(f"nameserver {server.address}\n"), seen_conf
            assert host_state() == before

            healthy = udp.ask(f"lookup {NAME} 5")
            server.set_faults(delay_ms=250)
            delayed = udp.ask(f"lookup {NAME} 5")

            server.set_faults(failure_fraction=0.4)
            queries_before, failed_before = len(server.queries), server.lookups_failed
            mixed = udp.ask(f"lookup {NAME} 40")
            queries = list(server.queries)[queries_before:]
            server_failed = server.lookups_failed - failed_before

            server.set_faults(failure_fraction=1.0)
            all_failed = udp.ask(f"lookup {NAME} 5") + tcp.ask(f"lookup {NAME} 3")
            server.clear_faults()
            recovered = udp.ask(f"lookup {NAME} 3") + tcp.ask(f"lookup {NAME} 3")
        finally:
            udp.close()
            tcp.close()
    assert host_state() == before

    assert all(r.get("addrs") == ["127.0.0.1"] for r in healthy), healthy
    assert all(r.get("addrs") == ["127.0.0.1"] for r in delayed), delayed
    print(f"lookup time healthy {max(r['s'] for r in healthy) * 1000:.1f} ms, delay_ms=250 "
          f"{min(r['s'] for r in delayed) * 1000:.1f}..{max(r['s'] for r in delayed) * 1000:.1f} ms")
    assert all(0.250 <= r["s"] <= 0.250 + SLACK_S for r in delayed), delayed
    assert max(r["s"] for r in healthy) < 0.250

    errors = [r["err"] for r in mixed if "err" in r]
    print(f"failure_fraction=0.4: {len(errors)} of 40 lookups failed; the server failed {server_failed}")
    assert set(errors) <= {socket.EAI_AGAIN}
    assert len(errors) == server_failed and 0 < len(errors) < 40
    assert all(r.get("addrs") == ["127.0.0.1"] for r in mixed if "err" not in r)
    assert sorted(t for _, t, _ in queries) == ["A"] * 40 + ["AAAA"] * 40, queries

    assert [r.get("err") for r in all_failed] == [socket.EAI_AGAIN] * 8, all_failed
    assert all(r.get("addrs") == ["127.0.0.1"] for r in recovered), recovered
    assert server.query_count(NAME) == server.query_count(NAME, "AAAA") == 5 + 5 + 40 + 8 + 6
    assert {proto for *_, proto in server.queries} == {"udp", "tcp"}


def test_dnslib_queries_see_answers_delay_and_servfail():
    """Single queries with dnslib's client, UDP and TCP: the record's A answer, NODATA for AAAA,
    NXDOMAIN outside the records and zone, the zone still answered; ``delay_ms=150`` delays
    each answer at least 150 ms; ``failure_fraction=0.3`` fails exactly as many of 60 queries
    as the server counts, and the same seed fails the same queries again."""
    with DnsStandin(records={NAME: "127.0.0.1"}, seed=9) as server:
        a = resolve_directly(server, NAME)
        assert a.header.rcode == RCODE.NOERROR and [str(r.rdata) for r in a.rr] == ["127.0.0.1"]
        assert a.rr[0].rtype == QTYPE.A
        aaaa = resolve_directly(server, NAME, "AAAA", tcp=True)
        assert aaaa.header.rcode == RCODE.NOERROR and aaaa.rr == []
        assert resolve_directly(server, "elsewhere.lab").header.rcode == RCODE.NXDOMAIN
        assert [str(r.rdata) for r in resolve_directly(server, "db.llmslo.test").rr] == ["127.0.0.1", "127.0.0.2"]

        server.set_faults(delay_ms=150)
        for tcp in (False, True):
            t0 = time.monotonic()
            r = resolve_directly(server, NAME, tcp=tcp, timeout=5)
            took = time.monotonic() - t0
            assert r.header.rcode == RCODE.NOERROR and 0.150 <= took <= 0.150 + SLACK_S, (tcp, took)

        def pattern() -> list[bool]:
            server.reseed(9)
            failed_before = server.lookups_failed
            out = [resolve_directly(server, NAME, tcp=i % 4 == 0).header.rcode == RCODE.SERVFAIL for i in range(60)]
            assert sum(out) == server.lookups_failed - failed_before
            return out

        server.set_faults(failure_fraction=0.3)
        first = pattern()
        second = pattern()
        print(f"failure_fraction=0.3: {sum(first)} of 60 queries SERVFAIL")
        assert first == second and 0 < sum(first) < 60
        server.set_faults(failure_fraction=1.0)
        assert resolve_directly(server, NAME).header.rcode == RCODE.SERVFAIL
        server.clear_faults()
        assert resolve_directly(server, NAME).header.rcode == RCODE.NOERROR
        with pytest.raises(ValueError, match="failure_fraction"):
            server.set_faults(failure_fraction=1.5)


SDK_CLIENT = r"""
import asyncio, json, ssl, sys, time
import httpx2, openai

async def main(base_url, ca_file):
    # No idle connections: every request resolves the host name again, as the lab's service does.
    http = httpx2.AsyncClient(verify=ssl.create_default_context(cafile=ca_file),
                              limits=httpx2.Limits(max_keepalive_connections=0))
    client = openai.AsyncOpenAI(base_url=base_url, api_key="lab-key", http_client=http, max_retries=0)
    loop = asyncio.get_running_loop()
    while (line := await loop.run_in_executor(None, sys.stdin.readline)):
        t0 = time.perf_counter()
        rec = {}
        try:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True})
            rec["content"] = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        except openai.APIError as e:
            rec["err"] = type(e).__name__
        rec["s"] = time.perf_counter() - t0
        print(json.dumps(rec), flush=True)
    await client.close()
    await http.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_the_sdk_reaches_the_provider_by_name_through_the_lab_dns():
    """The official SDK in a child process whose resolver is the lab DNS server calls
    ``https://api.provider.lab:PORT/v1`` (TLS verified against that name): it streams the
    answer, and the server saw the lookups; with every lookup failing the SDK raises
    APIConnectionError; with lookups delayed 400 ms the call takes at least 400 ms longer than
    the provider's own 150 ms to the first token."""
    work = Path(tempfile.mkdtemp(prefix="llmslo-lab-test-dns-"))
    before = host_state()
    provider = ProviderProcess(work, tokens=8, tokens_per_s=1000)
    child = None
    try:
        provider.start()
        assert provider.base_url == f"https://{NAME}:{provider.port}/v1"
        with DnsStandin(records={NAME: "127.0.0.1"}, seed=1) as server:
            child = Child(server.client_argv([sys.executable, "-c", SDK_CLIENT, provider.base_url,
                                              str(provider.ca_file)]))
            ok = child.ask("go")
            lookups = server.query_count(NAME)
            server.set_faults(failure_fraction=1.0)
            failed = child.ask("go")
            server.set_faults(delay_ms=400)
            slow = child.ask("go")
            stats = provider.stats()
    finally:
        if child is not None:
            child.close()
        provider.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"SDK call through the lab DNS: healthy {ok['s']:.3f} s, DNS delayed 400 ms {slow['s']:.3f} s")
    assert ok.get("content", "").startswith("Retrieval augmented answers"), ok
    assert lookups >= 1
    assert failed.get("err") == "APIConnectionError", failed
    assert "content" in slow and slow["s"] >= 0.400 + 0.150, slow
    assert stats["by_status"] == {"200": 2}  # the failed lookup never reached the provider
    assert host_state() == before


def test_stop_and_sweep_leave_nothing():
    """stop() closes both sockets and removes the temporary directory; sweep_stale() removes
    the directory of a process that no longer exists and keeps a live process's."""
    server = DnsStandin().start()
    address, tmp = server.address, server.resolv_conf.parent
    assert tmp.name.startswith(f"llmslo-lab-dns-{os.getpid()}-")
    server.stop()
    assert not tmp.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 53), timeout=2).close()

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"llmslo-lab-dns-{dead.pid}-stale"
    live = Path(tempfile.mkdtemp(prefix=f"llmslo-lab-dns-{os.getpid()}-"))
    stale.mkdir()
    (stale / "resolv.conf").write_text("nameserver 127.53.0.1\n")
    try:
        removed = dns.sweep_stale()
        assert stale in removed and not stale.exists() and live.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)
