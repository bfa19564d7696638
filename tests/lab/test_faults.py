"""The lab's fault kinds: their parameters are validated before anything starts, and each one,
applied to a running lab stack, changes what it should where it should (and nothing once cleared).

One real stack for the module (lab.stack.LabStack: provider over TLS, PostgreSQL, proxies, DNS
server, the RAG service in its cgroups and mount namespace, Prometheus, Alertmanager, the
responder) with light load. Each test checks the fault at the place it acts: the nftables rule
and its counters, the proxy path's timing, lookups made inside the service's own mount namespace,
the service's HTTP answers, the service's cgroup files, its processes."""
from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from lab import cgroups, faults
from lab.faults import FAULT_KINDS, FaultError, make_fault, validate_fault
from lab.harness import lab_processes
from lab.stack import PROVIDER_HOST, LabStack

pytestmark = pytest.mark.lab

async_test = pytest.mark.asyncio(loop_scope="module")

# The lab's fault table: kind -> (ground-truth domain, parameters).
TABLE = {
    "packet_loss": ("network", {"target", "percent"}),
    "network_delay": ("network", {"target", "delay_ms"}),
    "middlebox_delay": ("network", {"target", "delay_ms", "jitter_ms"}),
    "connection_reset": ("network", {"target", "fraction"}),
    "dns_delay": ("dns", {"delay_ms"}),
    "dns_failure": ("dns", {"fraction"}),
    "provider_throttle": ("provider_throttling", {"fraction", "retry_after_s"}),
    "provider_overload": ("provider_throttling", {"fraction", "status"}),
    "provider_latency": ("provider_latency", {"ttft_ms"}),
    "retrieval_latency": ("retrieval_backend", {"delay_ms"}),
    "retrieval_errors": ("retrieval_backend", {"fraction"}),
    "cpu_contention": ("app_cpu", {"workers"}),
    "cpu_throttle": ("app_cpu", {"cpus"}),
    "memory_pressure": ("app_memory", {"limit_mb"}),
    "policy_latency": ("policy_layer", {"delay_ms"}),
    "policy_block": ("policy_layer", {"fraction"}),
    "noisy_neighbor": ("app_cpu", {"workers"}),
    "traffic_surge": ("traffic", {"factor"}),
    "service_restart": (None, set()),  # a no-fault case: no ground-truth domain
    "rogue_egress": (None, {"period_s"}),  # an anomaly, not a fault domain
    "unexpected_exec": ("app_cpu", {"workers"}),
}


# --- validation (no stack) ---------------------------------------------------------------------------

def test_the_registry_is_the_fault_table():
    assert set(FAULT_KINDS) == set(TABLE)
    for kind, (domain, params) in TABLE.items():
        fk = FAULT_KINDS[kind]
        assert fk.domain == domain, kind
        assert set(fk.params) == params | {"start_s", "stop_s"}, kind


@pytest.mark.parametrize("fault, field", [
    ({"kind": "packet_loss", "target": "provider"}, "percent"),
    ({"kind": "packet_loss", "target": "cache", "percent": 10}, "target"),
    ({"kind": "packet_loss", "target": "provider", "percent": 101}, "percent"),
    ({"kind": "middlebox_delay", "target": "retrieval", "delay_ms": "50ms"}, "delay_ms"),
    ({"kind": "middlebox_delay", "target": "retrieval", "delay_ms": 50, "jitter_ms": -1}, "jitter_ms"),
    ({"kind": "connection_reset", "target": "provider", "fraction": 1.5}, "fraction"),
    ({"kind": "dns_delay", "delay_ms": 10.5}, "delay_ms"),
    ({"kind": "dns_failure", "fraction": True}, "fraction"),
    ({"kind": "provider_overload", "fraction": 0.2, "status": 500}, "status"),
    ({"kind": "provider_throttle", "fraction": 0.2, "retry_after": 1}, "retry_after"),
    ({"kind": "cpu_contention", "workers": 0}, "workers"),
    ({"kind": "cpu_throttle"}, "cpus"),
    ({"kind": "memory_pressure", "limit_mb": 1}, "limit_mb"),
    ({"kind": "policy_block", "fraction": 0.1, "start_s": -1}, "start_s"),
    ({"kind": "policy_latency", "delay_ms": 100, "start_s": 10, "stop_s": 10}, "stop_s"),
    ({"kind": "disk_full"}, "kind"),
    ({"target": "provider"}, "kind"),
])
def test_invalid_faults_are_refused_naming_the_field(fault, field):
    error = validate_fault(fault)
    assert error is not None and error.startswith(f"{field}:"), error
    with pytest.raises(FaultError, match=f"^{field}:"):
        make_fault(fault)


