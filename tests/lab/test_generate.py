"""The randomized corpus generator and the runner's baseline check (no stack)."""
from __future__ import annotations

import io
import socket
import time
from collections import Counter

import pytest
import yaml

from lab import cli
from lab.faults import ANOMALY_KINDS, FAULT_KINDS
from lab.generate import SEED_STRIDE, STRENGTHS, generate, render
from lab.runner import baseline_problems
from lab.scenarios import parse_scenarios


def test_the_same_seed_draws_the_same_file_and_another_seed_another():
    assert render(3, 40) == render(3, 40)
    assert render(3, 40) != render(4, 40)
    assert generate(3, 40)[:10] == generate(3, 10)  # a longer draw extends a shorter one


def test_a_draw_spreads_over_kinds_pairs_controls_strengths_and_timings():
    drawn = generate(11, 300)
    scenarios = parse_scenarios(render(11, 300))
    assert [s.name for s in scenarios] == [d["name"] for d in drawn]
    assert len({s.seed for s in scenarios}) == 300 and all(s.seed // SEED_STRIDE == 11 for s in scenarios)
    kinds = Counter(f.kind for s in scenarios for f in s.faults)
    assert set(kinds) == set(FAULT_KINDS) - ANOMALY_KINDS, set(FAULT_KINDS) - set(kinds)
    size = Counter(len(s.expect) for s in scenarios)
    assert size[1] > 120 and size[2] > 30 and size[0] > 25  # singles, pairs, steady and restart controls
    pairs = [s for s in scenarios if len(s.expect) == 2]
    assert all(len({f.domain for f in s.faults}) == 2 for s in pairs)
    same_path = [s for s in pairs if len({f.params.get("target") for f in s.faults if "target" in f.params}) == 1
                 and any("target" in f.params for f in s.faults)]
    assert same_path, "some pairs sit on one dependency's path"
    assert any(f.start_s > 0 for s in pairs for f in s.faults[1:]), "some pairs are staggered"
    # strengths spread over each kind's whole range, from below to above the page threshold
    for kind, st in STRENGTHS.items():
        values = [f.params[st.param] for s in scenarios for f in s.faults if f.kind == kind]
        assert all(st.lo * 0.99 <= v <= st.hi * 1.01 for v in values), kind
        if len(values) >= 6:
            assert max(values) / min(values) > 1.5, (kind, values)
    assert len({s.load_rps for s in scenarios}) >= 4 and len({s.baseline_s for s in scenarios}) >= 3
    assert Counter(s.expect == ("traffic",) for s in scenarios)[True] >= 10


@pytest.mark.parametrize("argv, message", [
    (["generate", "--seed", "-1", "--count", "5"], "--seed must be a non-negative integer"),
    (["generate", "--seed", "1", "--count", "0"], "--count must be in 1..5000"),
    (["generate", "--seed", "x", "--count", "5"], "invalid int value"),
    (["generate", "--count", "5"], "--seed"),
])
def test_generate_refuses_bad_arguments_in_one_line(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_generate_writes_a_file_and_does_not_overwrite_it(tmp_path, capsys):
    target = tmp_path / "corpus.yaml"
    assert cli.main(["generate", "--seed", "2", "--count", "7", "-o", str(target)]) == 0
    assert target.read_text() == render(2, 7)
    assert cli.main(["generate", "--seed", "5", "--count", "7", "-o", str(target)]) == cli.EXIT_USAGE
    assert "exists" in capsys.readouterr().err and target.read_text() == render(2, 7)
    assert cli.main(["generate", "--seed", "5", "--count", "7", "-o", str(target), "--force"]) == 0
    assert target.read_text() == render(5, 7)
    assert not list(tmp_path.glob(".*.tmp"))


def _load(ok: float, p90: float, n: int = 400) -> dict:
    return {"requests": n, "ok_ratio": ok, "latency_s": {"p50": p90 / 2, "p90": p90, "p99": p90 * 1.5}}


def test_a_baseline_is_healthy_near_the_reference_and_not_otherwise():
    ref = _load(1.0, 0.40)
    assert baseline_problems(_load(0.995, 0.55), ref) == []
    assert baseline_problems(_load(0.99, 0.75), ref) == []  # within 2x the reference's p90
    (p,) = baseline_problems(_load(0.69, 0.45), ref)  # a leftover: 31% failing
    assert "31.0% of baseline requests failed" in p
    (p,) = baseline_problems(_load(1.0, 1.30), ref)
    assert "p90 latency 1.30 s over 0.80 s" in p
    assert baseline_problems({"requests": 0, "ok_ratio": None, "latency_s": {}}, ref)
    assert baseline_problems(None, None)
    # without a reference at this rate yet, absolute bounds: 2% errors, a p90 under 1 s
    assert baseline_problems(_load(1.0, 0.9), None) == []
    (p,) = baseline_problems(_load(1.0, 3.0), None)
    assert "over 1.00 s (no reference at this rate yet)" in p
    assert baseline_problems(_load(0.9, 0.3), None)


class _Service:
    """The stack's service whose restart fails, as one that never comes back healthy does."""

    restarts = 0

    async def restart(self) -> None:
        from lab.stack import StackError

        raise StackError("the RAG service did not answer /health within 30s")


class _Stack:
    """A stack whose Prometheus refuses connections (a real closed port) and whose load is healthy."""

    faults: list = []

    def __init__(self, port: int):
        from lab.load import LoadStats, Sample

        self.prometheus_url = f"http://127.0.0.1:{port}"
        self.load_stats = LoadStats()
        now = time.time()
        for i in range(200):
            self.load_stats.samples.append(Sample(at=now - 5 + i * 0.02, status=200, latency_s=0.2))
        self.service = _Service()

    def knobs_changed(self) -> list[str]:
        return []

    async def alerts(self) -> list[dict]:
        from lab.stack import LabStack

        return await LabStack.alerts(self)


async def test_a_baseline_that_cannot_be_checked_or_restarted_is_recorded_unhealthy(monkeypatch):
    from lab import runner

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stack = _Stack(port)
    check = await runner.check_baseline(stack, 10.0, None)
    assert not check["healthy"]
    assert any("Prometheus's alerts could not be read" in p for p in check["problems"]), check["problems"]

    monkeypatch.setattr(runner, "BASELINE_WAIT_S", 0.2)
    monkeypatch.setattr(runner, "BASELINE_STEP_S", 0.1)
    scenario = parse_scenarios(yaml.safe_dump({"scenarios": [
        {"name": "steady", "baseline_s": 1, "fault_s": 20, "load_rps": 10, "expect": [], "faults": []}]}))[0]
    run = runner.CaseRun(scenario, None)
    progress = runner.Progress([scenario], stream=io.StringIO())
    healthy = await runner._healthy_baseline(stack, scenario, run, 0, progress, {})
    check = run.rec["baseline_check"]
    assert healthy is False and check["service_restarted"] and not check["healthy"]
    assert any("restarting the service failed" in p for p in check["problems"]), check["problems"]
