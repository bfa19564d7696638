"""The responder's Deployment and Service: non-root, probed on its health endpoint, configured
to find the agents the DaemonSet runs, with settings ``llmslo serve`` accepts, and state where
each overlay says (SQLite on a volume; PostgreSQL from a Secret with two replicas or more)."""
from __future__ import annotations

from pathlib import Path

from responder import config
from responder.kube.cluster import parse_selector
from tests.deploy.conftest import (
    NAMESPACE,
    REPO,
    Manifests,
    container_of,
    pod_labels,
    pod_spec,
    registered_routes,
    rendered,
    selects,
)

RESPONDER_PORT = 8080


def settings_env(m: Manifests) -> dict[str, str]:
    """The responder container's environment with Secret values stood in for."""
    env = {}
    for name, source in m.env(m.responder).items():
        if source.value is not None:
            env[name] = source.value
        elif source.field == "metadata.namespace":
            env[name] = m.responder["metadata"]["namespace"]
        elif source.secret == ("llmslo-database", "url"):
            env[name] = "postgresql://llmslo:stand-in@postgres.example:5432/llmslo"
        elif source.secret is not None:
            env[name] = f"stand-in-{source.secret[1]}"
        else:
            raise AssertionError(f"{name}: unexpected source {source}")
    return env


def test_responder_runs_as_an_ordinary_user(manifests):
    spec = pod_spec(manifests.responder)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostPID") and not spec.get("hostNetwork")
    sc = container_of(manifests.responder)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")


def test_responder_serves_on_its_port_and_probes_its_health_endpoint(manifests):
    c = container_of(manifests.responder)
    assert c["command"] == ["llmslo", "serve", "--host", "0.0.0.0", "--port", str(RESPONDER_PORT)]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": RESPONDER_PORT}
    assert "/healthz" in registered_routes(REPO / "responder" / "http" / "api.py", "get")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe


def test_responder_finds_the_agents_the_daemonset_runs(manifests):
    env = manifests.env(manifests.responder)
    assert env["LLMSLO_AGENT_DISCOVERY"].value == "kubernetes"
    # The agents' namespace is the responder's own, read from the pod, so it follows the
    # DaemonSet wherever an overlay puts both.
    assert env["LLMSLO_AGENT_NAMESPACE"].field == "metadata.namespace"
    assert manifests.responder["metadata"]["namespace"] == manifests.agent["metadata"]["namespace"]
    selector = parse_selector(env["LLMSLO_AGENT_SELECTOR"].value)
    assert selects(selector, pod_labels(manifests.agent)), (selector, pod_labels(manifests.agent))
    assert not selects(selector, pod_labels(manifests.responder)), "the responder would take itself for an agent"
    assert "api" in {p["name"] for p in container_of(manifests.agent)["ports"]}
    assert env["LLMSLO_AGENT_TOKEN"].secret == manifests.env(manifests.agent)["LLMSLO_AGENT_TOKEN"].secret


def test_llmslo_serve_accepts_the_rendered_settings(manifests):
    env = settings_env(manifests)
    unknown = {k for k in env if k.startswith("LLMSLO_")} - set(config._ENV)
    assert not unknown, f"settings llmslo serve does not know: {unknown}"
    s = config.load(env=env)
    assert s.agent_discovery == "kubernetes"
    assert s.agent_namespace == NAMESPACE
    assert s.webhook_token == "stand-in-token" and s.agent_token == "stand-in-token"
    assert s.slack_bot_token == "stand-in-bot-token" and s.slack_signing_secret == "stand-in-signing-secret"
    mounts = {m["name"]: m["mountPath"] for m in container_of(manifests.responder)["volumeMounts"]}
    assert s.data_dir == Path(mounts["data"])


def test_slack_is_optional_and_the_tokens_are_not(manifests):
    env = manifests.env(manifests.responder)
    assert env["LLMSLO_WEBHOOK_TOKEN"].secret == ("llmslo-webhook", "token")
    assert not env["LLMSLO_WEBHOOK_TOKEN"].optional and not env["LLMSLO_AGENT_TOKEN"].optional
    assert env["LLMSLO_SLACK_BOT_TOKEN"].secret == ("llmslo-slack", "bot-token")
    assert env["LLMSLO_SLACK_SIGNING_SECRET"].secret == ("llmslo-slack", "signing-secret")
    assert env["LLMSLO_SLACK_BOT_TOKEN"].optional and env["LLMSLO_SLACK_SIGNING_SECRET"].optional


def test_service_sends_to_the_responders_port(manifests):
    svc = manifests.one("Service", "llmslo-responder")
    assert selects(svc["spec"]["selector"], pod_labels(manifests.responder))
    assert not selects(svc["spec"]["selector"], pod_labels(manifests.agent))
    assert svc["spec"]["ports"] == [{"name": "http", "port": RESPONDER_PORT, "targetPort": "http", "protocol": "TCP"}]
    assert selects(manifests.responder["spec"]["selector"]["matchLabels"], pod_labels(manifests.responder))


def test_single_keeps_one_replica_on_a_persistent_volume():
    m = rendered("overlays/single")
    d = m.responder
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    data = next(v for v in pod_spec(d)["volumes"] if v["name"] == "data")
    assert set(data) == {"name", "persistentVolumeClaim"}, data
    pvc = m.one("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "LLMSLO_DATABASE_URL" not in m.env(d)


def test_ha_runs_replicas_on_postgresql():
    m = rendered("overlays/ha")
    d = m.responder
    assert d["spec"]["replicas"] >= 2
    env = m.env(d)
    assert env["LLMSLO_DATABASE_URL"].secret == ("llmslo-database", "url")
    assert not env["LLMSLO_DATABASE_URL"].optional
    assert config.load(env=settings_env(m)).database_url.startswith("postgresql://")
    # No volume two replicas would fight over, and no strategy that needs one replica at a time.
    assert not m.all("PersistentVolumeClaim")
    assert d["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    pdb = m.one("PodDisruptionBudget", "llmslo-responder")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(d))
    assert 1 <= pdb["spec"]["minAvailable"] < d["spec"]["replicas"]
    # Each replica's built-in span store would hold only the spans the Service sent it.
    assert env["LLMSLO_TRACE_BACKEND"].value in ("tempo", "jaeger")
