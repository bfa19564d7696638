"""The one rule that names a pod's workload, as the agent and the responder both apply it."""
from __future__ import annotations

from types import SimpleNamespace as NS

from common.workload import controller, workload_of


def obj(namespace: str = "llm", *owners: tuple[str, str, bool]) -> NS:
    refs = [NS(kind=k, name=n, controller=c) for k, n, c in owners]
    return NS(metadata=NS(namespace=namespace, owner_references=refs or None))


OWNERS = {("llm", "ReplicaSet", "chat-6b7c"): ("Deployment", "chat"), ("llm", "Job", "embed-28f"): ("CronJob", "embed")}


def lookup(ns: str, kind: str, name: str):
    return OWNERS.get((ns, kind, name))


def test_a_replicaset_names_its_deployment_and_a_job_its_cronjob():
    assert workload_of(obj("llm", ("ReplicaSet", "chat-6b7c", True)), lookup) == ("Deployment", "chat")
    assert workload_of(obj("llm", ("Job", "embed-28f", True)), lookup) == ("CronJob", "embed")


def test_other_controllers_are_the_workload_and_an_unreadable_owner_leaves_the_controller():
    assert workload_of(obj("llm", ("StatefulSet", "vec", True)), lookup) == ("StatefulSet", "vec")
    assert workload_of(obj("llm", ("Job", "one-off", True)), lookup) == ("Job", "one-off")  # no CronJob
    assert workload_of(obj("other", ("ReplicaSet", "chat-6b7c", True)), lookup) == ("ReplicaSet", "chat-6b7c")


def test_only_the_controlling_owner_counts():
    assert workload_of(obj("llm"), lookup) is None  # a bare pod
    assert controller(obj("llm", ("ConfigMap", "x", False))) is None
    assert controller(obj("llm", ("ConfigMap", "x", False), ("DaemonSet", "logs", True))) == ("DaemonSet", "logs")
