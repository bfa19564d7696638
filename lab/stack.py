"""The attribution lab's running system: every process of the lab's topology, started together,
supervised, driven with load and faults, and removed however the run ends.

    load generator --HTTP--> RAG service (own cgroups; own mount namespace resolving through the lab DNS)
      RAG service --TCP--> [path "provider"]  --> proxy route "provider"  --TLS--> provider stand-in (api.provider.lab)
      RAG service --TCP--> [path "retrieval"] --> proxy route "retrieval" -----> PostgreSQL (temporary data directory)
      RAG service --OTLP/HTTP--> llmslo serve /v1/traces;  Prometheus scrapes RAG service /metrics
      Prometheus (rules from `llmslo rules generate`, windows scaled) -> Alertmanager -> responder webhook

:class:`LabStack` is an async context manager. Inside it, ``apply(fault)`` / ``clear(fault)`` /
``clear_all()`` inject the faults of :mod:`lab.faults`, ``alerts_firing()`` says what Prometheus
is alerting on, and ``load_stats`` holds what the load generator saw. A supervisor restarts the
RAG service when it dies (an OOM kill under ``memory_pressure``), in the same cgroups and with
the same resolver, and sends its policy faults again.

Cleanup: ``__aexit__`` stops everything in order, and an ``atexit`` hook does the same if the
event loop never gets there. A run killed with SIGKILL is covered too: direct children die with
it (``die_with_parent``), every process carries ``LLMSLO_LAB_OWNER=<pid>``, and nftables tables,
cgroups and temporary directories carry the pid in their names, so ``lab.faults.sweep_stale()``
removes what is left.

``python -m lab.stack [--seconds 60 --rps 10]`` starts the stack, runs healthy load and prints
the start time and the healthy latency and time-to-first-token quantiles.
"""
from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypedDict

import aiohttp
import yaml

from common.net import free_port
from lab import cgroups as lab_cgroups
from lab import faults as lab_faults
from lab.cgroups import ServiceCgroups
from lab.dns import DnsStandin
from lab.faults import Fault, make_fault
from lab.harness import OWNER_ENV, REPO, ResponderProcess, die_with_parent
from lab.load import LoadGenerator, LoadStats, Sample, quantile
from lab.netpath import ShapedPath
from lab.postgres import DATABASE, ROLE, LabPostgres
from lab.provider import ProviderProcess
from lab.proxy import ProxyProcess, ProxyRoute
from lab.servers import AlertmanagerProcess, PrometheusProcess, start_alertmanager_async, start_prometheus_async

log = logging.getLogger("lab.stack")

PROVIDER_HOST = "api.provider.lab"
SERVICE_NAME = "rag-api"
# SLO thresholds of the generated rules: bucket bounds of the service's histograms
# (responder.slo.rules.RECOMMENDED_*_BUCKETS) that the healthy service stays well under at lab load,
# so a fault that slows requests pushes them over. Measured with `python -m lab.stack` on a
# 2-CPU machine at 10-20 req/s: TTFT p50 0.17-0.18 s, p99 0.2-0.48 s; latency p50 0.29-0.32 s,
# p99 0.44-0.86 s (the high ends when other work shares the CPUs). 0.5 s would sit inside the
# healthy tail (0.4 % of requests over it at 20 req/s): the next bounds up leave room for noise.
TTFT_THRESHOLD = "1s"
LATENCY_THRESHOLD = "2s"
SCRAPE_INTERVAL = "1s"
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)

# The knobs each component takes, at their healthy values (see lab.faults.KnobFault).
KNOB_DEFAULTS: dict[str, dict[str, Any]] = {
    "dns": {"delay_ms": 0, "failure_fraction": 0.0},
    "provider": {"throttle": None, "overload": None, "ttft_ms": None},
    "retrieval": {"delay_ms": 0, "error_fraction": 0.0},
    "policy": {"policy_delay_ms": 0, "policy_block_fraction": 0.0},
}


class StackError(RuntimeError):
    """The lab stack could not start or act; the message says which part and where its log is."""


# --- the RAG service under supervision --------------------------------------------------------------

