"""Real, reversible faults: the lab's fault kinds (one per row of the lab's fault table), their
parameters and validation, and the injectors behind them; plus the context managers the demo
and the capture tests use (:class:`PacketLoss`, :class:`CpuContention`).

Each lab fault acts through the same lever a real incident would pull:

- network (``packet_loss``, ``connection_reset``): nftables rules on the service's path to the
  target (its own veth hop into that dependency's namespaces, :mod:`lab.netpath`), so the
  service's *own* sockets lose packets or receive resets and only that dependency's path is hit;
  ``network_delay``: that path's router queue filled (congestion the kernel measures);
  ``middlebox_delay``: the delaying proxy (:mod:`lab.proxy`) on that path (a slow middlebox);
- dns: the lab DNS server the service resolves the provider's name through;
- provider: the provider stand-in's control API; retrieval: inside PostgreSQL (``lab_faults``);
- app_cpu / app_memory: the service's cgroups (busy processes inside them, a CPU quota, a memory
  limit that may OOM-kill the service, which the stack then restarts);
- policy: the RAG service's own control API (its guardrail step);
- no domain (``service_restart``): the service is stopped and its supervisor starts it again, the
  way a deploy or a crash-looping pod restarts; a no-fault case the responder must not blame.

A fault object is made from a scenario's mapping (``make_fault``), applied to and cleared from a
running :class:`lab.stack.LabStack` (``await fault.apply(stack)`` / ``await fault.clear(stack)``,
both idempotent). ``start_s`` / ``stop_s`` are carried for the runner, which schedules them.
Whatever a fault leaves in the kernel is named after the owning process (nftables tables
``llmslo_lab_<pid>_...``, cgroups ``llmslo-lab-...-<pid>``) and every process the lab starts
carries its owner's pid, so :func:`sweep_stale` removes what a SIGKILLed run left behind.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import process
from lab.cgroups import WorkloadCgroup

if TYPE_CHECKING:
    from lab.stack import LabStack

TABLE_PREFIX = "llmslo_lab_"


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True, check=False)


class PacketLoss:
    """Drop ``percent`` % of TCP packets to and from ``port`` (loopback included), at random.

    nftables ``numgen random`` rather than netem: this kernel has no netem (docs/probes.md)."""

    def __init__(self, port: int, percent: int):
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        self.port, self.percent = int(port), int(percent)
        self.table = f"{TABLE_PREFIX}{os.getpid()}_{self.port}"

    def __enter__(self) -> PacketLoss:
        ruleset = f"""
table inet {self.table} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        tcp dport {self.port} numgen random mod 100 < {self.percent} drop
        tcp sport {self.port} numgen random mod 100 < {self.percent} drop
    }}
}}
"""
        r = _nft("-f", "-", stdin=ruleset)
        if r.returncode != 0:
            raise RuntimeError(f"nft refused the loss rule: {r.stderr.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        _nft("delete", "table", "inet", self.table)


def lab_tables(owner: int | None = None) -> list[str]:
    """The lab's nftables tables on this host, or only those created by process ``owner``."""
    r = _nft("list", "tables")
    names = [line.split()[-1] for line in r.stdout.splitlines() if TABLE_PREFIX in line]
    if owner is not None:
        names = [n for n in names if n.startswith(f"{TABLE_PREFIX}{owner}_")]
    return names


def sweep_stale_tables() -> list[str]:
    removed = []
    for table in lab_tables():
        owner = table[len(TABLE_PREFIX):].split("_")[0]
        if process.owner_gone(owner):
            _nft("delete", "table", "inet", table)
            removed.append(table)
    return removed


BUSY_LOOP = "import os,sys\nos.nice(0)\nwhile True: pass\n"


