"""The /llmslo grammar: every known form parses, anything else is refused with the usage."""
from __future__ import annotations

import pytest

from responder.slack.commands import USAGE, Capture, CommandError, Help, Status, parse, strip_mentions

PROBES = ["tcp_retrans", "dns", "runq_latency"]


@pytest.mark.parametrize("text, expected", [
    ("capture llm/rag-api-7d9f-x2 30s", Capture({"namespace": "llm", "pod": "rag-api-7d9f-x2"}, 30.0)),
    ("capture rag-api", Capture({"service": "rag-api"})),
    ("capture deployment/llm/chat 20s", Capture({"namespace": "llm", "deployment": "chat"}, 20.0)),
    ("capture deploy/llm/chat", Capture({"namespace": "llm", "deployment": "chat"})),
    ("capture sts/rag/pg", Capture({"namespace": "rag", "statefulset": "pg"})),
    ("capture ds/kube-system/node-logs", Capture({"namespace": "kube-system", "daemonset": "node-logs"})),
    ("capture job/batch/embed-28f", Capture({"namespace": "batch", "job_name": "embed-28f"})),
    ("capture svc/llm/chat", Capture({"namespace": "llm", "service": "chat"})),
    ("capture pid:4242 2m tcp_retrans,dns", Capture({"pid": "4242"}, 120.0, ("tcp_retrans", "dns"))),
    ("  CAPTURE   rag-api   dns,dns  ", Capture({"service": "rag-api"}, None, ("dns",))),
    ("capture rag-api runq_latency 1s", Capture({"service": "rag-api"}, 1.0, ("runq_latency",))),
    ("status", Status()),
    ("status inc-1a2b3c4d5e", Status("inc-1a2b3c4d5e")),
    ("help", Help()),
    ("", Help()),
])
def test_known_forms_parse(text, expected):
    assert parse(text, PROBES) == expected


@pytest.mark.parametrize("text, says", [
    ("capture", "A target is required"),
    ("capture Rag_API", "`Rag?API` is not a target"),
    ("capture ns/pod; rm -rf /", "`ns/pod;` is not a target"),
    ("capture ns/pod 10s rm", "Unknown probe(s) `rm`"),
    ("capture ../../etc/passwd", "is not a target"),
    ("capture cronjob/llm/nightly", "is not a target"),
    ("capture deployment/llm/chat/x", "is not a target"),
    ("capture deployment/LLM/chat", "is not a target"),
    ("capture pid:0", "is not a target"),
    ("capture pid:99999999", "is not a target"),
    ("capture rag-api 121s", "outside 1–120s"),
    ("capture rag-api 0.5s", "outside 1–120s"),
    ("capture rag-api 10s 20s", "`20s` is neither"),
    ("capture rag-api tcp_retrans,bogus", "Unknown probe(s) `bogus`"),
    ("capture rag-api `whoami`", "`?whoami?` is neither"),
    ("status all", "incident id"),
    ("help me", "takes no arguments"),
    ("deploy rag-api", "Unknown command `deploy`"),
    ("capture " + "a" * 400, "longer than a command"),
])
def test_anything_else_is_refused_with_the_usage(text, says):
    with pytest.raises(CommandError) as e:
        parse(text, PROBES)
    assert says in str(e.value)
    assert "longer" in says or "Unknown probe" in says or str(e.value).endswith(USAGE)


def test_in_a_thread_the_target_may_be_left_out():
    assert parse("capture 30s", PROBES, target_required=False) == Capture({}, 30.0)
    assert parse("capture", PROBES, target_required=False) == Capture()
    assert parse("capture dns 45s", PROBES, target_required=False) == Capture({"service": "dns"}, 45.0)
    # a token that reads as a duration is a duration, never a service called "30s"
    with pytest.raises(CommandError):
        parse("capture 30s", PROBES)


def test_mentions_are_stripped_from_app_mention_text():
    assert strip_mentions("<@U0LLMSLOBOT> capture 30s") == "capture 30s"
    assert strip_mentions("hey <@U0LLMSLOBOT|llmslo>   status") == "hey status"
    assert Capture({"pid": "7"}, 30.0, ("dns",)).describe() == "pid=7 · 30s · dns"
