"""Drives the toolkit from outside, as a user would: starts ``llmslo serve``, a lab service in
its own cgroup, sends Alertmanager-shaped alerts over HTTP and reads incidents from the API.
Shared by ``make demo`` and the end-to-end tests."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import aiohttp

from common.net import free_port
from lab import process
from lab.cgroups import WorkloadCgroup

REPO = Path(__file__).resolve().parent.parent




def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def alert_payload(status: str, labels: dict[str, str], starts_at: float, ends_at: float | None = None,
                  group_key: str | None = None) -> dict:
    """A version 4 webhook body as Alertmanager 0.25 sends it (nanosecond timestamps)."""
    fp = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    group_key = group_key or '{}:{alertname="' + labels.get("alertname", "") + '"}'
    return {
        "receiver": "llmslo", "status": status, "version": "4", "groupKey": group_key, "truncatedAlerts": 0,
        "groupLabels": {"alertname": labels.get("alertname", "")}, "commonLabels": labels,
        "commonAnnotations": {"summary": "LLM time-to-first-token SLO is burning its error budget"},
        "externalURL": "http://alertmanager.local:9093",
        "alerts": [{
            "status": status, "labels": labels,
            "annotations": {"summary": "TTFT burn rate over 14.4x on 1h and 5m windows"},
            "startsAt": rfc3339(starts_at),
            "endsAt": rfc3339(ends_at) if ends_at else "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": fp,
        }],
    }


async def wait_healthy(url: str, proc: subprocess.Popen | None, what: str, log_path: Path | None,
                       timeout: float, ready=lambda body: True, headers: dict[str, str] | None = None) -> dict:
    """Until ``url``/healthz answers 200 with a body ``ready`` accepts; the body (the detailed
    one when ``headers`` carry credentials). Fails at once when ``proc`` exits, and after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers) as s:
        while time.monotonic() < deadline:
            if proc and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}")
            try:
                async with s.get(url + "/healthz") as r:
                    body = await r.json(content_type=None)
                    if r.status == 200 and ready(body):
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{what} not ready after {timeout}s; see {log_path}")


