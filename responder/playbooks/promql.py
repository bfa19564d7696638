"""PromQL templating: ``$label`` / ``${label}`` placeholders in a playbook's queries, filled from
an alert's labels so that a label value can never add PromQL of its own."""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from responder.playbooks.model import PromQuery

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a label value may be where it is pasted outside a string: part of a metric or rule name
# (llm_slo:$slo:burn_rate$long_window) or a range duration; nothing that could add operators.
_BARE_VALUE = re.compile(r"[A-Za-z0-9_:]+")


class ExprTemplateError(ValueError):
    """A query's placeholder syntax is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class Slot:
    label: str
    quoted: bool  # inside a double-quoted PromQL string


@functools.lru_cache(maxsize=512)
def parse_expr(expr: str) -> tuple[str | Slot, ...]:
    """Split ``expr`` into literal text and placeholders, noting which sit inside a string.

    Tracks PromQL's string literals ("...", '...', `...`) and ``#`` comments so a placeholder's
    context is known: that decides how its value is made safe.
    """
    parts: list[str | Slot] = []
    text: list[str] = []
    quote: str | None = None
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c == "$":
            if expr.startswith("$$", i):
                text.append("$")
                i += 2
                continue
            if expr.startswith("${", i):
                close = expr.find("}", i)
                label = expr[i + 2:close] if close != -1 else ""
                if not _IDENT.fullmatch(label):
                    raise ExprTemplateError(
                        f"invalid placeholder at character {i + 1}: ${{...}} needs a label name "
                        "and a closing brace, e.g. ${service}; write $$ for a literal $")
                i = close + 1
            else:
                m = _IDENT.match(expr, i + 1)
                if m is None:
                    raise ExprTemplateError(
                        f"invalid placeholder at character {i + 1}: '$' must be followed by a "
                        "label name ($service or ${service}); write $$ for a literal $")
                label = m.group()
                i = m.end()
            if quote in ("'", "`"):
                raise ExprTemplateError(
                    f"placeholder ${label} is inside a {quote}-quoted string; put placeholders in "
                    'double-quoted strings (service="$service"), where their values are escaped')
            parts.extend(("".join(text), Slot(label, quoted=quote == '"')))
            text = []
            continue
        text.append(c)
        if quote is not None:
            if c == "\\" and quote != "`" and i + 1 < n and expr[i + 1] in (quote, "\\"):
                text.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "#":
            end = expr.find("\n", i)
            end = n if end == -1 else end
            text.append(expr[i + 1:end])  # a comment: copied as is, no placeholders
            i = end
            continue
        i += 1
    if quote is not None:
        raise ExprTemplateError(f"a {quote}-quoted string is never closed")
    parts.append("".join(text))
    return tuple(p for p in parts if p != "")


def _escape_promql_string(value: str) -> str:
    """``value`` as the inside of a double-quoted PromQL string: it cannot end the string."""
    return (value.replace("\\", "\\\\").replace('"', '\\"')
            .replace("\n", "\\n").replace("\r", "\\r"))


def skip_reason(query: PromQuery, labels: Mapping[str, str]) -> str | None:
    """Why ``query`` cannot be filled from ``labels`` (None when it can)."""
    missing = [name for name in query.placeholders if not labels.get(name)]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        return f"skipped: the alert has no {names} label{'s' if len(missing) > 1 else ''} for this query"
    for part in parse_expr(query.expr):
        if isinstance(part, Slot) and not part.quoted and not _BARE_VALUE.fullmatch(labels[part.label]):
            return (f"skipped: label '{part.label}' = {labels[part.label]!r} cannot be used outside a "
                    "quoted string (only letters, digits, '_' and ':')")
    return None


def render_query(query: PromQuery, labels: Mapping[str, str]) -> str | None:
    """``query.expr`` with its placeholders filled from ``labels``; None when it cannot be filled
    (a label is missing or empty, or a value is unsafe where it goes; ``skip_reason`` says which)."""
    if skip_reason(query, labels) is not None:
        return None
    out: list[str] = []
    for part in parse_expr(query.expr):
        if isinstance(part, Slot):
            value = labels[part.label]
            out.append(_escape_promql_string(value) if part.quoted else value)
        else:
            out.append(part)
    return "".join(out)