def test_valid_faults_get_their_defaults():
    assert validate_fault({"kind": "provider_overload", "fraction": 0.3, "start_s": 5, "stop_s": 20}) is None
    f = make_fault({"kind": "provider_overload", "fraction": 0.3})
    assert f.params == {"fraction": 0.3, "status": 529} and f.domain == "provider_throttling"
    assert (f.start_s, f.stop_s) == (0.0, None)
    f = make_fault({"kind": "middlebox_delay", "target": "provider", "delay_ms": 80.0, "start_s": 5, "stop_s": 20})
    assert f.params == {"target": "provider", "delay_ms": 80, "jitter_ms": 0} and (f.start_s, f.stop_s) == (5, 20)


# --- against a running stack ---------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    async with LabStack(tmp_path_factory.mktemp("stack"), load_rps=3) as s:
        yield s
        assert s.faults == [] or all(not f.applied for f in s.faults)
    assert faults.lab_tables(os.getpid()) == []
    assert lab_processes(os.getpid()) == {}


@pytest_asyncio.fixture(loop_scope="module")
async def healthy(stack):
    """Each test starts from, and leaves, a healthy stack."""
    await stack.clear_all()
    yield stack
    await stack.clear_all()
    status, _ = await answer(stack)
    assert status == 200, "the stack is not healthy after the fault was cleared"


async def answer(stack: LabStack, timeout_s: float = 30) -> tuple[int, float]:
    """One POST /v1/answer: (status, seconds)."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async with s.post(stack.service.answer_url, json={"question": "How do retries handle 429?"}) as r:
            await r.read()
            return r.status, time.monotonic() - t0


async def try_answer(stack: LabStack) -> int | None:
    """The status of one POST /v1/answer, or None when the service does not answer."""
    try:
        return (await answer(stack, timeout_s=5))[0]
    except (TimeoutError, aiohttp.ClientError):
        return None


async def provider_probe(stack: LabStack, timeout_s: float = 10, rtt: list | None = None) -> tuple[int, float]:
    """GET /health from the provider along the service's path (its namespaces and proxy route),
    over TLS with the provider's name, as the service connects: (status, seconds). ``rtt``, when
    given, receives the socket's smoothed RTT in ms as the kernel measured it."""
    ctx = ssl.create_default_context(cafile=str(stack.provider.ca_file))
    t0 = time.monotonic()
    host, port = stack.endpoints["provider"]

    async def go() -> int:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=PROVIDER_HOST)
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {PROVIDER_HOST}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            await reader.read()
            if rtt is not None:
                sock = writer.get_extra_info("socket")
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                rtt.append(struct.unpack_from("I", info, 68)[0] / 1000)  # tcpi_rtt, µs
            return status
        finally:
            writer.close()

    status = await asyncio.wait_for(go(), timeout_s)
    return status, time.monotonic() - t0


