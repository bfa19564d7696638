"""The ``/llmslo`` command and ``@llmslo`` mentions, parsed strictly.

Forms (anything else is answered with :data:`USAGE`)::

    capture <namespace/pod | kind/namespace/name | service | pid:N> [duration] [probe,probe...]
    status [incident-id]
    help

Inside an incident's thread (an @mention) the target may be left out: the capture then targets
the incident's own workload. Every token is matched against a closed pattern (Kubernetes object
names, a positive pid, a bounded duration, known probe names), so no argument reaches a shell,
a query or a file path; durations are bounded like the agent's (``capture.schemas``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from capture.schemas import MAX_CAPTURE_SECONDS, MIN_CAPTURE_SECONDS, RequestError, parse_duration

MAX_TEXT = 300  # a command is a few words; longer input is refused unread
MAX_PID = 4_194_304  # the kernel's pid_max ceiling

# Kubernetes names: a namespace or service is a DNS-1123 label, a pod a DNS-1123 subdomain.
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
_POD_RE = re.compile(rf"({_LABEL})/({_SUBDOMAIN})")
_SERVICE_RE = re.compile(_LABEL)
# kubectl's kinds and short names -> the alert label the shipped playbooks read for them.
_KIND_LABELS = {"deployment": "deployment", "deploy": "deployment", "statefulset": "statefulset",
                "sts": "statefulset", "daemonset": "daemonset", "ds": "daemonset", "job": "job_name",
                "service": "service", "svc": "service"}
_WORKLOAD_RE = re.compile(rf"({'|'.join(_KIND_LABELS)})/({_LABEL})/({_SUBDOMAIN})")
_PID_RE = re.compile(r"pid:([1-9][0-9]{0,6})")
_PROBES_RE = re.compile(r"[a-z][a-z0-9_]*(?:,[a-z][a-z0-9_]*)*")
_INCIDENT_RE = re.compile(r"inc-[0-9a-f]{6,32}")
_MENTION_RE = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")

USAGE = ("Usage: `/llmslo capture <namespace/pod | deployment/namespace/name | service | pid:N> [duration] "
         "[probes]` (also statefulset, daemonset, job and service as `kind/namespace/name`; "
         f"duration {MIN_CAPTURE_SECONDS:g}–{MAX_CAPTURE_SECONDS:g}s, e.g. `30s`; probes comma-separated, "
         "e.g. `tcp_retrans,dns`), `/llmslo status [incident-id]`, `/llmslo help`. In an incident's thread: "
         "`@llmslo capture [duration] [probes]`.")


class CommandError(ValueError):
    """Input that is not one of the forms; the message says which part, then the usage."""


@dataclass(frozen=True)
class Capture:
    labels: dict[str, str] = field(default_factory=dict)  # empty: the thread's incident's workload
    duration_s: float | None = None  # None: the playbook's
    probes: tuple[str, ...] | None = None  # None: the playbook's

    def describe(self) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.labels.items()) or "this incident's workload"
        parts = [what]
        if self.duration_s is not None:
            parts.append(f"{self.duration_s:g}s")
        if self.probes:
            parts.append(", ".join(self.probes))
        return " · ".join(parts)


@dataclass(frozen=True)
class Status:
    incident_id: str | None = None


@dataclass(frozen=True)
class Help:
    pass


Command = Capture | Status | Help


def strip_mentions(text: str) -> str:
    """An app_mention's text without the ``<@U...>`` mentions."""
    return " ".join(_MENTION_RE.sub(" ", text or "").split())


def target_labels(token: str) -> dict[str, str] | None:
    """The alert labels a target token names, or None when it is not a target."""
    if m := _WORKLOAD_RE.fullmatch(token):
        return {"namespace": m.group(2), _KIND_LABELS[m.group(1)]: m.group(3)}
    if m := _POD_RE.fullmatch(token):
        return {"namespace": m.group(1), "pod": m.group(2)}
    if m := _PID_RE.fullmatch(token):
        return {"pid": m.group(1)} if int(m.group(1)) <= MAX_PID else None
    if _SERVICE_RE.fullmatch(token) and _duration(token) is None:
        return {"service": token}
    return None


def _duration(token: str) -> float | None:
    try:
        return parse_duration(token)
    except RequestError:
        return None


def parse(text: str, known_probes: Iterable[str], *, target_required: bool = True) -> Command:
    """The command ``text`` names; CommandError (with the usage) when it names none."""
    if len(text or "") > MAX_TEXT:
        raise CommandError(f"That is longer than a command ({MAX_TEXT} characters at most). {USAGE}")
    words = (text or "").split()
    if not words or words[0].lower() == "help":
        if len(words) > 1:
            raise CommandError(f"`help` takes no arguments. {USAGE}")
        return Help()
    verb, args = words[0].lower(), words[1:]
    if verb == "status":
        if len(args) > 1 or (args and not _INCIDENT_RE.fullmatch(args[0])):
            raise CommandError(f"`status` takes at most an incident id like `inc-1a2b3c4d5e`. {USAGE}")
        return Status(args[0] if args else None)
    if verb != "capture":
        raise CommandError(f"Unknown command `{_shown(verb)}`. {USAGE}")
    return _capture(args, set(known_probes), target_required)


def _capture(args: list[str], known: set[str], target_required: bool) -> Capture:
    labels: dict[str, str] = {}
    if args and (found := target_labels(args[0])) is not None:
        labels, args = found, args[1:]
    elif target_required:
        shown = f"`{_shown(args[0])}` is not a target" if args else "A target is required"
        raise CommandError(f"{shown}: use `namespace/pod`, `deployment/namespace/name`, a service name or "
                           f"`pid:N`. {USAGE}")
    duration: float | None = None
    probes: tuple[str, ...] | None = None
    for token in args:
        if duration is None and (d := _duration(token)) is not None:
            if not MIN_CAPTURE_SECONDS <= d <= MAX_CAPTURE_SECONDS:
                raise CommandError(f"Duration `{_shown(token)}` is outside {MIN_CAPTURE_SECONDS:g}–"
                                   f"{MAX_CAPTURE_SECONDS:g}s. {USAGE}")
            duration = d
        elif probes is None and _PROBES_RE.fullmatch(token):
            names = tuple(dict.fromkeys(token.split(",")))
            unknown = [p for p in names if p not in known]
            if unknown:
                raise CommandError(f"Unknown probe(s) {', '.join(f'`{p}`' for p in unknown)}; known: "
                                   f"{', '.join(sorted(known))}.")
            probes = names
        else:
            raise CommandError(f"`{_shown(token)}` is neither a duration nor a probe list. {USAGE}")
    return Capture(labels, duration, probes)


def _shown(token: str) -> str:
    """A user's token, safe to echo inside a code span (bounded, no backticks or markup)."""
    return re.sub(r"[`<>&*_~]", "?", token)[:40]