class LabRagService:
    """``python -m lab.rag_service`` in its cgroups and in a mount namespace whose resolv.conf
    names the lab DNS server, restarted by :meth:`supervise` when it dies."""

    def __init__(self, name: str, argv: list[str], dns: DnsStandin, log_path: Path,
                 on_restart: Callable[[], Any] | None = None):
        self.name = name
        self.port = free_port()
        self.cgroups = ServiceCgroups("svc")
        self.control_token = secrets.token_hex(16)
        self.argv = [*argv, "--port", str(self.port), f"--control-token={self.control_token}"]
        self.dns = dns
        self.log_path = log_path
        self.on_restart = on_restart
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.exits: list[dict[str, Any]] = []  # {"at", "returncode", "oom_kill"} per death seen
        self._supervisor: asyncio.Task | None = None
        self._log: BinaryIO | None = None

    @property
    def cgroup_path(self) -> str:
        """The unified-hierarchy path: the alert label and capture target that name the service."""
        return self.cgroups.path

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def answer_url(self) -> str:
        return f"{self.url}/v1/answer"

    def _preexec(self) -> None:
        die_with_parent()
        self.cgroups.enter()  # before exec: no instant of the service outside its cgroups

    def _spawn(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.dns.client_argv(self.argv), cwd=REPO, preexec_fn=self._preexec,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    async def start(self, timeout_s: float = 30.0) -> LabRagService:
        self.cgroups.create()
        self._spawn()
        await self.wait_healthy(timeout_s)
        self._supervisor = asyncio.create_task(self._supervise(), name="lab-service-supervisor")
        return self

    async def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise StackError(f"the RAG service exited with {self.proc and self.proc.returncode}; "
                                     f"see {self.log_path}")
                try:
                    async with s.get(self.url + "/health") as r:
                        if r.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.1)
        raise StackError(f"the RAG service did not answer /health within {timeout_s:g}s; see {self.log_path}")

    async def _supervise(self) -> None:
        """Restart the service whenever it dies, backing off while it keeps dying young."""
        quick_deaths = 0
        while True:
            started = time.monotonic()
            while self.proc is not None and self.proc.poll() is None:
                await asyncio.sleep(0.2)
            assert self.proc is not None
            try:
                oom = self.cgroups.memory_events().get("oom_kill", 0)
            except (OSError, RuntimeError):
                oom = None
            self.exits.append({"at": time.time(), "returncode": self.proc.returncode, "oom_kill": oom})
            log.warning("event=service_exited returncode=%s oom_kills=%s", self.proc.returncode, oom)
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < 30 else 0
            await asyncio.sleep(RESTART_BACKOFF_S[min(quick_deaths, len(RESTART_BACKOFF_S)) - 1]
                                if quick_deaths else RESTART_BACKOFF_S[0])
            try:
                self.cgroups.apply_memory_target()  # a memory fault's full limit, now that it can be set
            except OSError as e:
                log.warning("event=memory_limit_not_set error=%s", e)
            self._spawn()
            self.restarts += 1
            try:
                await self.wait_healthy(30)
            except StackError as e:
                log.warning("event=service_restart_unhealthy error=%s", e)
                continue  # it died again (or hangs): the loop sees it
            if self.on_restart is not None:
                try:
                    await self.on_restart()
                except Exception as e:  # noqa: BLE001 - the next restart tries again
                    log.warning("event=service_restart_hook_failed error=%r", e)

    async def restart(self, timeout_s: float = 30.0, grace_s: float = 10.0) -> None:
        """Stop the service (SIGTERM; SIGKILL when it has not exited after ``grace_s``: a
        graceful shutdown waits for requests in flight, which a slow dependency can hold for a
        minute) and wait until the supervisor has it healthy again, ``timeout_s`` after it exited."""
        if self.proc is None or self._supervisor is None:
            raise StackError("the RAG service is not running under its supervisor")
        before = self.restarts
        proc = self.proc
        proc.terminate()
        grace_end = time.monotonic() + grace_s
        while proc.poll() is None and time.monotonic() < grace_end:
            await asyncio.sleep(0.1)
        if proc.poll() is None:
            log.warning("event=service_kill reason=no_exit_after_sigterm grace_s=%g", grace_s)
            proc.kill()
        deadline = time.monotonic() + timeout_s
        while self.restarts == before:
            if time.monotonic() > deadline:
                raise StackError(f"the RAG service was not restarted within {timeout_s:g}s; see {self.log_path}")
            await asyncio.sleep(0.1)
        await self.wait_healthy(max(1.0, deadline - time.monotonic()))

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        self.kill(graceful=True)

    def kill(self, graceful: bool = False) -> None:
        """Stop the service (SIGTERM first when ``graceful``: it flushes its spans) and remove
        its cgroups with anything still inside (a fault's busy processes)."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.cgroups.remove()
        if self._log is not None:
            self._log.close()
            self._log = None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """``fn`` in a worker thread; if cancelled, still wait for it to finish (a half-started
    server must be known to be stopped), then re-raise the cancellation."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await asyncio.gather(fut, return_exceptions=True)
        raise