async def lookup_in_service_namespace(stack: LabStack, name: str = PROVIDER_HOST) -> tuple[int, str, float]:
    """getaddrinfo of ``name`` inside the RAG service's own mount namespace (its resolv.conf):
    (exit status, output, seconds)."""
    t0 = time.monotonic()
    p = await asyncio.create_subprocess_exec("nsenter", "--target", str(stack.service.pid), "--mount", "--",
                                             "getent", "ahostsv4", name, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    out, _ = await p.communicate()
    return p.returncode, out.decode(), time.monotonic() - t0


@async_test
async def test_packet_loss_drops_packets_on_the_provider_path_only(healthy):
    stack = healthy
    f = await stack.apply({"kind": "packet_loss", "target": "provider", "percent": 40})
    port = stack.endpoints["provider"][1]
    assert f.table.name in faults.lab_tables(os.getpid())
    assert f.table.name.endswith(f"_loss_{port}")
    results = await asyncio.gather(*(provider_probe(stack, timeout_s=8) for _ in range(8)), return_exceptions=True)
    assert sum(f.table.counters()) > 0, "no packet of the provider path was dropped"
    slow = [r for r in results if isinstance(r, BaseException) or r[1] > 0.19]  # a retransmit waits >= 200 ms
    assert slow, results
    # The retrieval path is untouched: its address and port are not in the rule.
    rules = faults._nft("list", "table", "inet", f.table.name).stdout
    assert str(stack.endpoints["retrieval"][1]) not in rules and stack.endpoints["retrieval"][0] not in rules
    await stack.clear(f)
    assert f.table.name not in faults.lab_tables()
    assert (await provider_probe(stack))[1] < 0.5


@async_test
async def test_network_delay_queues_the_path_it_names_and_the_kernel_measures_it(healthy):
    stack = healthy
    rtt: list[float] = []
    assert (await provider_probe(stack, rtt=rtt))[1] < 0.3 and rtt[-1] < 5
    f = await stack.apply({"kind": "network_delay", "target": "provider", "delay_ms": 200})
    await asyncio.sleep(2)  # the bulk flow fills the router's queue
    status, seconds = await provider_probe(stack, rtt=rtt)
    # TLS handshake and request: at least three round trips through the queue
    assert status == 200 and seconds >= 0.25, seconds
    assert rtt[-1] >= 60, rtt  # the service's kind of socket sees it in its smoothed RTT
    assert stack.paths["retrieval"].delay_ms is None  # only the path it names
    await stack.clear(f)
    assert stack.paths["provider"].delay_ms is None
    assert (await provider_probe(stack))[1] < 0.3


@async_test
async def test_middlebox_delay_slows_the_path_it_names(healthy):
    stack = healthy
    assert (await provider_probe(stack))[1] < 0.3
    f = await stack.apply({"kind": "middlebox_delay", "target": "provider", "delay_ms": 300, "jitter_ms": 50})
    status, seconds = await provider_probe(stack)
    # TLS handshake and request: at least four one-way trips through the route, each >= 250 ms.
    assert status == 200 and seconds >= 0.95, seconds
    assert (await stack.proxies["retrieval"].stats())["delay_ms"] == 0
    await stack.clear(f)
    assert (await provider_probe(stack))[1] < 0.3


@async_test
async def test_connection_reset_resets_the_services_connections(healthy):
    stack = healthy
    f = await stack.apply({"kind": "connection_reset", "target": "provider", "fraction": 1.0})
    with pytest.raises((ConnectionResetError, ssl.SSLError)):
        await provider_probe(stack)
    status, _ = await answer(stack)
    assert status == 502  # the SDK's connection error after its retries
    assert sum(f.table.counters()) > 0
    await stack.clear(f)
    assert f.table.name not in faults.lab_tables()
    assert (await provider_probe(stack))[0] == 200


@async_test
async def test_dns_delay_slows_lookups_in_the_services_namespace(healthy):
    stack = healthy
    rc, out, seconds = await lookup_in_service_namespace(stack)
    assert rc == 0 and stack.paths["provider"].ns_addr in out and seconds < 0.5
    f = await stack.apply({"kind": "dns_delay", "delay_ms": 1200})
    rc, out, seconds = await lookup_in_service_namespace(stack)
    assert rc == 0 and seconds >= 1.2, (rc, out, seconds)
    await stack.clear(f)
    rc, out, seconds = await lookup_in_service_namespace(stack)
    assert rc == 0 and seconds < 0.5


@async_test
async def test_dns_failure_fails_lookups_in_the_services_namespace(healthy):
    stack = healthy
    f = await stack.apply({"kind": "dns_failure", "fraction": 1.0})
    rc, out, _ = await lookup_in_service_namespace(stack)
    assert rc != 0, out
    status, _ = await answer(stack)
    assert status == 502
    await stack.clear(f)
    rc, out, _ = await lookup_in_service_namespace(stack)
    assert rc == 0 and stack.paths["provider"].ns_addr in out


@async_test
async def test_provider_throttle_answers_429(healthy):
    stack = healthy
    f = await stack.apply({"kind": "provider_throttle", "fraction": 1.0, "retry_after_s": 0})
    assert (await answer(stack))[0] == 429
    assert stack.knobs["provider"]["throttle"] == {"fraction": 1.0, "retry_after_s": 0.0}
    await stack.clear(f)
    assert stack.knobs["provider"]["throttle"] is None
    assert (await answer(stack))[0] == 200


@async_test
async def test_provider_overload_answers_503(healthy):
    stack = healthy
    f = await stack.apply({"kind": "provider_overload", "fraction": 1.0, "status": 529})
    assert (await answer(stack))[0] == 503
    await stack.clear(f)
    assert (await answer(stack))[0] == 200


@async_test
async def test_provider_latency_delays_the_first_token(healthy):
    stack = healthy
    f = await stack.apply({"kind": "provider_latency", "ttft_ms": 1200})
    status, seconds = await answer(stack)
    assert status == 200 and seconds >= 1.2
    await stack.clear(f)
    status, seconds = await answer(stack)
    assert status == 200 and seconds < 1.0


@async_test
async def test_two_faults_on_one_component_keep_each_other(healthy):
    stack = healthy
    latency = await stack.apply({"kind": "provider_latency", "ttft_ms": 900})
    throttle = await stack.apply({"kind": "provider_throttle", "fraction": 1.0, "retry_after_s": 0})
    assert stack.provider.faults()["faults"]["ttft_ms"] == 900
    await stack.clear(throttle)
    assert stack.provider.faults()["faults"]["ttft_ms"] == 900  # clearing one left the other in force
    assert stack.provider.faults()["faults"]["throttle"] is None
    await stack.clear(latency)


@async_test
async def test_retrieval_latency_sleeps_inside_the_database(healthy):
    stack = healthy
    f = await stack.apply({"kind": "retrieval_latency", "delay_ms": 800})
    status, seconds = await answer(stack)
    assert status == 200 and seconds >= 0.8
    await stack.clear(f)
    assert (await answer(stack))[1] < 0.8


@async_test
async def test_retrieval_errors_fail_retrieval(healthy):
    stack = healthy
    f = await stack.apply({"kind": "retrieval_errors", "fraction": 1.0})
    assert (await answer(stack))[0] == 500
    await stack.clear(f)
    assert (await answer(stack))[0] == 200


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@async_test
async def test_cpu_contention_runs_busy_processes_in_the_services_cgroups(healthy):
    stack = healthy
    before = set(stack.service.cgroups.pids())
    f = await stack.apply({"kind": "cpu_contention", "workers": 2})
    workers = [p.pid for p in f.contention.procs]
    assert len(workers) == 2 and set(workers) <= set(stack.service.cgroups.pids()) - before
    for d in stack.service.cgroups.dirs:  # every hierarchy: cpu share, memory, the unified id
        assert set(workers) <= {int(p) for p in (d / "cgroup.procs").read_text().split()}
    ticks = [_cpu_ticks(p) for p in workers]
    await asyncio.sleep(1.0)
    assert all(_cpu_ticks(p) > t for p, t in zip(workers, ticks)), "the workers are not busy"
    await stack.clear(f)
    assert set(stack.service.cgroups.pids()) == before
    assert not any(os.path.exists(f"/proc/{p}") for p in workers)


@async_test
async def test_noisy_neighbor_runs_busy_processes_in_a_cgroup_beside_the_services(healthy):
    stack = healthy
    before = set(stack.service.cgroups.pids())
    f = await stack.apply({"kind": "noisy_neighbor", "workers": 2})
    workers = [p.pid for p in f.contention.procs]
    assert len(workers) == 2 and set(workers) == set(f.cgroup.pids())
    assert set(stack.service.cgroups.pids()) == before, "the neighbour is not in the service's cgroup"
    assert f.cgroup.path != stack.service.cgroup_path and f.cgroup.dir.name.endswith(f"-{os.getpid()}")
    ticks = [_cpu_ticks(p) for p in workers]
    await asyncio.sleep(1.0)
    assert all(_cpu_ticks(p) > t for p, t in zip(workers, ticks)), "the workers are not busy"
    cgroup_dir = f.cgroup.dir
    await stack.clear(f)
    assert not cgroup_dir.exists()
    assert not any(os.path.exists(f"/proc/{p}") for p in workers)


@async_test
async def test_traffic_surge_multiplies_the_load_and_clearing_restores_it(healthy):
    stack = healthy
    before = stack.load_rps
    f = await stack.apply({"kind": "traffic_surge", "factor": 3})
    assert stack.load_rps == pytest.approx(before * 3) and stack.load.rps == pytest.approx(before * 3)
    sent = stack.load_stats.sent
    await asyncio.sleep(2.0)
    assert stack.load_stats.sent - sent >= 2 * before * 2 * 0.8, "the surge did not send more requests"
    await stack.clear(f)
    assert stack.load_rps == pytest.approx(before) and stack.load.rps == pytest.approx(before)


@async_test
async def test_cpu_throttle_sets_the_cgroup_quota(healthy):
    stack = healthy
    cg = stack.service.cgroups
    f = await stack.apply({"kind": "cpu_throttle", "cpus": 0.2})
    assert cg.cpu_quota() == pytest.approx(0.2)
    if cg.cpu_v1:
        assert (cg.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "20000"
    else:
        assert (cg.cpu_dir / "cpu.max").read_text().split()[0] == "20000"
    throttled = cg.cpu_stat().get("nr_throttled", 0)
    await asyncio.gather(*(answer(stack) for _ in range(6)))
    assert cg.cpu_stat().get("nr_throttled", 0) > throttled, "the quota never throttled the service"
    await stack.clear(f)
    assert cg.cpu_quota() is None


@async_test
async def test_memory_pressure_limits_the_cgroup_and_the_service_comes_back(healthy):
    stack = healthy
    cg = stack.service.cgroups
    events = cg.memory_events()
    restarts = stack.service.restarts
    f = await stack.apply({"kind": "memory_pressure", "limit_mb": 24})
    limit = cg.memory_limit()
    assert limit is not None and limit == f.in_force
    # The service runs at its limit: it hits it, and is OOM-killed and restarted under it.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and stack.service.restarts == restarts:
        await try_answer(stack)
        await asyncio.sleep(0.2)
    assert stack.service.restarts > restarts, "no OOM kill / restart under a 24 MiB limit"
    assert cg.memory_events()["oom_kill"] > events["oom_kill"]
    assert cg.memory_limit() == 24 << 20  # the restart got the full limit
    await stack.clear(f)
    assert cg.memory_limit() is None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and await try_answer(stack) != 200:
        await asyncio.sleep(0.5)
    assert (await answer(stack))[0] == 200


@async_test
async def test_policy_latency_delays_the_guardrail(healthy):
    stack = healthy
    f = await stack.apply({"kind": "policy_latency", "delay_ms": 700})
    status, seconds = await answer(stack)
    assert status == 200 and seconds >= 0.7
    await stack.clear(f)
    assert (await answer(stack))[1] < 0.7


@async_test
async def test_policy_block_fails_closed_and_survives_a_restart(healthy):
    stack = healthy
    f = await stack.apply({"kind": "policy_block", "fraction": 1.0})
    assert (await answer(stack))[0] == 503
    # A restarted service gets its faults again from the stack.
    restarts, old_pid = stack.service.restarts, stack.service.pid
    os.kill(old_pid, 9)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stack.service.restarts == restarts:
        await asyncio.sleep(0.2)
    assert stack.service.pid != old_pid
    await stack.service.wait_healthy(30)
    await asyncio.sleep(0.5)  # the restart hook sends the policy faults
    assert (await answer(stack))[0] == 503
    assert stack.service.cgroup_path == cgroups.WorkloadCgroup("svc").path  # same cgroup after the restart
    assert stack.service.pid in stack.service.cgroups.pids()
    await stack.clear(f)
    assert (await answer(stack))[0] == 200


@async_test
async def test_service_restart_stops_the_service_and_it_comes_back_in_its_cgroup(healthy):
    stack = healthy
    restarts, old_pid = stack.service.restarts, stack.service.pid
    f = await stack.apply({"kind": "service_restart"})
    assert stack.service.restarts == restarts + 1 and stack.service.pid != old_pid
    assert not os.path.exists(f"/proc/{old_pid}") or open(f"/proc/{old_pid}/stat").read().split()[2] == "Z"
    assert stack.service.exits[-1]["returncode"] in (-15, 0)  # SIGTERM, or a clean exit on it
    assert stack.service.pid in stack.service.cgroups.pids()
    assert (await answer(stack))[0] == 200
    await stack.clear(f)
    assert stack.service.restarts == restarts + 1  # clearing restarts nothing


@async_test
async def test_rogue_egress_connects_from_the_services_cgroups_to_a_name_it_never_used(healthy):
    stack = healthy
    before = set(stack.service.cgroups.pids())
    f = await stack.apply({"kind": "rogue_egress", "period_s": 0.2})
    host, port = f.anomaly()["name"], int(f.anomaly()["what"].rsplit(":", 1)[1])
    assert f.anomaly()["kind"] == "egress_peer" and stack.dns.records[host] == "127.0.0.1"
    deadline = time.monotonic() + 10
    while not any(q for q in stack.dns.queries if host in str(q)):  # resolved through the lab DNS
        assert time.monotonic() < deadline, "the rogue process never looked its host up"
        await asyncio.sleep(0.2)
    rogue = set(stack.service.cgroups.pids()) - before
    assert rogue and f.proc.pid in rogue
    deadline = time.monotonic() + 10
    # it connects (and closes) again and again: its closed connections wait in TIME-WAIT
    while f"127.0.0.1:{port}" not in subprocess.run(["ss", "-Htan", f"dport = :{port}"], capture_output=True,
                                                    text=True).stdout:
        assert time.monotonic() < deadline, "no connection to the rogue address"
        await asyncio.sleep(0.1)
    pid = f.proc.pid
    await stack.clear(f)
    assert host not in stack.dns.records and set(stack.service.cgroups.pids()) == before
    assert not os.path.exists(f"/proc/{pid}")


@async_test
async def test_unexpected_exec_burns_cpu_in_the_services_cgroups_from_a_temporary_program(healthy):
    stack = healthy
    before = set(stack.service.cgroups.pids())
    f = await stack.apply({"kind": "unexpected_exec", "workers": 1})
    [proc] = f.procs
    exe = Path(f.anomaly()["what"])
    assert f.anomaly()["kind"] == "executable" and exe.exists() and exe.name == "kworker-cache"
    assert proc.pid in set(stack.service.cgroups.pids()) - before
    assert os.readlink(f"/proc/{proc.pid}/exe") == str(exe)
    ticks = _cpu_ticks(proc.pid)
    await asyncio.sleep(1.0)
    assert _cpu_ticks(proc.pid) > ticks, "the program is not busy"
    await stack.clear(f)
    assert not exe.parent.exists() and not os.path.exists(f"/proc/{proc.pid}")
    assert set(stack.service.cgroups.pids()) == before


@async_test
async def test_apply_and_clear_are_idempotent(healthy):
    stack = healthy
    f = make_fault({"kind": "packet_loss", "target": "retrieval", "percent": 5})
    await stack.apply(f)
    await stack.apply(f)
    assert faults.lab_tables(os.getpid()) == [f.table.name]
    await stack.clear(f)
    await stack.clear(f)
    assert faults.lab_tables(os.getpid()) == []
