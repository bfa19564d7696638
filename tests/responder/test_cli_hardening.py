"""Every command line entry point answers a mistake with one line and exit 2, never a traceback:
settings whose YAML type is wrong (secrets must be strings), a broken playbook directory, a data
directory that cannot be written, oversized and overdeep YAML, and ``llmslo dead``."""
from __future__ import annotations

import json

import pytest

from responder import config
from tests.responder.test_cli import assert_usage_error, clean_env, closed_port, run
from tests.responder.test_store import accept, alert, note
from tests.tmpfs import tmpfs


@pytest.mark.parametrize("content, key", [
    ("webhook_token: 0777\n", "webhook_token"),  # YAML 1.1 octal: the token would become "511"
    ("webhook_token: 012345\n", "webhook_token"),
    ("agent_token: [a, b]\n", "agent_token"),
    ("slack_signing_secret: 12345\n", "slack_signing_secret"),
    ("slack_channel: {a: 1}\n", "slack_channel"),
    ("database_url: 5\n", "database_url"),
])
@pytest.mark.slow
def test_a_setting_of_the_wrong_yaml_type_is_refused_naming_its_key(tmp_path, content, key):
    cfg = tmp_path / "llmslo.yaml"
    cfg.write_text(content)
    with pytest.raises(config.ConfigError, match=key):
        config.load(cfg, env={})
    assert_usage_error(run("serve", "--config", str(cfg)), "configuration", key)


def test_a_quoted_secret_is_taken_as_written(tmp_path):
    cfg = tmp_path / "llmslo.yaml"
    cfg.write_text('webhook_token: "0777"\n')
    assert config.load(cfg, env={}).webhook_token == "0777"


@pytest.mark.parametrize("content, words", [
    ("port: " + "9" * 5000 + "\n", ["cannot be read", "digits"]),
    ("port: " + "[" * 20000 + "]" * 20000 + "\n", ["nested too deeply"]),
])
@pytest.mark.slow
def test_yaml_the_parser_cannot_hold_is_one_line(tmp_path, content, words):
    cfg = tmp_path / "llmslo.yaml"
    cfg.write_text(content)
    p = run("serve", "--config", str(cfg))
    assert_usage_error(p, "configuration", *words)
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_serve_with_a_broken_playbook_directory_is_one_line(tmp_path):
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "x.yaml").write_text("name: x\nmatch: [\n")
    p = run("serve", "--port", str(closed_port()),
            env=clean_env(LLMSLO_PLAYBOOKS_DIR=str(tmp_path / "pb"), LLMSLO_DATA_DIR=str(tmp_path / "d")))
    assert_usage_error(p, "playbooks_dir", "x.yaml")
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.fixture
def read_only_dir(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as d:
        yield d


def test_serve_with_a_read_only_data_directory_is_one_line(read_only_dir):
    p = run("serve", "--port", str(closed_port()), env=clean_env(LLMSLO_DATA_DIR=str(read_only_dir)))
    assert_usage_error(p, "data_dir", "cannot be written")


@pytest.mark.slow
def test_playbooks_validate_with_values_the_parser_cannot_hold(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\npriority: " + "9" * 5000 + "\nmatch: []\n"
                                     "capture:\n  probes: [tcp_retrans]\n")
    (tmp_path / "b.yaml").write_text("name: b\nmatch: " + "[" * 20000 + "]" * 20000 + "\n")
    p = run("playbooks", "validate", str(tmp_path))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "a.yaml:2:11: priority must be an integer" in p.stdout
    assert "b.yaml: invalid YAML: nested too deeply" in p.stdout


def test_argument_mistakes_are_one_line():
    for args in (["serve", "--port", "9" * 5000], ["nope"], ["dead", "retry", "job", "x"], ["capture", "--pid", "x"]):
        p = run(*args)
        assert_usage_error(p)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert len(p.stderr) < 500


@pytest.mark.slow
def test_dead_lists_and_retries(tmp_path):
    from responder.store.sqlite import IncidentStore

    data = tmp_path / "data"
    store = IncidentStore(data / "incidents.sqlite3")
    iid = accept(store, note(alert("a"))).incident_id
    mid = store.enqueue_message(iid, "slack", "root", {"op": "root"})
    store.mark_dead(mid, "Slack chat.postMessage: channel_not_found")
    job = store.claim_job()
    store.fail_job(job.id, "RuntimeError: boom", retry=False)
    store.close()
    env = clean_env(LLMSLO_DATA_DIR=str(data))
    p = run("dead", "list", "--json", env=env)
    assert p.returncode == 0, p.stderr
    listed = json.loads(p.stdout)
    assert [m["id"] for m in listed["messages"]] == [mid] and [j["id"] for j in listed["jobs"]] == [job.id]
    assert "channel_not_found" in run("dead", "list", env=env).stdout
    assert_usage_error(run("dead", "retry", "message", "999", env=env), "no outbox message")
    assert run("dead", "retry", "--all", env=env).returncode == 0
    assert json.loads(run("dead", "list", "--json", env=env).stdout) == {"messages": [], "jobs": []}
    assert_usage_error(run("dead", "retry", "job", str(job.id), env=env), "not dead")


def test_dead_without_a_store_says_where_it_looked(tmp_path):
    assert_usage_error(run("dead", "list", env=clean_env(LLMSLO_DATA_DIR=str(tmp_path / "none"))),
                       "no incident store")
