"""Alertmanager matcher syntax and semantics."""
from __future__ import annotations

import pytest

from responder.playbooks.matchers import Matcher, MatcherError, matches, parse_matcher, parse_matchers

LABELS = {"alertname": "LLMTTFTBurn", "severity": "page", "team": "llm", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('alertname="LLMTTFTBurn"', Matcher("alertname", "=", "LLMTTFTBurn")),
        ('severity=~"page|critical"', Matcher("severity", "=~", "page|critical")),
        ("team!=infra", Matcher("team", "!=", "infra")),
        ('  team !~ "in.*"  ', Matcher("team", "!~", "in.*")),
        ("severity=~page|critical", Matcher("severity", "=~", "page|critical")),
        ('foo=""', Matcher("foo", "=", "")),
        ("foo=", Matcher("foo", "=", "")),
        ("_x9=a b", Matcher("_x9", "=", "a b")),
    ],
)
def test_parse_matcher(text: str, expected: Matcher) -> None:
    assert parse_matcher(text) == expected


def test_escapes_in_quoted_values() -> None:
    assert parse_matcher(r'msg="say \"hi\""').value == 'say "hi"'
    assert parse_matcher(r'path="C:\\tmp"').value == "C:\\tmp"
    assert parse_matcher(r'text="a\nb"').value == "a\nb"
    # Unknown escapes stay as written (Alertmanager's classic parser), so regexes read naturally.
    assert parse_matcher(r'port=~"\d+"').value == r"\d+"
    assert parse_matcher(r'port=~"\d+"').matches({"port": "8080"})
    # Commas and braces are ordinary characters inside quotes.
    assert parse_matcher('x="{a,b}"').value == "{a,b}"


def test_str_round_trips() -> None:
    for m in (Matcher("a", "=", 'q"uote\\back\nline'), Matcher("b", "!~", r"\d+|x")):
        assert parse_matcher(str(m)) == m


def test_equal_and_not_equal() -> None:
    assert parse_matcher('severity="page"').matches(LABELS)
    assert not parse_matcher('severity="Page"').matches(LABELS)
    assert parse_matcher('severity!="ticket"').matches(LABELS)
    assert not parse_matcher('severity!="page"').matches(LABELS)


def test_regex_ops_are_fully_anchored() -> None:
    assert parse_matcher('severity=~"page|critical"').matches(LABELS)
    # Anchoring: a substring is not a match, and the alternation is anchored as a whole.
    assert not parse_matcher('severity=~"pag"').matches(LABELS)
    assert not parse_matcher('severity=~"age"').matches(LABELS)
    assert not parse_matcher('alertname=~"LLM|Burn"').matches(LABELS)
    assert parse_matcher('alertname=~"LLM.*Burn"').matches(LABELS)
    assert not parse_matcher('severity=~"page"').matches({"severity": "page\n"})
    assert parse_matcher('severity!~"ticket|info"').matches(LABELS)
    assert not parse_matcher('severity!~"pa.e"').matches(LABELS)


def test_missing_label_is_the_empty_string() -> None:
    assert parse_matcher('missing=""').matches(LABELS)
    assert not parse_matcher('missing!=""').matches(LABELS)
    assert parse_matcher('team!=""').matches(LABELS)  # "team is set"
    assert not parse_matcher('empty!=""').matches(LABELS)  # set to "" counts as unset
    assert parse_matcher('missing!="x"').matches(LABELS)
    assert not parse_matcher('missing="x"').matches(LABELS)
    assert parse_matcher('missing=~".*"').matches(LABELS)
    assert not parse_matcher('missing=~".+"').matches(LABELS)
    assert parse_matcher('missing!~".+"').matches(LABELS)


def test_parse_matchers_brace_list() -> None:
    ms = parse_matchers('{alertname="LLMTTFTBurn", severity=~"page|critical", team!=infra}')
    assert [str(m) for m in ms] == [
        'alertname="LLMTTFTBurn"', 'severity=~"page|critical"', 'team!="infra"']
    assert matches(ms, LABELS)
    assert not matches(ms, {**LABELS, "team": "infra"})
    assert parse_matchers('{a="x,}y"}') == [Matcher("a", "=", "x,}y")]
    assert parse_matchers("a=b, c=~d.*,") == [Matcher("a", "=", "b"), Matcher("c", "=~", "d.*")]
    assert parse_matchers("{ }") == [] and parse_matchers("") == []
    assert matches([], LABELS)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("foo", 'expected one of =, !=, =~, !~ after label name \'foo\''),
        ("foo ~= bar", "expected one of =, !=, =~, !~ after label name 'foo', got '~= bar'"),
        ('1foo="x"', "invalid label name '1foo': expected a name matching [a-zA-Z_][a-zA-Z0-9_]*"),
        ('my-label="x"', "expected one of =, !=, =~, !~ after label name 'my'"),
        ('="x"', "invalid label name '='"),
        ("", "expected a label name, got the end of the input"),
        ('foo=~"(unclosed"', "invalid regular expression '(unclosed' for label 'foo'"),
        ('foo!~"*"', "invalid regular expression '*'"),
        ('foo="bar', "unterminated quoted value for label 'foo'"),
        ('foo="bar\\"', "unterminated quoted value"),
        ('foo="bar" baz', "unexpected 'baz' after the value of label 'foo'"),
        ('foo=ba"r', "contains '\"'; quote the whole value"),
    ],
)
def test_parse_matcher_errors(text: str, fragment: str) -> None:
    with pytest.raises(MatcherError) as info:
        parse_matcher(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{a="b"', "missing closing '}'"),
        ('{a="b" c="d"}', "expected ',' or '}' after the matcher for label 'a'"),
        ('{a="b"} x', "unexpected 'x' after the closing '}'"),
        ('{a="b",, c="d"}', "invalid label name ','"),
        ('{a=~"["}', "invalid regular expression"),
    ],
)
def test_parse_matchers_errors(text: str, fragment: str) -> None:
    with pytest.raises(MatcherError) as info:
        parse_matchers(text)
    assert fragment in str(info.value)


def test_matcher_constructor_validates() -> None:
    with pytest.raises(MatcherError, match="invalid operator '=='"):
        Matcher("a", "==", "b")
    with pytest.raises(MatcherError, match="invalid label name 'a.b'"):
        Matcher("a.b", "=", "b")
    assert isinstance(MatcherError("x"), ValueError)


def test_error_carries_position() -> None:
    with pytest.raises(MatcherError) as info:
        parse_matchers('{a="b", c=~"("}')
    assert info.value.position == 8
