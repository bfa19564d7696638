"""deploy/prometheus/: the SLO rules as a PrometheusRule. The committed file is exactly what
``llmslo rules generate --format prometheus-rule --group-by namespace`` prints today (so it
cannot go stale), its spec is the rule file's groups, its alerts carry the labels the
playbooks scope a Kubernetes capture by, and promtool accepts the rules."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from capture.probes import CATALOG
from responder.playbooks import load_playbooks
from responder.slo.rules import SloRulesSpec, generate_rules
from tests.deploy.conftest import DEPLOY, REPO, rendered
from tests.responder.test_cli import run

RULE_FILE = DEPLOY / "prometheus" / "llm-slo-rules.yaml"
# In a cluster the alerts must say which namespace their service is in: the playbooks' scope
# reads namespace plus service (or deployment, pod...) to find the pods to capture.
OPTIONS = ("--format", "prometheus-rule", "--group-by", "namespace")
REGENERATE = f"llmslo rules generate {' '.join(OPTIONS)} -o deploy/prometheus/llm-slo-rules.yaml"


def test_committed_rules_are_what_the_generator_prints_now():
    p = run("rules", "generate", *OPTIONS)
    assert p.returncode == 0, p.stderr
    assert RULE_FILE.read_text() == p.stdout, f"deploy/prometheus/llm-slo-rules.yaml is stale: run {REGENERATE}"


def test_prometheus_rule_holds_the_rule_files_groups():
    doc = yaml.safe_load(RULE_FILE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] == "llm-slo"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["spec"] == generate_rules(SloRulesSpec(extra_group_labels=("namespace",)))


def test_alerts_carry_the_labels_the_playbooks_scope_by():
    doc = yaml.safe_load(RULE_FILE.read_text())
    exprs = [r["expr"] for g in doc["spec"]["groups"] for r in g["rules"] if "record" in r and "ratio" in r["record"]]
    assert exprs and all("sum by (service, namespace)" in e for e in exprs)
    playbooks = {p.name: p for p in load_playbooks(REPO / "playbooks", set(CATALOG))}
    for name in ("llm-error-burn", "llm-latency-burn"):
        scope = playbooks[name].scope
        assert (scope.namespace_label, scope.service_label) == ("namespace", "service"), name


def test_the_output_file_and_stdout_agree(tmp_path):
    out = tmp_path / "rule.yaml"
    p = run("rules", "generate", "--format", "prometheus-rule", "--window-scale", "1/60",
            "--scrape-interval", "1s", "-o", str(out))
    assert p.returncode == 0, p.stderr
    printed = run("rules", "generate", "--format", "prometheus-rule", "--window-scale", "1/60", "--scrape-interval",
                  "1s").stdout
    assert out.read_text() == printed
    assert "[5s]" in printed and "As a PrometheusRule" in printed


@pytest.mark.needs_prometheus
def test_promtool_accepts_the_rules_the_kustomization_renders(tmp_path):
    [rule] = rendered("prometheus").objects
    assert rule["kind"] == "PrometheusRule" and rule["metadata"]["namespace"] == "llmslo"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    p = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 40 rules found" in p.stdout, p.stdout  # 39 SLO rules, the early warning


def test_an_unknown_format_is_a_usage_error():
    p = run("rules", "generate", "--format", "helm")
    assert p.returncode == 2 and "invalid choice: 'helm'" in p.stderr, p.stderr