# --- the stack -----------------------------------------------------------------------------------------

class _ProviderArgs(TypedDict):
    ttft_ms: int
    tokens_per_s: float
    tokens: int


class LabStack:
    """Every process of the lab, for one suite run::

        async with LabStack(out_dir / "stack", window_scale=1/60, load_rps=10) as stack:
            fault = await stack.apply({"kind": "provider_throttle", "fraction": 0.3})
            ...
            await stack.clear(fault)

    ``work_dir`` keeps what is worth reading after the run (logs, the responder's incident store
    and reports); everything else lives in a temporary directory removed at the end. The
    thresholds are the SLO's: durations that are bucket bounds of the service's histograms.
    """

    def __init__(self, work_dir: Path, window_scale: float = 1 / 60, load_rps: float = 10.0, *,
                 ttft_threshold: str = TTFT_THRESHOLD, latency_threshold: str = LATENCY_THRESHOLD,
                 service_name: str = SERVICE_NAME, model: str = "gpt-4o-mini", seed: int | None = None,
                 provider_ttft_ms: int = 150, provider_tokens_per_s: float = 200.0, provider_tokens: int = 24,
                 start_load: bool = True, responder_env: dict[str, str] | None = None):
        self.work_dir = Path(work_dir)
        self.window_scale = float(window_scale)
        self.load_rps = float(load_rps)
        self.ttft_threshold, self.latency_threshold = ttft_threshold, latency_threshold
        self.service_name, self.model, self.seed = service_name, model, seed
        self.provider_args: _ProviderArgs = {"ttft_ms": provider_ttft_ms, "tokens_per_s": provider_tokens_per_s,
                              "tokens": provider_tokens}
        self.start_load = start_load
        self.responder_env = dict(responder_env or {})
        self.token = secrets.token_hex(18)  # the webhook's and the OTLP receiver's bearer token
        self.scratch: Path | None = None
        self.logs = self.work_dir / "logs"
        self.responder: ResponderProcess | None = None
        self.service: LabRagService | None = None
        self.provider: ProviderProcess | None = None
        self.postgres: LabPostgres | None = None
        self.dns: DnsStandin | None = None
        self.proxy: ProxyProcess | None = None
        self.proxies: dict[str, ProxyRoute] = {}
        # Each dependency's network path: the service's sockets cross it (a router namespace, then
        # a far one where a forwarder listens), so a delay on it is one the kernel measures.
        self.paths: dict[str, ShapedPath] = {}
        self.forwarders: dict[str, ProxyProcess] = {}
        self.endpoints: dict[str, tuple[str, int]] = {}  # what the service connects to, per dependency
        self.prometheus: PrometheusProcess | None = None
        self.alertmanager: AlertmanagerProcess | None = None
        self.load_stats = LoadStats()
        self.load: LoadGenerator | None = None
        self.faults: list[Fault] = []
        self.knobs: dict[str, dict[str, Any]] = {c: dict(v) for c, v in KNOB_DEFAULTS.items()}
        self.rules_text = ""
        self.start_s: float | None = None  # how long start-up took
        self.started_at: float | None = None  # wall clock when ready
        self._owner_env_before: str | None = None
        self._stopped = True

    # -- what the runner reads

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url if self.prometheus else ""

    @property
    def alertmanager_url(self) -> str:
        return self.alertmanager.url if self.alertmanager else ""

    @property
    def labels(self) -> dict[str, str]:
        """The labels every SLO alert about the service carries (Prometheus target labels)."""
        assert self.service is not None
        return {"service": self.service_name, "cgroup": self.service.cgroup_path}

    # -- lifecycle

    async def __aenter__(self) -> LabStack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> LabStack:
        t0 = time.monotonic()
        self._stopped = False
        lab_faults.sweep_stale()
        # The mark every child inherits (see lab.harness.sweep_stale_processes).
        self._owner_env_before = os.environ.get(OWNER_ENV)
        os.environ[OWNER_ENV] = str(os.getpid())
        atexit.register(self._stop_now)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{lab_faults.STACK_DIR_PREFIX}{os.getpid()}-"))
        try:
            for i, name in enumerate(("provider", "retrieval")):
                self.paths[name] = ShapedPath(i)
                self.paths[name].create()
            self.dns = DnsStandin(records={PROVIDER_HOST: self.paths["provider"].ns_addr}, seed=self.seed).start()
            self.responder = ResponderProcess(self.work_dir / "responder", token=self.token,
                                        log_path=self.logs / "responder.log",
                                        extra_env=self.responder_env)
            self.responder.env["LLMSLO_PUBLIC_URL"] = self.responder.url
            # The service is a plain cgroup, not a pod: name it to the agent's early warning.
            self.responder.env.setdefault("LLMSLO_AGENT_EARLY_WARNING_CGROUPS",
                                          f"*/{lab_cgroups.PREFIX}svc-{os.getpid()}")
            service_port_holder: dict[str, Any] = {}  # the service's port and cgroup, for the alerting side
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._start_backends(service_port_holder))
                tg.create_task(self._start_alerting(service_port_holder))
            if self.start_load:
                self.start_load_generator()
        except BaseException as e:
            await self.stop()
            if isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                raise e.exceptions[0] from None
            raise
        self.start_s = time.monotonic() - t0
        self.started_at = time.time()
        assert self.service is not None  # _start_backends started it
        log.info("event=stack_started seconds=%.1f service_port=%s cgroup=%s", self.start_s, self.service.port,
                 self.service.cgroup_path)
        return self

    async def _start_backends(self, holder: dict[str, Any]) -> None:
        assert self.scratch is not None and self.dns is not None and self.responder is not None
        # A hex token: one starting with "-" would read as an option on the provider's command line.
        self.provider = ProviderProcess(self.scratch / "provider", PROVIDER_HOST, seed=self.seed,
                                        control_token=secrets.token_hex(16), log_path=self.logs / "provider.log",
                                        **self.provider_args)
        self.postgres = LabPostgres(self.logs)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_in_thread(self.provider.start))
            tg.create_task(_in_thread(self.postgres.start))
        # The host-side routes (the middlebox a middlebox_delay slows) listen on the host's end of
        # each path; a forwarder in each far namespace is what the service connects to.
        self.proxy = ProxyProcess({"provider": ("127.0.0.1", self.provider.port, self.paths["provider"].host_addr),
                                   "retrieval": ("127.0.0.1", self.postgres.port, self.paths["retrieval"].host_addr)},
                                  self.scratch / "proxy", seed=self.seed, preexec_fn=die_with_parent)
        self.proxy.log_path = self.logs / "proxy.log"
        await self.proxy.start()
        self.proxies = dict(self.proxy.routes)
        for name, path in self.paths.items():
            fwd = ProxyProcess({name: (path.host_addr, self.proxies[name].port, path.ns_addr)},
                               self.scratch / f"forward-{name}", preexec_fn=die_with_parent,
                               prefix=["ip", "netns", "exec", path.ns])
            fwd.log_path = self.logs / f"forward-{name}.log"
            await fwd.start()
            self.forwarders[name] = fwd
            self.endpoints[name] = (path.ns_addr, fwd.routes[name].port)
        provider_url = f"https://{PROVIDER_HOST}:{self.endpoints['provider'][1]}/v1"
        host, port = self.endpoints["retrieval"]
        pg_dsn = f"postgresql://{ROLE}@{host}:{port}/{DATABASE}"
        argv = [sys.executable, "-m", "lab.rag_service", "--pg-dsn", pg_dsn, "--provider-base-url", provider_url,
                "--ca-file", str(self.provider.ca_file), "--otlp-endpoint", f"{self.responder.url}/v1/traces",
                f"--otlp-token={self.token}", "--service", self.service_name, "--model", self.model]
        self.service = LabRagService(self.service_name, argv, self.dns, self.logs / "rag_service.log",
                                     on_restart=self._after_service_restart)
        holder["port"] = self.service.port
        holder["cgroup"] = self.service.cgroup_path
        await self.service.start()

    async def _start_alerting(self, holder: dict[str, Any]) -> None:
        assert self.scratch is not None and self.responder is not None
        rules = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "responder.cli", "rules", "generate", "--window-scale", repr(self.window_scale),
            "--scrape-interval", SCRAPE_INTERVAL, "--evaluation-interval", SCRAPE_INTERVAL, "--group-by", "cgroup",
            "--ttft-threshold", self.ttft_threshold, "--latency-threshold", self.latency_threshold,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await rules.communicate()
        if rules.returncode != 0:
            raise StackError(f"llmslo rules generate failed: {err.decode().strip()}")
        self.rules_text = out.decode()
        # Only pages reach the responder. Scaled to lab time the ticket alert's 3d/6h windows still
        # span several scenarios, so it would hold one incident open across them.
        self.alertmanager = await start_alertmanager_async(self.scratch, yaml.safe_dump({
            "route": {"receiver": "tickets", "group_by": ["alertname", "service", "cgroup"], "group_wait": "1s",
                      "group_interval": "2s", "repeat_interval": "1h",
                      "routes": [{"receiver": "llmslo", "matchers": ['severity="page"']}]},
            "receivers": [{"name": "tickets"}, {"name": "llmslo", "webhook_configs": [{
                "url": f"{self.responder.url}/webhook/alertmanager", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials": self.token}}}]}]}),
            preexec_fn=die_with_parent)
        while "port" not in holder:  # the service's port and cgroup are the scrape target's
            await asyncio.sleep(0.05)
        self.prometheus = await start_prometheus_async(self.scratch, yaml.safe_dump({
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.alertmanager.port}"]}]}]},
            "scrape_configs": [{"job_name": self.service_name, "static_configs": [{
                "targets": [f"127.0.0.1:{holder['port']}"],
                "labels": {"service": self.service_name, "cgroup": holder["cgroup"]}}]}]}),
            {"llm-slo.yml": self.rules_text}, extra_args=["--rules.alert.resend-delay=1s"],
            preexec_fn=die_with_parent)
        self.responder.env["LLMSLO_PROMETHEUS_URL"] = self.prometheus.url
        self.responder.start()
        await self.responder.wait_ready(timeout=120)

    def start_load_generator(self) -> None:
        assert self.service is not None
        if self.load is None:
            from lab.rag_service import SAMPLE_QUESTIONS  # the service's own questions (imported late: heavy)

            self.load = LoadGenerator(self.service.answer_url, self.load_rps, self.load_stats, seed=self.seed,
                                      body=lambda rng: {"question": rng.choice(SAMPLE_QUESTIONS)})
            self.load.start()

    def set_load_rps(self, rps: float) -> None:
        """Change the load's rate (0 pauses it) without restarting it."""
        self.load_rps = float(rps)
        if self.load is not None:
            self.load.rps = float(rps)

    async def stop(self) -> None:
        """Stop everything, in order, and remove every rule, cgroup, process and temporary
        directory of the stack. Safe to call twice; errors are logged and the rest still goes."""
        if self._stopped:
            return
        self._stopped = True
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("load", lambda: self.load.stop() if self.load else None),
            ("faults", self._clear_faults_quietly),
            ("service", lambda: self.service.stop() if self.service else None),
        ]
        for name, step in steps:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                log.warning("event=stop_step_failed step=%s error=%r", name, e)
        self._stop_now()

    async def _clear_faults_quietly(self) -> None:
        for fault in reversed(self.faults):
            try:
                await asyncio.wait_for(fault.clear(self), 15)
            except Exception as e:  # noqa: BLE001
                log.warning("event=fault_clear_failed fault=%s error=%r", fault.describe(), e)
        self.faults.clear()

    def _stop_now(self) -> None:
        """The synchronous part of stopping (also the atexit hook): processes, nftables tables,
        cgroups, directories."""
        atexit.unregister(self._stop_now)
        self._stopped = True
        for fault in self.faults:  # only left when the event loop never got to clear them
            table = getattr(fault, "table", None)
            if table is not None:
                table.delete()
            contention = getattr(fault, "contention", None)
            if contention is not None:
                contention.__exit__()
            cgroup = getattr(fault, "cgroup", None)  # a noisy neighbour's own cgroup
            if cgroup is not None:
                cgroup.remove()
        if self.service is not None:
            self.service.kill()
        for name, stop in (("prometheus", self.prometheus), ("alertmanager", self.alertmanager),
                           ("responder", self.responder), *((f"forward-{n}", f) for n, f in self.forwarders.items()),
                           ("proxy", self.proxy), ("provider", self.provider), ("postgres", self.postgres),
                           ("dns", self.dns), *((f"path-{n}", p) for n, p in self.paths.items())):
            if stop is None:
                continue
            try:
                stop.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                log.warning("event=stop_failed part=%s error=%r", name, e)
        for table in lab_faults.lab_tables(os.getpid()):
            if "_loss_" in table or "_reset_" in table:
                lab_faults._nft("delete", "table", "inet", table)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self._owner_env_before is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = self._owner_env_before

    # -- faults

    async def apply(self, fault: dict | Fault) -> Fault:
        """Inject a fault (a mapping as in a scenario file, or a Fault); returns the Fault, which
        ``clear`` takes. lab.faults.FaultError when the mapping is not valid."""
        f = make_fault(fault) if isinstance(fault, dict) else fault
        await f.apply(self)
        if f not in self.faults:
            self.faults.append(f)
        log.info("event=fault_applied fault=%s", f.describe())
        return f

    async def clear(self, fault: Fault) -> None:
        await fault.clear(self)
        if fault in self.faults:
            self.faults.remove(fault)
        log.info("event=fault_cleared fault=%s", fault.describe())

    async def clear_all(self) -> None:
        """Clear every fault, then put every component's knobs back to healthy (belt and braces)."""
        for fault in reversed(list(self.faults)):
            await self.clear(fault)
        for channel, defaults in KNOB_DEFAULTS.items():
            if self.knobs[channel] != defaults:
                self.knobs[channel] = dict(defaults)
                await self._push(channel)
        for route in self.proxies.values():
            await route.set_delay(0, 0)

    def knobs_changed(self) -> list[str]:
        """``channel.knob`` for every fault knob not at its healthy value (a leftover fault)."""
        return [f"{c}.{k}" for c, defaults in KNOB_DEFAULTS.items() for k, v in self.knobs[c].items()
                if v != defaults[k]]

    async def set_knobs(self, channel: str, **values: Any) -> None:
        """Set some of a component's fault knobs (the others keep their value) and send them."""
        unknown = set(values) - set(KNOB_DEFAULTS[channel])
        if unknown:
            raise ValueError(f"{channel}: unknown knob(s) {', '.join(sorted(unknown))}")
        self.knobs[channel].update(values)
        await self._push(channel)

    async def reset_knobs(self, channel: str, *names: str) -> None:
        for name in names:
            self.knobs[channel][name] = KNOB_DEFAULTS[channel][name]
        await self._push(channel)

    async def _push(self, channel: str) -> None:
        knobs = dict(self.knobs[channel])
        if channel == "dns":
            assert self.dns is not None
            self.dns.set_faults(**knobs)
        elif channel == "provider":
            assert self.provider is not None
            await asyncio.to_thread(self.provider.set_faults, **knobs)
        elif channel == "retrieval":
            assert self.postgres is not None
            await asyncio.to_thread(self.postgres.set_faults, **knobs)
        elif channel == "policy":
            await self._put_policy(knobs)
        else:
            raise ValueError(f"unknown fault channel {channel!r}")

    async def _put_policy(self, knobs: dict[str, Any]) -> None:
        assert self.service is not None
        headers = {"Authorization": f"Bearer {self.service.control_token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.put(self.service.url + "/lab/faults", json=knobs) as r:
                if r.status != 200:
                    raise StackError(f"the RAG service refused its policy faults: {r.status} {await r.text()}")

    async def _after_service_restart(self) -> None:
        if self.knobs["policy"] != KNOB_DEFAULTS["policy"]:
            await self._push("policy")  # a new process starts healthy: give it its faults again

    # -- what Prometheus says

    async def query(self, expr: str) -> list[dict]:
        """An instant PromQL query against the lab's Prometheus."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(self.prometheus_url + "/api/v1/query", params={"query": expr}) as r:
                body = await r.json()
        if body.get("status") != "success":
            raise StackError(f"Prometheus refused {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    async def alerts(self) -> list[dict]:
        """Prometheus's alerts, pending and firing (``{"labels", "annotations", "state", "activeAt", "value"}``)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(self.prometheus_url + "/api/v1/alerts") as r:
                return (await r.json())["data"]["alerts"]

    async def alerts_firing(self) -> list[dict]:
        """The alerts Prometheus is firing now (what Alertmanager is told about)."""
        return [a for a in await self.alerts() if a.get("state") == "firing"]

    async def ttft_quantiles(self, window_s: float = 60.0, quantiles=(0.5, 0.9, 0.99)) -> dict[str, float | None]:
        """Time-to-first-token quantiles over the last ``window_s`` from the service's histogram
        (interpolated within buckets, as histogram_quantile does)."""
        return await self._histogram_quantiles("llm_time_to_first_token_seconds", window_s, quantiles)

    async def latency_quantiles(self, window_s: float = 60.0, quantiles=(0.5, 0.9, 0.99)) -> dict[str, float | None]:
        return await self._histogram_quantiles("llm_request_duration_seconds", window_s, quantiles)

    async def _histogram_quantiles(self, metric: str, window_s: float, quantiles) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for q in quantiles:
            res = await self.query(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{int(window_s)}s])))")
            v = float(res[0]["value"][1]) if res else None
            out[f"p{round(q * 100)}"] = None if v is None or math.isnan(v) else v
        return out

    async def share_over(self, metric: str, bound: str, window_s: float = 60.0) -> float | None:
        """The share of observations over a bucket bound ``bound`` (e.g. "1") in the window."""
        res = await self.query(f"1 - sum(rate({metric}_bucket{{le=\"{bound}\"}}[{int(window_s)}s])) "
                               f"/ sum(rate({metric}_count[{int(window_s)}s]))")
        return float(res[0]["value"][1]) if res else None


# --- python -m lab.stack: start, measure the healthy service, stop ------------------------------------

async def _ttft_from_traces(stack: LabStack, samples: list[Sample], limit: int = 400) -> list[float]:
    """Exact times to first token of answered requests, from their spans at the responder:
    the chat span's start plus its ``gen_ai.response.time_to_first_chunk``, from the server span's start."""
    assert stack.responder is not None
    out = []
    ids = [s.trace_id for s in samples if s.status == 200 and s.trace_id]
    ids = ids[::max(1, math.ceil(len(ids) / limit))]  # spread over the window
    async with aiohttp.ClientSession(headers=stack.responder.headers()) as http:
        for trace_id in ids:
            async with http.get(f"{stack.responder.url}/api/traces/{trace_id}") as r:
                if r.status != 200:
                    continue
                spans = (await r.json())["spans"]
            server = next((s for s in spans if s["kind"] == "server"), None)
            chat = next((s for s in spans if "gen_ai.response.time_to_first_chunk" in s["attributes"]), None)
            if server and chat:
                first = chat["start_ns"] / 1e9 + float(chat["attributes"]["gen_ai.response.time_to_first_chunk"])
                out.append(first - server["start_ns"] / 1e9)
    return sorted(out)


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmslo-lab-measure-"))
    async with LabStack(work, window_scale=args.window_scale, load_rps=args.rps) as stack:
        assert stack.service is not None and stack.start_s is not None  # started on entering
        print(f"stack started in {stack.start_s:.1f}s; service {stack.service.url} cgroup {stack.service.cgroup_path}",
              file=sys.stderr, flush=True)
        await asyncio.sleep(args.warmup)
        since = time.time()
        await asyncio.sleep(args.seconds)
        window = args.seconds
        await asyncio.sleep(2)  # the service's span batches reach the responder
        ttft = await _ttft_from_traces(stack, stack.load_stats.window(since=since, until=since + window))
        result = {
            "start_s": round(stack.start_s, 2), "rps": args.rps, "seconds": args.seconds,
            "ttft_s_traces": {"requests": len(ttft), **{f"p{q}": quantile(ttft, q / 100) for q in (50, 90, 99)}},
            "client": stack.load_stats.summary(since=since),
            "ttft_s_histogram": await stack.ttft_quantiles(window),
            "latency_s_histogram": await stack.latency_quantiles(window),
            "ttft_share_over": {b: await stack.share_over("llm_time_to_first_token_seconds", b, window)
                                for b in ("0.25", "0.5", "1.0")},
            "latency_share_over": {b: await stack.share_over("llm_request_duration_seconds", b, window)
                                   for b in ("0.5", "1.0", "2.0")},
            "alerts_firing": [a["labels"].get("alertname") for a in await stack.alerts_firing()],
            "service_restarts": stack.service.restarts,
        }
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.stack", description="Start the lab stack, run healthy load, "
                                 "print start time and latency / time-to-first-token quantiles, stop.")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured healthy load (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="load before measuring (default 10)")
    ap.add_argument("--rps", type=float, default=10.0)
    ap.add_argument("--window-scale", type=float, default=1 / 60)
    ap.add_argument("--work-dir", default=None, help="keep logs and the responder's data here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(json.dumps(asyncio.run(_measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
