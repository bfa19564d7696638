"""Real Prometheus and Alertmanager processes for the lab and the tests (and a small metrics
endpoint for tests that need something to scrape).

The Debian binaries (``prometheus``, ``prometheus-alertmanager``) run as child processes, never a
mock. Each launcher picks a free loopback port, works in its own directory below the caller's
``tmp_path``, waits until the server answers ``/-/ready`` and returns a handle whose ``stop()``
terminates the process, waits for it and removes the directory. ``stop()`` is idempotent, the
handles are context managers, and anything still running when the interpreter exits is stopped
too, so a failing caller does not leave a server behind.

    prom = start_prometheus(tmp_path, "global: {scrape_interval: 1s}\\n", {"slo.yml": rules_text})
    try:
        prom.api("/api/v1/rules")
    finally:
        prom.stop()

``start_prometheus_async`` / ``start_alertmanager_async`` do the same without blocking an event
loop; the lab stack uses them with ``preexec_fn=die_with_parent`` so a SIGKILLed lab takes its
servers along. Rule files are written into the Prometheus directory and added to the config's
``rule_files``, so callers do not need to know the paths. If a server fails to start, the error
carries the tail of its log.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.net import free_port
from lab import process

PROMETHEUS_BIN = os.environ.get("LLMSLO_TEST_PROMETHEUS", "prometheus")
ALERTMANAGER_BIN = os.environ.get("LLMSLO_TEST_ALERTMANAGER", "prometheus-alertmanager")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# free_port() releases the port before the server binds it, so another process can take it in
# between; starting again on a new port is cheaper than making every caller retry.
_START_ATTEMPTS = 3

T = TypeVar("T")

_running: set[ServerProcess] = set()
_running_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """The server exited or never became ready; the message includes its log tail."""




def wait_for(check: Callable[[], T], timeout_s: float, interval_s: float = 0.25, what: str = "condition",
             fatal: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``check`` until it returns something truthy and return that; TimeoutError after ``timeout_s``.

    Exceptions from ``check`` count as "not yet" (a server still starting refuses connections) and
    the last one is named in the TimeoutError, except those in ``fatal``, which propagate at once.
    """
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except fatal:
            raise
        except Exception as e:  # noqa: BLE001 - retried; reported below if it never succeeds
            last = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last else ""
            raise TimeoutError(f"{what} not met within {timeout_s:g}s{detail}")
        time.sleep(interval_s)


def http_get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


@dataclass(eq=False)
class ServerProcess:
    """A running server started by this module. ``url`` has no trailing slash."""

    name: str
    url: str
    port: int
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def api(self, path: str, **params: Any) -> Any:
        """GET ``path`` (e.g. ``/api/v1/rules``) and return the JSON body's ``data`` if it has one."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_get_json(f"{self.url}{path}{query}")
        if isinstance(body, dict) and body.get("status") == "success" and "data" in body:
            return body["data"]
        return body

    def stop(self) -> None:
        """Terminate (then kill), wait, and remove the working directory. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            process.stop(self.proc, STOP_TIMEOUT_S)
        finally:
            with _running_lock:
                _running.discard(self)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrometheusProcess(ServerProcess):
    def query(self, expr: str, time_s: float | None = None) -> list[dict]:
        """An instant query's result vector (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        params: dict[str, Any] = {"query": expr}
        if time_s is not None:
            params["time"] = time_s
        return self.api("/api/v1/query", **params)["result"]

    def rule_groups(self) -> list[dict]:
        return self.api("/api/v1/rules")["groups"]

    def alerts(self) -> list[dict]:
        return self.api("/api/v1/alerts")["alerts"]

    def reload(self) -> None:
        """Re-read config and rule files (started with --web.enable-lifecycle)."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


class AlertmanagerProcess(ServerProcess):
    def alerts(self, **filters: Any) -> list[dict]:
        """Alerts Alertmanager currently holds (API v2)."""
        return self.api("/api/v2/alerts", **filters)


@atexit.register
def _stop_leftovers() -> None:
    with _running_lock:
        leftovers = list(_running)
    for server in leftovers:
        server.stop()


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServerStartError(f"{binary} is not on PATH (Debian packages prometheus / prometheus-alertmanager)")
    return path


