"""Alertmanager label matchers: ``name="value"``, ``name!="value"``, ``name=~"re"``, ``name!~"re"``.

This module owns the matcher syntax and its semantics. Playbooks use it to say which alerts they
handle, in the same words an operator already writes in Alertmanager routes and silences, so a
matcher must mean here exactly what it means there:

- regular expressions are anchored at both ends (``severity=~"page"`` does not match
  ``"pager"``);
- a label the alert does not carry has the value ``""``, so ``foo=""`` matches when ``foo`` is
  absent and ``foo!=""`` means "``foo`` is set".

Regular expressions are Python's ``re``, not Go's RE2; the common subset (alternation, classes,
repetition, groups) behaves the same.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

OPERATORS = ("=", "!=", "=~", "!~")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# Longest first, so "=~" is not read as "=" followed by a value starting with "~".
_OPERATORS_BY_LENGTH = ("=~", "!~", "!=", "=")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n"}
_QUOTE_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


class MatcherError(ValueError):
    """A matcher (or list of matchers) that cannot be parsed; the message says what was expected.

    ``text`` is the input and ``position`` the 0-based offset where parsing stopped, when known.
    """

    def __init__(self, message: str, text: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.text = text
        self.position = position


@dataclass(frozen=True)
class Matcher:
    """One label matcher. Constructing it validates the name, operator and regular expression."""

    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not LABEL_NAME.fullmatch(self.name):
            raise MatcherError(
                f"invalid label name {self.name!r}: expected a name matching "
                f"{LABEL_NAME.pattern}")
        if self.op not in OPERATORS:
            raise MatcherError(
                f"invalid operator {self.op!r} for label {self.name!r}: expected one of "
                + ", ".join(OPERATORS))
        if self.op in ("=~", "!~"):
            try:
                # A non-capturing group so that "a|b" is anchored as a whole, like Alertmanager.
                regex = re.compile(f"(?:{self.value})")
            except re.error as exc:
                raise MatcherError(
                    f"invalid regular expression {self.value!r} for label {self.name!r}: {exc}"
                ) from None
            object.__setattr__(self, "_regex", regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self._regex is not None
        # fullmatch, not "^...$": Python's "$" also matches before a trailing newline.
        hit = self._regex.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value.translate(_QUOTE_ESCAPES)}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher such as ``alertname="LLMTTFTBurn"`` or ``team!=infra``."""
    matcher, pos = _scan_matcher(text, 0, stops="")
    pos = _skip_space(text, pos)
    if pos != len(text):
        raise MatcherError(
            f"unexpected {text[pos:]!r} after the value of label {matcher.name!r}", text, pos)
    return matcher


def parse_matchers(text: str) -> list[Matcher]:
    """Parse ``{a="b", c=~"d.*"}``, or the same list without braces; ``{}`` and ``""`` are empty."""
    pos = _skip_space(text, 0)
    braced = text.startswith("{", pos)
    if braced:
        pos += 1
    found: list[Matcher] = []
    while True:
        pos = _skip_space(text, pos)
        if braced and text.startswith("}", pos):
            pos += 1
            break
        if pos == len(text):
            if braced:
                raise MatcherError("missing closing '}' at the end of the matcher list", text, pos)
            break
        matcher, pos = _scan_matcher(text, pos, stops=",}" if braced else ",")
        found.append(matcher)
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif braced and text.startswith("}", pos):
            pos += 1
            break
        elif pos < len(text):
            closer = " or '}'" if braced else ""
            raise MatcherError(
                f"expected ','{closer} after the matcher for label {matcher.name!r}, "
                f"got {text[pos:]!r}", text, pos)
    pos = _skip_space(text, pos)
    if pos != len(text):
        raise MatcherError(f"unexpected {text[pos:]!r} after the closing '}}'", text, pos)
    return found


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches; no matchers match everything."""
    return all(m.matches(labels) for m in matchers)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _scan_matcher(text: str, pos: int, stops: str) -> tuple[Matcher, int]:
    """Read one matcher starting at ``pos``; an unquoted value ends at any char of ``stops``."""
    pos = _skip_space(text, pos)
    name_match = LABEL_NAME.match(text, pos)
    if name_match is None:
        if pos == len(text):
            raise MatcherError("expected a label name, got the end of the input", text, pos)
        bad = re.match(r'[^=!~\s,{}"]*', text[pos:])
        token = bad.group(0) if bad and bad.group(0) else text[pos]
        raise MatcherError(
            f"invalid label name {token!r}: expected a name matching {LABEL_NAME.pattern}",
            text, pos)
    name = name_match.group(0)
    pos = _skip_space(text, name_match.end())

    op = next((o for o in _OPERATORS_BY_LENGTH if text.startswith(o, pos)), None)
    if op is None:
        got = f"got {text[pos:]!r}" if pos < len(text) else "got the end of the input"
        raise MatcherError(
            f"expected one of {', '.join(OPERATORS)} after label name {name!r}, {got}", text, pos)
    pos = _skip_space(text, pos + len(op))

    if text.startswith('"', pos):
        value, pos = _scan_quoted(text, pos, name)
    else:
        end = pos
        while end < len(text) and text[end] not in stops:
            end += 1
        value = text[pos:end].rstrip()
        if '"' in value:
            raise MatcherError(
                f"unquoted value {value!r} for label {name!r} contains '\"'; "
                "quote the whole value and escape inner quotes as \\\"", text, pos)
        pos = end
    try:
        return Matcher(name, op, value), pos
    except MatcherError as exc:
        raise MatcherError(str(exc), text, name_match.start()) from None


def _scan_quoted(text: str, pos: int, name: str) -> tuple[str, int]:
    """Read a double-quoted value at ``pos`` (which holds the opening quote)."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 == len(text):
                break
            escaped = text[i + 1]
            # Like Alertmanager's classic parser, an unknown escape stays as written, so a
            # regex such as "\d+" means what its author meant.
            out.append(_ESCAPES.get(escaped, "\\" + escaped))
            i += 2
            continue
        out.append(ch)
        i += 1
    raise MatcherError(
        f"unterminated quoted value for label {name!r}: expected a closing '\"'", text, pos)
