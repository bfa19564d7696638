"""Property-based fuzzing of every way in: the webhook, OTLP/HTTP, ad hoc captures, Slack's
endpoint, the agent's API (schemathesis, from capture/openapi.yaml), playbook files and the
settings file. For every generated input: no 5xx, no ERROR or traceback in the servers' log,
nothing stored when the request is refused, and the server still answering afterwards. Every
CLI path that reads a file the user wrote (playbooks, settings) says what is wrong, never raises.

Sized for the CI budget (a few hundred examples per target, derandomized so a failure repeats).
"""
from __future__ import annotations

import json
import urllib.parse

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import AGENT_TOKEN, REPO, TOKEN, stored
from tests.standins.slack import signed_headers

pytestmark = pytest.mark.fuzz

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Any character at all, lone surrogates and NUL included (JSON escapes them on the wire).
anything = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30, max_value=10**60)
           | st.floats(allow_nan=False) | anything)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(anything, inner, max_size=4), max_leaves=16)


def valid_notification() -> dict:
    return {"version": "4", "groupKey": '{}:{alertname="LLMTTFTBurn"}', "truncatedAlerts": 0, "status": "firing",
            "receiver": "llmslo", "groupLabels": {"alertname": "LLMTTFTBurn"},
            "commonLabels": {"alertname": "LLMTTFTBurn", "pid": "1"}, "commonAnnotations": {},
            "externalURL": "http://am", "alerts": [{
                "status": "firing", "labels": {"alertname": "LLMTTFTBurn", "pid": "1"}, "annotations": {},
                "startsAt": "2026-12-01T10:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": "0123456789abcdef"}]}


def paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, prefix + (i,))


VALID_PATHS = [p for p in paths(valid_notification()) if p]


@st.composite
def mutated_notifications(draw) -> bytes:
    doc = valid_notification()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(VALID_PATHS))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):  # an earlier mutation changed the shape
            continue
    return json.dumps(doc).encode()


bodies = st.one_of(mutated_notifications(), json_values.map(lambda v: json.dumps(v).encode()),
                   st.binary(max_size=600))


HTTP = requests.Session()  # one keep-alive connection, as a real client holds


def check(server, trouble, before: dict, r: requests.Response, extra_ok=()) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert not trouble.records, trouble.texts()[:3]
    if r.status_code >= 400 and r.status_code not in extra_ok:
        assert stored(server.db) == before, f"a refused request ({r.status_code}) stored something"
        assert r.headers.get("Content-Type", "").startswith("application/json")
        assert r.json().get("error"), r.text


def alive(server) -> None:
    assert HTTP.get(server.url + "/healthz", timeout=10).status_code == 200


@FUZZ
@given(body=bodies)
def test_webhook(responder, trouble, body):
    before = stored(responder.db)
    r = HTTP.post(responder.url + "/webhook/alertmanager", data=body, timeout=30,
                      headers={**AUTH, "Content-Type": "application/json"})
    check(responder, trouble, before, r)


@FUZZ
@given(body=st.one_of(st.binary(max_size=600), json_values.map(lambda v: json.dumps(v).encode())),
       media=st.sampled_from(["application/json", "application/x-protobuf"]),
       gzip=st.booleans())
def test_otlp_traces(responder, trouble, body, media, gzip):
    headers = {**AUTH, "Content-Type": media}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    r = HTTP.post(responder.url + "/v1/traces", data=body, headers=headers, timeout=30)
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert not trouble.records, trouble.texts()[:3]


capture_fields = st.fixed_dictionaries({}, optional={
    "labels": json_values | st.dictionaries(st.sampled_from(["pid", "service", "bad-name", ""]), json_values,
                                            max_size=3),
    "reason": json_values, "playbook": json_values, "started_at": json_values,
    "duration_s": json_values, "probes": json_values, "extra": json_values})


@FUZZ
@given(body=st.one_of(capture_fields.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300)))
def test_adhoc_captures(responder, trouble, body):
    before = stored(responder.db)
    r = HTTP.post(responder.url + "/api/captures", data=body, timeout=30,
                      headers={**AUTH, "Content-Type": "application/json"})
    check(responder, trouble, before, r)


