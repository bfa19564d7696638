"""The overhead benchmark's statistics and its judgement of the targets, on made-up phases: the
result must be plain JSON (a run once ended in a TypeError after 18 minutes, on a numpy bool)."""
from __future__ import annotations

import json

from bench.overhead import judge, mean_ci


def test_mean_ci_is_a_student_t_interval_of_plain_floats():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert abs(ci["hi"] - 4.484) < 0.01 and abs(ci["lo"] + 0.484) < 0.01  # t(0.975, 2) = 4.303
    assert type(ci["lo"]) is float and type(ci["hi"]) is float
    assert mean_ci([5.0])["lo"] is None


def test_the_judgement_is_json_and_says_met_or_missed():
    loads = {
        "150 req/s": {"cpu_pct": mean_ci([0.2, 0.22, 0.21]), "p99_ratio": mean_ci([1.0, 1.1, 0.95]),
                      "p99_noise_floor": 0.3},
        "saturation": {"throughput_ratio": mean_ci([0.95, 0.94, 0.96])},
    }
    verdicts = json.loads(json.dumps(judge(loads)))
    by = {v["target"].split(" <=")[0].split(" within")[0]: v["met"] for v in verdicts}
    assert by["recorder CPU at 150 req/s"] is True
    assert by["recorder CPU at 1000 req/s"] is None  # not measured
    assert by["throughput loss at saturation"] is False
    assert by["p99 at 150 req/s"] is True