class CpuContention:
    """``workers`` busy processes inside the workload's own cgroup: they compete with it for CPU.
    ``cgroup`` is anything with ``add(pid)`` (a :class:`WorkloadCgroup`, the lab service's
    :class:`lab.cgroups.ServiceCgroups`)."""

    def __init__(self, cgroup: WorkloadCgroup, workers: int, preexec_fn: Callable[[], None] | None = None):
        self.cgroup, self.workers = cgroup, workers
        self.preexec_fn = preexec_fn
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuContention:
        try:
            for _ in range(self.workers):
                p = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                                     preexec_fn=self.preexec_fn)
                self.procs.append(p)
                self.cgroup.add(p.pid)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


# --- the fault kinds of the lab ---------------------------------------------------------------------

class FaultError(ValueError):
    """A fault mapping is not valid; the message names the field."""


@dataclass(frozen=True)
class Param:
    """One parameter of a fault kind. ``type`` is int, float or str; a float parameter takes an
    integer too, an int parameter a whole float (YAML writes ``150.0``); bounds are inclusive."""

    type: type
    required: bool = True
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> tuple[Any, str | None]:
        """(the value in its type, None) or (None, the error naming ``name``)."""
        given = value
        if self.type is str:
            if not isinstance(value, str):
                return None, f"{name}: expected text, got {value!r}"
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"{name}: expected a number, got {value!r}"
        elif self.type is int:
            if value != int(value):
                return None, f"{name}: expected a whole number, got {value!r}"
            value = int(value)
        else:
            value = float(value)
        if self.choices is not None and value not in self.choices:
            return None, f"{name}: expected one of {', '.join(map(str, self.choices))}, got {given!r}"
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            return None, f"{name}: expected a value in {lo}..{hi}, got {given!r}"
        return value, None


@dataclass(frozen=True)
class FaultKind:
    kind: str
    domain: str | None  # the ground-truth fault domain (docs/lab.md, "Faults"); None: no fault
    params: dict[str, Param]
    factory: Callable[[dict], Fault]
    help: str = ""


# Every kind takes these: when the runner applies and clears it, as offsets into the fault phase.
SCHEDULE_PARAMS = {
    "start_s": Param(float, False, 0.0, min=0, help="offset into the fault phase at which it is applied"),
    "stop_s": Param(float, False, None, min=0, help="offset at which it is cleared (default: end of the phase)"),
}


@dataclass
class Fault:
    """One fault of a kind with its parameters; ``apply``/``clear`` act on a running stack."""

    kind: str
    domain: str | None
    params: dict[str, Any]
    start_s: float = 0.0
    stop_s: float | None = None
    applied: bool = field(default=False, init=False)

    async def apply(self, stack: LabStack) -> None:
        if self.applied:
            return
        try:
            await self._apply(stack)
        except BaseException:
            await self._clear(stack)  # half applied: undo what took effect
            raise
        self.applied = True

    async def clear(self, stack: LabStack) -> None:
        if not self.applied:
            return
        await self._clear(stack)
        self.applied = False

    def describe(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"

    def anomaly(self) -> dict[str, str] | None:
        """What the fault makes the workload do that it never did ({"kind", "what"}, as the
        agent's anomalies name it), for the scorecard; None for a fault that is no anomaly."""
        return None

    def as_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, **self.params, "start_s": self.start_s}
        if self.stop_s is not None:
            d["stop_s"] = self.stop_s
        return d

    async def _apply(self, stack: LabStack) -> None:
        raise NotImplementedError

    async def _clear(self, stack: LabStack) -> None:
        raise NotImplementedError


