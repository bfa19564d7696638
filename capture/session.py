"""One probe loaded into the kernel: compile, load, scope, arm, read, and always detach.

All of it is blocking (clang compiles, bpf() syscalls, map iteration): callers run it in a
worker thread, never on the event loop.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from capture import bpfstats
from capture.identity import ResolvedTarget
from capture.probes.base import Probe, ProbeAttachError, RawSnapshot, diff, read_stats
from capture.schemas import ProbeCost

log = logging.getLogger(__name__)

# bcc keeps a process-wide compiler state; two compilations at once have crashed it elsewhere.
_COMPILE_LOCK = threading.Lock()


def _preloaded_bpf_class():
    """bcc's BPF, except that tracepoint programs are loaded (verified) when the module is
    built but attached only by ``attach_tracepoints()``. bcc attaches ``tracepoint__*``
    functions in its constructor (``_trace_autoload``); deferring that is what lets the agent
    keep probes compiled and verified, ready to attach in milliseconds when an alert arrives,
    at no cost to the node in between."""
    from bcc import BPF  # imported late: the responder imports this package without bcc
    from bcc.libbcc import lib

    class PreloadedBPF(BPF):
        def _trace_autoload(self):
            for i in range(lib.bpf_num_functions(self.module)):
                name = lib.bpf_function_name(self.module, i)
                if name.startswith(b"tracepoint__"):
                    self.load_func(name, BPF.TRACEPOINT)
                elif name.startswith((b"kprobe__", b"kretprobe__", b"kfunc__", b"kretfunc__", b"lsm__")):
                    raise ProbeLoadError(f"{name.decode()}: only tracepoints and uprobes are used here")

        def attach_tracepoints(self):
            BPF._trace_autoload(self)  # the functions are loaded already; this attaches them

    return PreloadedBPF


class ProbeLoadError(RuntimeError):
    """The kernel or the compiler refused the probe; the message says which and why."""


@dataclass
class SessionStats:
    events: int
    lost: int
    unattributed: int


class ProbeSession:
    """A loaded instance of one probe. Use as a context manager so it is always detached."""

    def __init__(self, probe: Probe, scope: ResolvedTarget | None):
        self.probe = probe
        self.scope = scope  # None: everything, keyed by cgroup (the recorder)
        self.bpf: Any = None  # bcc's BPF (no type information); None until prepare(), and after close()
        self.compile_ms = 0.0
        self.attach_ms = 0.0
        self.preloaded = False
        self.notes: list[str] = []
        # cgroupfs probes: the counts at load time, and the CPU their sampling has cost.
        self._sample0: RawSnapshot | None = None
        self._sample_cpu_ns = 0
        self._samples = 0
        self._paused: list[str] = []
        self.libraries: set[tuple[int, int]] = set()  # (device, inode) of the files its uprobes are on

    def __enter__(self) -> ProbeSession:
        self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cgroup_ids(self) -> set[int] | None:
        # A target named by pid or port has no cgroup filter, but its processes' cgroups are
        # what a cgroupfs probe reads.
        return None if self.scope is None else set(self.scope.cgroup_ids) | set(self.scope.baseline_cgroups)

    def _sample(self) -> RawSnapshot:
        sample = self.probe.sample
        assert sample is not None  # only cgroupfs probes are sampled
        t0 = time.thread_time_ns()
        try:
            return sample(self._cgroup_ids())
        finally:
            self._sample_cpu_ns += time.thread_time_ns() - t0
            self._samples += 1

    def load(self) -> None:
        if self.probe.sample is not None:
            t0 = time.monotonic()
            try:
                self._sample0 = self._sample()
            except OSError as e:
                raise ProbeLoadError(f"probe {self.probe.name}: cannot read cgroup files: {e}") from e
            self.compile_ms = (time.monotonic() - t0) * 1000
            return
        self.prepare()
        self.activate(self.scope)

    def prepare(self) -> None:
        """Compile the program and load it into the kernel (the verifier runs here) without
        attaching anything: the slow part of a start-up, which the agent does ahead of time."""
        bpfstats.enable()
        t0 = time.monotonic()
        try:
            with _COMPILE_LOCK:
                self.bpf = _preloaded_bpf_class()(text=self.probe.bpf_text().encode(),
                                                  cflags=["-Wno-macro-redefined", *self.probe.cflags()])
        except Exception as e:  # bcc raises bare Exceptions for compile and load failures
            self.close()
            raise ProbeLoadError(f"probe {self.probe.name}: failed to load: {e}") from e
        self.compile_ms = (time.monotonic() - t0) * 1000

    def activate(self, scope: ResolvedTarget | None) -> None:
        """Fill the scope maps, arm, then attach: the program never sees an event out of scope."""
        self.scope = scope
        t1 = time.monotonic()
        try:
            self._set_scope()
            # Tracepoints first: a uprobe probe's helpers (e.g. fdpeers.h learning connect()s)
            # must be running before it seeds what already exists from /proc.
            self.bpf.attach_tracepoints()
            if self.probe.attach_dynamic is not None:
                self.notes = self.probe.attach_dynamic(self.bpf, self.scope, self.libraries)
            if self.probe.seed is not None:
                self.notes += self.probe.seed(self.bpf, self.scope)
        except ProbeAttachError as e:
            self.close()
            raise ProbeLoadError(f"probe {self.probe.name}: {e}") from e
        except Exception:
            self.close()
            raise
        self.attach_ms = (time.monotonic() - t1) * 1000

    def rescan(self) -> list[str]:
        """Attach the probe's uprobes to the libraries its scope maps now and did not when it
        was activated (a container started since brings its own libc and libssl files); what
        was attached, in notes. A probe without uprobes, or a closed session, has nothing to do."""
        if self.bpf is None or self.probe.attach_dynamic is None:
            return []
        try:
            notes = self.probe.attach_dynamic(self.bpf, self.scope, self.libraries)
        except ProbeAttachError:
            return []  # nothing to attach to (yet)
        self.notes += notes
        return notes

    def pause(self) -> None:
        """Detach the probe's per-event tracepoints (``Probe.sampled_attach``) and keep the rest
        attached and the maps as they are."""
        if self.bpf is None:
            return
        for tp in self.probe.sampled_attach:
            if tp.encode() in self.bpf.tracepoint_fds:
                self.bpf.detach_tracepoint(tp=tp.encode())
                self._paused.append(tp)

    def resume(self) -> None:
        """Attach what ``pause`` detached, after forgetting the per-event state left from before
        the pause (``Probe.sampled_state``: a request written before it would be timed across it)."""
        paused, self._paused = self._paused, []
        if self.bpf is None or not paused:
            return
        for name in self.probe.sampled_state:
            self.bpf[name].clear()
        for tp in paused:
            category, event = tp.split(":")
            self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=f"tracepoint__{category}__{event}".encode())

    def _set_scope(self) -> None:
        b = self.bpf
        s = self.scope
        cfg = b["filter_cfg"]
        leaf = cfg.Leaf()
        leaf.armed = 1
        if s is not None:
            one = ctypes.c_uint8(1)
            for cid in s.cgroup_ids:
                b["filter_cgroups"][ctypes.c_uint64(cid)] = one
            for pid in s.pids:
                b["filter_pids"][ctypes.c_uint32(pid)] = one
            for port in s.ports:
                b["filter_ports"][ctypes.c_uint16(port)] = one
            leaf.by_cgroup = int(bool(s.cgroup_ids))
            leaf.by_pid = int(bool(s.pids))
            leaf.by_port = int(bool(s.ports))
        cfg[ctypes.c_int(0)] = leaf

    def read_raw(self) -> RawSnapshot:
        """Cumulative counts since the session loaded."""
        if self.probe.sample is not None:
            return diff(self._sample0 or {}, self._sample())
        assert self.probe.read_raw is not None  # every BPF probe has a decoder for its maps
        return self.probe.read_raw(self.bpf)

    def stats(self) -> SessionStats:
        if self.probe.sample is not None:  # nothing runs per event: the kernel counts anyway
            return SessionStats(events=0, lost=0, unattributed=0)
        events, lost, unattributed = read_stats(self.bpf)
        return SessionStats(events=events, lost=lost, unattributed=unattributed)

    def cost(self) -> ProbeCost:
        if self.probe.sample is not None:
            return ProbeCost(compile_ms=round(self.compile_ms, 1), sample_cpu_ns=self._sample_cpu_ns,
                             samples=self._samples)
        run_time = run_cnt = n = 0
        for fn in self.bpf.funcs.values():
            try:
                st = bpfstats.program_stats(fn.fd)
            except OSError:
                continue
            run_time += st.get("run_time_ns", 0)
            run_cnt += st.get("run_cnt", 0)
            n += 1
        return ProbeCost(bpf_run_time_ns=run_time, bpf_run_count=run_cnt, programs=n,
                         compile_ms=round(self.compile_ms, 1), attach_ms=round(self.attach_ms, 1),
                         preloaded=self.preloaded)

    def close(self) -> None:
        """Detach every tracepoint and free the maps. Safe to call twice."""
        b, self.bpf = self.bpf, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:  # detaching must never raise into a capture's result path
                log.exception("probe=%s event=detach_failed", self.probe.name)