class ResponderProcess:
    """``llmslo serve`` in a child process with its own data directory; it dies with the thread
    that starts it (see :func:`die_with_parent`), so a killed test or lab leaves no responder."""

    def __init__(self, data_dir: Path, token: str, extra_env: dict[str, str] | None = None,
                 log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.data_dir = data_dir
        self.env = {**os.environ, "LLMSLO_WEBHOOK_TOKEN": token, "LLMSLO_DATA_DIR": str(data_dir),
                    "LLMSLO_RECORDER_INTERVAL_S": "1", **(extra_env or {})}
        self.log_path = log_path or data_dir / "responder.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ResponderProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO, preexec_fn=die_with_parent)
        return self

    async def wait_ready(self, timeout: float = 60.0) -> dict:
        """Until /healthz answers and the in-process agent's recorder is sampling."""
        def sampling(body: dict) -> bool:
            rec = (body.get("agent") or {}).get("recorder")
            return rec is None or bool(rec.get("probes"))

        return await wait_healthy(self.url, self.proc, "llmslo serve", self.log_path, timeout, sampling,
                                  headers=self.headers())

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def health(self) -> dict:
        """The detailed /healthz (loops, store, counts, spans), whatever its status."""
        async with aiohttp.ClientSession(headers=self.headers()) as s:
            async with s.get(self.url + "/healthz") as r:
                return await r.json()

    async def post_alert(self, payload: dict) -> tuple[int, dict]:
        async with aiohttp.ClientSession(headers=self.headers()) as s:
            async with s.post(self.url + "/webhook/alertmanager", json=payload) as r:
                return r.status, await r.json(content_type=None)

    async def incident(self, incident_id: str) -> dict:
        async with aiohttp.ClientSession(headers=self.headers()) as s:
            async with s.get(f"{self.url}/api/incidents/{incident_id}") as r:
                return await r.json()

    async def wait_verdict(self, incident_id: str, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inc = await self.incident(incident_id)
            if inc.get("verdict"):
                return inc
            await asyncio.sleep(0.5)
        raise TimeoutError(f"incident {incident_id} has no verdict after {timeout}s")

    def stop(self) -> None:
        process.stop(self.proc, timeout_s=15)
        if getattr(self, "_log", None):
            self._log.close()


class AgentProcess:
    """``llmslo agent`` in a child process on a loopback port, told which node it is (several can
    stand for several nodes on one machine); it dies with the thread that starts it."""

    def __init__(self, node: str, token: str, extra_env: dict[str, str] | None = None,
                 log_path: Path | None = None):
        self.node = node
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LLMSLO_AGENT_TOKEN": token, **(extra_env or {})}
        self.token = token
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._log: BinaryIO | None = None

    def start(self) -> AgentProcess:
        self._log = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen([sys.executable, "-m", "responder.cli", "agent", "--port", str(self.port),
                                      "--node-name", self.node, "--no-recorder"],
                                     env=self.env, stdout=subprocess.DEVNULL if self._log is None else self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                     preexec_fn=die_with_parent)
        return self

    async def wait_ready(self, timeout: float = 60.0) -> dict:
        return await wait_healthy(self.url, self.proc, f"llmslo agent {self.node}", self.log_path, timeout,
                                  headers={"Authorization": f"Bearer {self.token}"})

    def stop(self) -> None:
        process.stop(self.proc, timeout_s=15)
        if self._log is not None:
            self._log.close()


class LabService:
    """A service module (``python -m MODULE --port P ...``), started straight into its own cgroup."""

    def __init__(self, name: str = "svc", module: str = "lab.service", args: tuple[str, ...] = (),
                 ready_path: str = "/health", log_path: Path | None = None):
        self.port = free_port()
        self.cgroup = WorkloadCgroup(name)
        self.module, self.args, self.ready_path, self.log_path = module, tuple(args), ready_path, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/complete"

    async def start(self) -> LabService:
        self.cgroup.create()
        procs_file = self.cgroup.dir / "cgroup.procs"

        def enter_cgroup() -> None:  # runs in the child before exec: no window outside the cgroup
            procs_file.write_text(str(os.getpid()))

        self.proc = subprocess.Popen([sys.executable, "-m", self.module, "--port", str(self.port), *self.args],
                                     cwd=REPO, preexec_fn=enter_cgroup, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}{self.ready_path}") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        raise TimeoutError("lab service did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.cgroup.remove()


# --- children that do not outlive the lab ------------------------------------------------------
# Every process a lab run starts carries OWNER_ENV=<the run's pid> in its environment (the stack
# sets it in its own environment, so children of children inherit it too). After a run is killed
# with SIGKILL, sweep_stale_processes() finds what is left by that mark; die_with_parent() makes
# the kernel kill direct children at once.
OWNER_ENV = "LLMSLO_LAB_OWNER"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGKILL when the thread that started it dies. Start such
    children from the main thread (the kernel tracks the spawning *thread*, not the process)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def lab_processes(owner: int | None = None) -> dict[int, int]:
    """{pid: owner} of the processes carrying the lab's mark (only ``owner``'s if given)."""
    found = {}
    needle = f"{OWNER_ENV}=".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle):
                value = item[len(needle):].decode(errors="replace")
                if value.isdigit() and (owner is None or int(value) == owner):
                    found[int(d.name)] = int(value)
                break
    return found


def sweep_stale_processes() -> list[int]:
    """SIGKILL every marked process whose owning run is gone; returns their pids."""
    killed = []
    for pid, owner in lab_processes().items():
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    for pid in killed:  # reap-free wait: until /proc no longer lists them (or they are zombies)
        for _ in range(100):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                break
            if state == "Z":
                break
            time.sleep(0.02)
    return killed