class NftTable:
    """A lab nftables table on one dependency's path, named after this process and the port the
    service connects to (``llmslo_lab_<pid>_<what>_<port>``): ``lab_tables``/``sweep_stale_tables``
    know it. ``rules`` go in an output chain (what the service sends), ``input_rules`` in an input
    chain (what comes back to it)."""

    def __init__(self, what: str, port: int, rules: list[str], input_rules: list[str] | None = None):
        self.name = f"{TABLE_PREFIX}{os.getpid()}_{what}_{port}"
        self.rules = rules
        self.input_rules = list(input_rules or [])

    def create(self) -> None:
        def chain(name: str, rules: list[str]) -> str:
            body = "\n".join(f"        {r}" for r in rules)
            return (f"    chain {name} {{\n        type filter hook {name} priority 0; policy accept;\n"
                    f"{body}\n    }}\n")

        ruleset = (f"table inet {self.name} {{\n{chain('output', self.rules)}"
                   + (chain("input", self.input_rules) if self.input_rules else "") + "}\n")
        _nft("delete", "table", "inet", self.name)  # idempotent: replace, never stack up
        r = _nft("-f", "-", stdin=ruleset)
        if r.returncode != 0:
            raise RuntimeError(f"nft refused table {self.name}: {r.stderr.strip()}")

    def delete(self) -> None:
        _nft("delete", "table", "inet", self.name)

    def exists(self) -> bool:
        return self.name in lab_tables()

    def counters(self) -> list[int]:
        """Packets each rule has hit so far (one number per rule with a counter)."""
        r = _nft("list", "table", "inet", self.name)
        return [int(n) for n in re.findall(r"counter packets (\d+)", r.stdout)]


def _chance(fraction: float) -> str:
    """An nftables match true for ``fraction`` of packets (to 0.01 %); empty for all of them."""
    n = max(0, min(10_000, round(fraction * 10_000)))
    return "" if n >= 10_000 else f"numgen random mod 10000 < {n} "


@dataclass
class PacketLossFault(Fault):
    """Drop ``percent`` % of the packets, both ways, between the service and its route to
    ``target``: the service's sockets retransmit (and SYNs time out), as on a lossy path."""

    table: NftTable | None = field(default=None, init=False)

    async def _apply(self, stack):
        target = self.params["target"]
        addr, port = stack.endpoints[target]
        dev = stack.paths[target].host_if
        chance = _chance(self.params["percent"] / 100)
        self.table = NftTable("loss", port, [f'oifname "{dev}" ip daddr {addr} tcp dport {port} {chance}counter drop'],
                              [f'iifname "{dev}" ip saddr {addr} tcp sport {port} {chance}counter drop'])
        self.table.create()

    async def _clear(self, stack):
        if self.table is not None:
            self.table.delete()


@dataclass
class ConnectionResetFault(Fault):
    """Answer ``fraction`` of the data segments the service sends on its path to ``target`` with
    a TCP reset (nftables ``reject with tcp reset``): the service's connection dies with
    ECONNRESET. A request sends a few data segments (TLS handshake, request), so the share of
    requests hit is higher than ``fraction``: 1 - (1 - fraction)^segments."""

    table: NftTable | None = field(default=None, init=False)

    async def _apply(self, stack):
        target = self.params["target"]
        addr, port = stack.endpoints[target]
        dev = stack.paths[target].host_if
        self.table = NftTable("reset", port, [
            f'oifname "{dev}" ip daddr {addr} tcp dport {port} tcp flags & psh == psh '
            f'{_chance(self.params["fraction"])}counter reject with tcp reset'])
        self.table.create()

    async def _clear(self, stack):
        if self.table is not None:
            self.table.delete()


@dataclass
class MiddleboxDelayFault(Fault):
    """A slow middlebox (egress proxy, gateway) on the path to ``target``: every chunk it relays
    waits ``delay_ms`` ± ``jitter_ms`` in each direction. The middlebox acknowledges at once, so
    the service's own sockets keep loopback round-trip times: only the calls' latency shows it."""

    async def _apply(self, stack):
        await stack.proxies[self.params["target"]].set_delay(self.params["delay_ms"], self.params["jitter_ms"])

    async def _clear(self, stack):
        await stack.proxies[self.params["target"]].set_delay(0, 0)


@dataclass
class NetworkDelayFault(Fault):
    """Congestion on the path to ``target``: its router's queue holds ``delay_ms`` of data and a
    bulk flow keeps it full (:mod:`lab.netpath`), so every segment the service sends that way
    waits in it, and the service's kernel measures the wait in its RTT."""

    async def _apply(self, stack):
        stack.paths[self.params["target"]].shape(self.params["delay_ms"])

    async def _clear(self, stack):
        stack.paths[self.params["target"]].unshape()