@dataclass
class _Launch:
    """How to start one server: everything but the port, which each attempt picks anew."""

    kind: type[ServerProcess]
    name: str
    workdir: Path
    argv_for_port: Callable[[int], list[str]]
    ready_timeout_s: float
    preexec_fn: Callable[[], None] | None = None
    env: Mapping[str, str] | None = None

    def spawn(self, attempt: int) -> ServerProcess:
        port = free_port()
        log_path = self.workdir / f"{self.name}.{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(self.argv_for_port(port), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn,
                                    env=dict(self.env) if self.env is not None else None)
        server = self.kind(name=self.name, url=f"http://127.0.0.1:{port}", port=port, workdir=self.workdir,
                           proc=proc, log_path=log_path)
        with _running_lock:
            _running.add(server)
        return server

    def ready(self, server: ServerProcess) -> bool:
        if server.proc.poll() is not None:
            raise ServerStartError(f"{self.name} exited with status {server.proc.returncode}")
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    def failed(self, server: ServerProcess, e: BaseException) -> tuple[ServerStartError, bool]:
        """The error to raise, and whether another attempt (on another port) may succeed."""
        tail = server.log_tail()
        error = ServerStartError(f"{self.name} did not start: {e}\n--- {self.name} log ---\n{tail}")
        _terminate_only(server)  # keep the directory for the next attempt; only the process goes
        return error, "address already in use" in tail


def _start(launch: _Launch) -> ServerProcess:
    error: ServerStartError | None = None
    for attempt in range(_START_ATTEMPTS):
        server = launch.spawn(attempt)
        try:
            wait_for(functools.partial(launch.ready, server), launch.ready_timeout_s, interval_s=0.1,
                     what=f"{launch.name} ready on {server.url}", fatal=(ServerStartError,))
            return server
        except (TimeoutError, ServerStartError) as e:
            error, retry = launch.failed(server, e)
            if not retry:
                break
    shutil.rmtree(launch.workdir, ignore_errors=True)
    assert error is not None
    raise error


async def _start_async(launch: _Launch) -> ServerProcess:
    """As ``_start``, polling with asyncio.sleep. The process is spawned from the calling (event
    loop) thread, which matters for ``die_with_parent``: the kernel ties it to the spawning thread."""
    error: ServerStartError | None = None
    for attempt in range(_START_ATTEMPTS):
        server = launch.spawn(attempt)
        deadline = time.monotonic() + launch.ready_timeout_s
        last: BaseException | None = None
        try:
            while True:
                try:
                    if await asyncio.to_thread(launch.ready, server):
                        return server
                except ServerStartError:
                    raise
                except Exception as e:  # noqa: BLE001 - still starting
                    last = e
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{launch.name} ready on {server.url} not met within "
                                       f"{launch.ready_timeout_s:g}s (last error: {last!r})")
                await asyncio.sleep(0.1)
        except (TimeoutError, ServerStartError) as e:
            error, retry = launch.failed(server, e)
            if not retry:
                break
        except BaseException:
            server.stop()
            raise
    shutil.rmtree(launch.workdir, ignore_errors=True)
    assert error is not None
    raise error


def _terminate_only(server: ServerProcess) -> None:
    process.stop(server.proc, STOP_TIMEOUT_S)
    with _running_lock:
        _running.discard(server)
    server._stopped = True