slack_forms = st.dictionaries(st.sampled_from(["command", "text", "user_id", "channel_id", "payload", "type",
                                               "trigger_id", "response_url", "team_id"]),
                              anything, max_size=6)


@FUZZ
@given(form=slack_forms, raw=st.binary(max_size=300), signed=st.booleans(), use_raw=st.booleans(),
       timestamp=st.one_of(st.none(), anything))
def test_slack_events(responder, trouble, form, raw, signed, use_raw, timestamp):
    body = raw if use_raw else urllib.parse.urlencode(
        {k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signed:
        headers |= signed_headers(body, responder.secret)
    elif timestamp is not None:
        headers |= {"X-Slack-Request-Timestamp": timestamp.encode("utf-8", "surrogatepass").decode("latin-1"),
                    "X-Slack-Signature": "v0=00"}
    before = stored(responder.db)
    try:
        r = HTTP.post(responder.url + "/slack/events", data=body, headers=headers, timeout=30)
    except requests.exceptions.InvalidHeader:
        return  # the HTTP client will not send such a header at all
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert not trouble.records, trouble.texts()[:3]
    if r.status_code >= 400:
        assert stored(responder.db) == before


def test_the_responder_still_answers(responder):
    alive(responder)


# --- the agent's API, from its OpenAPI description ---------------------------------------------

# The description is OpenAPI 3.1 (JSON Schema 2020-12), which schemathesis 3 reads behind a flag.
schemathesis.experimental.OPEN_API_3_1.enable()
agent_schema = schemathesis.from_path(str(REPO / "capture" / "openapi.yaml"))


@pytest.fixture
def agent_case_runner(agent):
    return agent


@agent_schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_agent_api(case, agent_case_runner, trouble):
    agent = agent_case_runner
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {AGENT_TOKEN}"}
    response = case.call(base_url=agent.url, timeout=30)
    case.validate_response(response, checks=(schemathesis.checks.not_a_server_error,
                                             schemathesis.checks.status_code_conformance,
                                             schemathesis.checks.response_schema_conformance))
    assert not trouble.records, trouble.texts()[:3]


@FUZZ
@given(body=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)))
def test_agent_captures_with_any_body(agent, trouble, body):
    r = HTTP.post(agent.url + "/v1/captures", data=body, timeout=30,
                      headers={"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"})
    assert r.status_code in (400, 413, 429), (r.status_code, r.text[:300])
    assert not trouble.records, trouble.texts()[:3]


# --- files a user writes -----------------------------------------------------------------------

yaml_docs = st.one_of(
    json_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True) if True else ""),
    st.text(max_size=300),
    st.fixed_dictionaries({"name": json_values, "match": json_values, "capture": json_values}).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)),
)


@FUZZ
@given(text=yaml_docs)
def test_playbook_files(tmp_path_factory, text):
    from capture.probes import CATALOG
    from responder.playbooks import validate_directory

    d = tmp_path_factory.mktemp("pb")
    (d / "fuzzed.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    (d / "fallback.yaml").write_text((REPO / "playbooks" / "fallback.yaml").read_text())
    for problem in validate_directory(d, set(CATALOG)):
        assert problem.format()  # every problem can be printed


settings_docs = st.one_of(
    st.dictionaries(st.sampled_from(["port", "webhook_token", "max_body_bytes", "agent_url", "workers",
                                     "slack_channel", "span_store_max_bytes", "recorder_interval_s", "nope"]),
                    json_values, max_size=4).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=200))


@FUZZ
@given(text=settings_docs)
def test_settings_files(tmp_path_factory, text):
    from responder import config

    cfg = tmp_path_factory.mktemp("cfg") / "llmslo.yaml"
    cfg.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config.load(cfg, env={}, playbooks_dir=REPO / "playbooks")
    except config.ConfigError as e:
        assert str(e) and "\n" not in str(e).strip()