@dataclass
class KnobFault(Fault):
    """A fault that turns knobs of one of the stack's components (``channel``: the DNS server,
    the provider, PostgreSQL, the service's policy step). The stack merges the knobs of all
    faults on a component and sends them again after the component restarts; clearing puts this
    fault's knobs back to their healthy values."""

    channel: str = field(default="", init=False)
    knob_map: Callable[[dict], dict[str, Any]] | None = field(default=None, init=False, repr=False)

    def knobs(self) -> dict[str, Any]:
        assert self.knob_map is not None
        return self.knob_map(self.params)

    async def _apply(self, stack):
        await stack.set_knobs(self.channel, **self.knobs())

    async def _clear(self, stack):
        await stack.reset_knobs(self.channel, *self.knobs())


@dataclass
class CpuContentionFault(Fault):
    """``workers`` busy processes in the service's cgroups, competing with it for its CPU share."""

    contention: CpuContention | None = field(default=None, init=False)

    async def _apply(self, stack):
        from lab.harness import die_with_parent
        self.contention = CpuContention(stack.service.cgroups, self.params["workers"], preexec_fn=die_with_parent)
        self.contention.__enter__()

    async def _clear(self, stack):
        if self.contention is not None:
            self.contention.__exit__()
            self.contention = None


@dataclass
class CpuThrottleFault(Fault):
    """A CPU quota of ``cpus`` CPUs on the service's cgroup (CFS bandwidth: it is throttled)."""

    async def _apply(self, stack):
        stack.service.cgroups.set_cpu_quota(self.params["cpus"])

    async def _clear(self, stack):
        stack.service.cgroups.set_cpu_quota(None)


@dataclass
class MemoryPressureFault(Fault):
    """A memory limit of ``limit_mb`` MiB on the service's cgroup: reclaim, then OOM kills (the
    stack restarts the service, which starts under the same limit)."""

    in_force: int | None = field(default=None, init=False)

    async def _apply(self, stack):
        self.in_force = stack.service.cgroups.set_memory_limit(self.params["limit_mb"] << 20)

    async def _clear(self, stack):
        stack.service.cgroups.set_memory_limit(None)


@dataclass
class NoisyNeighborFault(Fault):
    """``workers`` busy processes in a cgroup of their own beside the service's (another pod on
    the node): the service keeps its cgroup, but waits for CPUs the neighbour holds."""

    cgroup: WorkloadCgroup | None = field(default=None, init=False)
    contention: CpuContention | None = field(default=None, init=False)

    async def _apply(self, stack):
        from lab.harness import die_with_parent
        self.cgroup = WorkloadCgroup("neighbor").create()  # named with this pid: swept if left
        self.contention = CpuContention(self.cgroup, self.params["workers"], preexec_fn=die_with_parent)
        self.contention.__enter__()

    async def _clear(self, stack):
        if self.contention is not None:
            self.contention.__exit__()
            self.contention = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None


@dataclass
class TrafficSurgeFault(Fault):
    """Demand, not a fault: the load's rate × ``factor`` until cleared (a launch, a retry storm
    upstream, a crawler). Every dependency slows in proportion; no other domain has a cause."""

    before_rps: float | None = field(default=None, init=False)

    async def _apply(self, stack):
        self.before_rps = stack.load_rps
        stack.set_load_rps(self.before_rps * self.params["factor"])

    async def _clear(self, stack):
        if self.before_rps is not None:
            stack.set_load_rps(self.before_rps)
            self.before_rps = None


@dataclass
class ServiceRestartFault(Fault):
    """The service is stopped (SIGTERM) and its supervisor starts it again; nothing to clear."""

    async def _apply(self, stack):
        await stack.service.restart()

    async def _clear(self, stack):
        pass