def _fresh_dir(tmp_path: Path, name: str) -> Path:
    for i in range(1000):
        d = Path(tmp_path) / (name if i == 0 else f"{name}-{i}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"no free directory name for {name} under {tmp_path}")


def _prometheus_launch(tmp_path: Path, config_yaml_text: str, rule_files: Mapping[str, str] | None,
                       extra_args: Sequence[str], ready_timeout_s: float,
                       preexec_fn: Callable[[], None] | None, env: Mapping[str, str] | None) -> _Launch:
    binary = _require(PROMETHEUS_BIN)
    config = yaml.safe_load(config_yaml_text) or {}
    if not isinstance(config, dict):
        raise ValueError("the Prometheus config must be a YAML mapping")
    for name in rule_files or {}:
        if Path(name).name != name:
            raise ValueError(f"rule file name {name!r} must be a bare file name")
    workdir = _fresh_dir(tmp_path, "prometheus")
    paths = []
    for name, text in (rule_files or {}).items():
        (workdir / name).write_text(text)
        paths.append(str(workdir / name))
    config["rule_files"] = list(config.get("rule_files") or []) + paths
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def argv(port: int) -> list[str]:
        return [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://127.0.0.1:{port}",
                "--web.enable-lifecycle", *extra_args]

    return _Launch(PrometheusProcess, "prometheus", workdir, argv, ready_timeout_s, preexec_fn, env)


def _alertmanager_launch(tmp_path: Path, config_yaml_text: str, extra_args: Sequence[str], ready_timeout_s: float,
                         preexec_fn: Callable[[], None] | None, env: Mapping[str, str] | None) -> _Launch:
    binary = _require(ALERTMANAGER_BIN)
    workdir = _fresh_dir(tmp_path, "alertmanager")
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(config_yaml_text)

    def argv(port: int) -> list[str]:
        # An empty --cluster.listen-address turns gossip off: no second port, no peers to wait for.
        return [binary, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://127.0.0.1:{port}",
                "--cluster.listen-address=", *extra_args]

    return _Launch(AlertmanagerProcess, "alertmanager", workdir, argv, ready_timeout_s, preexec_fn, env)


def start_prometheus(tmp_path: Path, config_yaml_text: str, rule_files: Mapping[str, str] | None = None, *,
                     extra_args: Sequence[str] = (), ready_timeout_s: float = READY_TIMEOUT_S,
                     preexec_fn: Callable[[], None] | None = None,
                     env: Mapping[str, str] | None = None) -> PrometheusProcess:
    """Start ``prometheus`` with this config and these rule files (file name -> YAML text).

    The rule files are written next to the config and appended to its ``rule_files``. The server
    listens on a free 127.0.0.1 port, keeps its TSDB in its own directory, has
    ``--web.enable-lifecycle`` (``reload()``) and uses its own URL as ``--web.external-url`` so
    alerts' generatorURL point at it. ``extra_args`` go last, e.g. ``["--rules.alert.resend-delay=1s"]``.
    """
    launch = _prometheus_launch(tmp_path, config_yaml_text, rule_files, extra_args, ready_timeout_s, preexec_fn, env)
    return _start(launch)  # type: ignore[return-value]


async def start_prometheus_async(tmp_path: Path, config_yaml_text: str, rule_files: Mapping[str, str] | None = None,
                                 *, extra_args: Sequence[str] = (), ready_timeout_s: float = READY_TIMEOUT_S,
                                 preexec_fn: Callable[[], None] | None = None,
                                 env: Mapping[str, str] | None = None) -> PrometheusProcess:
    """``start_prometheus`` for async callers: the event loop keeps running while it starts."""
    launch = _prometheus_launch(tmp_path, config_yaml_text, rule_files, extra_args, ready_timeout_s, preexec_fn, env)
    return await _start_async(launch)  # type: ignore[return-value]


def start_alertmanager(tmp_path: Path, config_yaml_text: str, *, extra_args: Sequence[str] = (),
                       ready_timeout_s: float = READY_TIMEOUT_S, preexec_fn: Callable[[], None] | None = None,
                       env: Mapping[str, str] | None = None) -> AlertmanagerProcess:
    """Start ``prometheus-alertmanager`` with this config, clustering off, on a free 127.0.0.1 port.

    Point Prometheus at it with ``alerting: {alertmanagers: [{static_configs: [{targets:
    ["127.0.0.1:<am.port>"]}]}]}``.
    """
    launch = _alertmanager_launch(tmp_path, config_yaml_text, extra_args, ready_timeout_s, preexec_fn, env)
    return _start(launch)  # type: ignore[return-value]


async def start_alertmanager_async(tmp_path: Path, config_yaml_text: str, *, extra_args: Sequence[str] = (),
                                   ready_timeout_s: float = READY_TIMEOUT_S,
                                   preexec_fn: Callable[[], None] | None = None,
                                   env: Mapping[str, str] | None = None) -> AlertmanagerProcess:
    """``start_alertmanager`` for async callers."""
    launch = _alertmanager_launch(tmp_path, config_yaml_text, extra_args, ready_timeout_s, preexec_fn, env)
    return await _start_async(launch)  # type: ignore[return-value]


def serve_metrics(registry: Any) -> tuple[str, Callable[[], None]]:
    """Serve a prometheus_client registry on a free 127.0.0.1 port.

    Returns ``(url, stop)``: ``url`` is the ``/metrics`` URL; Prometheus scrapes target
    ``urllib.parse.urlsplit(url).netloc``. ``stop()`` closes the socket and joins the thread.
    """
    from prometheus_client.exposition import start_wsgi_server

    httpd, thread = start_wsgi_server(0, addr="127.0.0.1", registry=registry)
    port = httpd.server_address[1]
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=STOP_TIMEOUT_S)

    return f"http://127.0.0.1:{port}/metrics", stop