# A process in the service's cgroups that resolves a host name the service never used (through the
# lab DNS, like the service) and connects to it every ``period`` seconds: exfiltration, a beacon.
ROGUE_CLIENT = r"""
import socket, sys, time
host, port, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while True:
    try:
        addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
        socket.create_connection(addr, timeout=2).close()
    except OSError:
        pass
    time.sleep(period)
"""
ROGUE_HOST = "telemetry-sink.rogue.example"
# The file name an unexpected program runs under: a copy of a CPU-bound tool, started from a
# temporary directory, as a dropped miner would be.
UNEXPECTED_NAME = "kworker-cache"


def _in_service(stack) -> Callable[[], None]:
    """A ``preexec_fn`` that puts the child in the service's cgroups, dying with the lab."""
    from lab.harness import die_with_parent

    def preexec() -> None:
        die_with_parent()
        stack.service.cgroups.enter()
    return preexec


@dataclass
class RogueEgressFault(Fault):
    """No fault domain, an anomaly: a process in the service's cgroups starts connecting to an
    address the service never used (resolved by name through the lab DNS), every ``period_s``."""

    proc: subprocess.Popen | None = field(default=None, init=False)
    server: asyncio.AbstractServer | None = field(default=None, init=False)
    what: str = field(default="", init=False)

    async def _apply(self, stack):
        async def close(_reader, writer):
            writer.close()

        self.server = await asyncio.start_server(close, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        stack.dns.records[ROGUE_HOST] = "127.0.0.1"
        self.what = f"127.0.0.1:{port}"

        self.proc = subprocess.Popen(stack.dns.client_argv([sys.executable, "-c", ROGUE_CLIENT, ROGUE_HOST, str(port),
                                                            str(self.params["period_s"])]),
                                     preexec_fn=_in_service(stack), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def _clear(self, stack):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if stack.dns is not None:
            stack.dns.records.pop(ROGUE_HOST, None)

    def anomaly(self) -> dict[str, str] | None:
        return {"kind": "egress_peer", "what": self.what, "name": ROGUE_HOST} if self.what else None


@dataclass
class UnexpectedExecFault(Fault):
    """A program the service never ran starts in its cgroups from a temporary directory and burns
    CPU (``workers`` copies): a dropped miner. Its domain is ``app_cpu`` when the service feels it."""

    procs: list[subprocess.Popen] = field(default_factory=list, init=False)
    dir: Path | None = field(default=None, init=False)
    what: str = field(default="", init=False)

    async def _apply(self, stack):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STACK_DIR_PREFIX}{os.getpid()}-exec-"))
        exe = self.dir / UNEXPECTED_NAME
        shutil.copy2(shutil.which("sha256sum") or "/usr/bin/sha256sum", exe)
        self.what = str(exe)

        for _ in range(self.params["workers"]):
            self.procs.append(subprocess.Popen([str(exe), "/dev/zero"], preexec_fn=_in_service(stack),
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    async def _clear(self, stack):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def anomaly(self) -> dict[str, str] | None:
        return {"kind": "executable", "what": self.what} if self.what else None


def _knobs(channel: str, make: Callable[[dict], dict[str, Any]]) -> Callable[[dict], Fault]:
    """A factory for a fault that sets the knobs ``make(params)`` on ``channel``."""
    def factory(common: dict) -> Fault:
        f = KnobFault(**common)
        f.channel, f.knob_map = channel, make
        return f
    return factory


def _of(cls: type[Fault]) -> Callable[[dict], Fault]:
    return lambda common: cls(**common)


_TARGET = Param(str, choices=("provider", "retrieval"), help="the dependency whose path is hit")
_FRACTION = Param(float, min=0.0, max=1.0)


def _kinds() -> dict[str, FaultKind]:
    table = [
        ("packet_loss", "network", {"target": _TARGET, "percent": Param(float, min=0.01, max=100)},
         _of(PacketLossFault), PacketLossFault.__doc__),
        ("network_delay", "network", {"target": _TARGET, "delay_ms": Param(int, min=5, max=2_000)},
         _of(NetworkDelayFault), NetworkDelayFault.__doc__),
        ("middlebox_delay", "network", {"target": _TARGET, "delay_ms": Param(int, min=0, max=60_000),
                                        "jitter_ms": Param(int, False, 0, min=0, max=60_000)},
         _of(MiddleboxDelayFault), MiddleboxDelayFault.__doc__),
        ("connection_reset", "network", {"target": _TARGET, "fraction": _FRACTION},
         _of(ConnectionResetFault), ConnectionResetFault.__doc__),
        ("dns_delay", "dns", {"delay_ms": Param(int, min=0, max=60_000)},
         _knobs("dns", lambda p: {"delay_ms": p["delay_ms"]}),
         "the lab DNS server answers every lookup after delay_ms"),
        ("dns_failure", "dns", {"fraction": _FRACTION},
         _knobs("dns", lambda p: {"failure_fraction": p["fraction"]}),
         "the lab DNS server answers fraction of lookups with SERVFAIL"),
        ("provider_throttle", "provider_throttling",
         {"fraction": _FRACTION, "retry_after_s": Param(float, False, 1.0, min=0, max=3600)},
         _knobs("provider", lambda p: {"throttle": {"fraction": p["fraction"],
                                                         "retry_after_s": p["retry_after_s"]}}),
         "the provider answers fraction of calls 429 with retry-after and x-ratelimit-* headers"),
        ("provider_overload", "provider_throttling",
         {"fraction": _FRACTION, "status": Param(int, False, 529, choices=(529, 503))},
         _knobs("provider", lambda p: {"overload": {"fraction": p["fraction"], "status": p["status"]}}),
         "the provider answers fraction of calls with an overloaded error (529 or 503)"),
        ("provider_latency", "provider_latency", {"ttft_ms": Param(int, min=0, max=120_000)},
         _knobs("provider", lambda p: {"ttft_ms": p["ttft_ms"]}),
         "the provider's time to first token becomes ttft_ms"),
        ("retrieval_latency", "retrieval_backend", {"delay_ms": Param(int, min=0, max=60_000)},
         _knobs("retrieval", lambda p: {"delay_ms": p["delay_ms"]}),
         "every retrieval sleeps delay_ms inside PostgreSQL"),
        ("retrieval_errors", "retrieval_backend", {"fraction": _FRACTION},
         _knobs("retrieval", lambda p: {"error_fraction": p["fraction"]}),
         "fraction of retrievals raise an error inside PostgreSQL"),
        ("cpu_contention", "app_cpu", {"workers": Param(int, min=1, max=32)},
         _of(CpuContentionFault), CpuContentionFault.__doc__),
        ("cpu_throttle", "app_cpu", {"cpus": Param(float, min=0.01, max=64)},
         _of(CpuThrottleFault), CpuThrottleFault.__doc__),
        ("memory_pressure", "app_memory", {"limit_mb": Param(int, min=8, max=1 << 20)},
         _of(MemoryPressureFault), MemoryPressureFault.__doc__),
        ("policy_latency", "policy_layer", {"delay_ms": Param(int, min=0, max=60_000)},
         _knobs("policy", lambda p: {"policy_delay_ms": p["delay_ms"]}),
         "the service's guardrail step takes delay_ms longer"),
        ("policy_block", "policy_layer", {"fraction": _FRACTION},
         _knobs("policy", lambda p: {"policy_block_fraction": p["fraction"]}),
         "the service's guardrail blocks fraction of requests (fail closed: HTTP 503)"),
        ("noisy_neighbor", "app_cpu", {"workers": Param(int, min=1, max=32)},
         _of(NoisyNeighborFault), NoisyNeighborFault.__doc__),
        ("traffic_surge", "traffic", {"factor": Param(float, min=1.1, max=20)},
         _of(TrafficSurgeFault), TrafficSurgeFault.__doc__),
        # no ground-truth domain: a restart is not a fault the responder should name
        ("service_restart", None, {}, _of(ServiceRestartFault), ServiceRestartFault.__doc__),
        # anomalies: scored as flagged or missed (the agent's early warning), not by a domain
        ("rogue_egress", None, {"period_s": Param(float, False, 2.0, min=0.1, max=60)},
         _of(RogueEgressFault), RogueEgressFault.__doc__),
        ("unexpected_exec", "app_cpu", {"workers": Param(int, False, 1, min=1, max=8)},
         _of(UnexpectedExecFault), UnexpectedExecFault.__doc__),
    ]
    kinds = {}
    for kind, domain, params, factory, doc in table:
        kinds[kind] = FaultKind(kind, domain, {**params, **SCHEDULE_PARAMS}, factory,
                                " ".join((doc or "").split()))
    return kinds


FAULT_KINDS: dict[str, FaultKind] = _kinds()
# The kinds scored as anomalies the agent should flag (lab/scenarios/anomalies.yaml), not drawn
# into the randomized corpus nor part of the standard suite, whose verdicts they do not test.
ANOMALY_KINDS = frozenset({"rogue_egress", "unexpected_exec"})


def validate_fault(d: Any) -> str | None:
    """None if ``d`` is a valid fault mapping, else an error naming the field."""
    try:
        _normalise(d)
    except FaultError as e:
        return str(e)
    return None


def _normalise(d: Any) -> tuple[FaultKind, dict[str, Any]]:
    if not isinstance(d, Mapping):
        raise FaultError(f"fault: expected a mapping with a kind, got {d!r}")
    kind = d.get("kind")
    if kind is None:
        raise FaultError("kind: required (one of " + ", ".join(FAULT_KINDS) + ")")
    if kind not in FAULT_KINDS:
        raise FaultError(f"kind: unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
    fk = FAULT_KINDS[kind]
    for name in d:
        if name != "kind" and name not in fk.params:
            raise FaultError(f"{name}: unknown parameter of {kind} (expected: {', '.join(fk.params)})")
    values: dict[str, Any] = {}
    for name, param in fk.params.items():
        if name not in d or d[name] is None:
            if param.required:
                raise FaultError(f"{name}: required by {kind}")
            values[name] = param.default
            continue
        value, error = param.check(name, d[name])
        if error:
            raise FaultError(error)
        values[name] = value
    if values["stop_s"] is not None and values["stop_s"] <= values["start_s"]:
        raise FaultError(f"stop_s: must be after start_s ({values['start_s']:g}), got {values['stop_s']:g}")
    return fk, values


def make_fault(d: Mapping[str, Any]) -> Fault:
    """The fault object for a mapping such as ``{"kind": "packet_loss", "target": "provider",
    "percent": 20}``; FaultError (naming the field) when it is not valid. Missing optional
    parameters get their defaults."""
    fk, values = _normalise(d)
    start_s, stop_s = values.pop("start_s"), values.pop("stop_s")
    return fk.factory({"kind": fk.kind, "domain": fk.domain, "params": values, "start_s": start_s,
                       "stop_s": stop_s})


# --- leftovers of killed runs -------------------------------------------------------------------------

STACK_DIR_PREFIX = "llmslo-lab-stack-"


def sweep_stale_dirs(prefix: str = STACK_DIR_PREFIX) -> list[str]:
    """Remove ``$TMPDIR/<prefix><pid>-*`` directories whose owning process is gone."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(prefix + "*"):
        owner = d.name[len(prefix):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def sweep_stale() -> dict[str, list]:
    """Remove what lab runs killed with SIGKILL left behind, in an order that lets each part go
    cleanly: PostgreSQL servers (a fast shutdown, so no shared memory is left), then every other
    marked process, nftables tables, cgroups (their processes killed), temporary directories.
    Only leftovers whose owning process is gone are touched; returns what was removed."""
    from lab import cgroups, dns, harness, netpath, postgres, provider

    swept: dict[str, list] = {}
    swept["postgres"] = postgres.sweep_stale()
    swept["providers"] = provider.sweep_stale()
    swept["processes"] = harness.sweep_stale_processes()
    swept["nft_tables"] = sweep_stale_tables()
    swept["netns"] = netpath.sweep_stale()
    swept["cgroups"] = cgroups.sweep_stale()
    swept["dirs"] = sweep_stale_dirs() + [str(d) for d in dns.sweep_stale()]
    return swept
