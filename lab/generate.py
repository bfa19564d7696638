"""Randomized scenario files: ``llmslo lab generate --seed S --count N``.

The standard suite is a regression suite: its strengths were chosen by hand, and the engine's
thresholds were tuned on its runs. A randomized corpus asks the question the standard suite
cannot: does attribution hold on faults it was not tuned on? Each draw picks

- **what**: a single fault (a domain drawn uniformly, then one of its kinds), a pair of faults in
  two domains (half of them on the same dependency's path, e.g. loss on the path to PostgreSQL
  while PostgreSQL itself is slow), or a control: steady load, a traffic surge, a service restart;
- **how strong**: each kind's parameter drawn log-uniformly over a range that spans the paging
  threshold (``STRENGTHS``), so some faults page, some do not (the lab's ad hoc trigger then
  investigates), and attribution is asked about weak faults as well as strong ones;
- **when and under what load**: the baseline's and the fault phase's lengths, the first fault's
  offset into the phase, the second's stagger, and the load's rate.

Every scenario carries its own seed (``S * 100000 + i``): the lab reseeds the load's questions
with it, and ``lab.scorecard.split_of`` assigns it to the training or the held-out part from it,
so a case's part never depends on its result. The same ``--seed`` and ``--count`` give the same
file, byte for byte.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import yaml

from lab.scenarios import Scenario, parse_scenarios

MAX_COUNT = 5000
SEED_STRIDE = 100_000


@dataclass(frozen=True)
class Strength:
    """A kind's strength parameter, drawn log-uniformly in [lo, hi] (``integer``: rounded)."""

    param: str
    lo: float
    hi: float
    integer: bool = False

    def draw(self, rng: random.Random) -> float | int:
        v = math.exp(rng.uniform(math.log(self.lo), math.log(self.hi)))
        return int(round(v)) if self.integer else round(v, 3)


# Ranges that span the page threshold at the lab's load (see lab/scenarios/standard.yaml's notes:
# a page needs ~7.2% of requests failing or ~14.4% with a first token over 1 s; the SDK retries a
# failed provider call twice, so a provider fault on a fraction f fails about f^3 of requests).
STRENGTHS: dict[str, Strength] = {
    "packet_loss": Strength("percent", 4, 35),
    "network_delay": Strength("delay_ms", 30, 400, integer=True),
    "connection_reset": Strength("fraction", 0.03, 0.35),
    "middlebox_delay": Strength("delay_ms", 100, 1500, integer=True),
    "dns_delay": Strength("delay_ms", 250, 2500, integer=True),
    "dns_failure": Strength("fraction", 0.15, 0.8),
    "provider_throttle": Strength("fraction", 0.05, 0.7),
    "provider_overload": Strength("fraction", 0.1, 0.7),
    "provider_latency": Strength("ttft_ms", 600, 4000, integer=True),
    "retrieval_latency": Strength("delay_ms", 250, 2500, integer=True),
    "retrieval_errors": Strength("fraction", 0.05, 0.5),
    "cpu_contention": Strength("workers", 2, 8, integer=True),
    "cpu_throttle": Strength("cpus", 0.08, 0.4),
    "noisy_neighbor": Strength("workers", 2, 8, integer=True),
    "memory_pressure": Strength("limit_mb", 55, 110, integer=True),
    "policy_latency": Strength("delay_ms", 400, 2500, integer=True),
    "policy_block": Strength("fraction", 0.04, 0.35),
    "traffic_surge": Strength("factor", 2.0, 5.0),
}
# Kinds that act on one dependency's path take a target.
TARGETED = ("packet_loss", "connection_reset", "network_delay", "middlebox_delay")
# Which dependency a kind's fault sits on, for pairs "on the same path".
ON_PATH = {"provider_throttle": "provider", "provider_overload": "provider", "provider_latency": "provider",
           "retrieval_latency": "retrieval", "retrieval_errors": "retrieval"}
CONTROLS = ("steady", "traffic_surge", "service_restart")
# The shares of the draws: single faults, pairs, controls.
MIX = (("single", 0.55), ("pair", 0.2), ("control", 0.25))
# Rates the lab stack serves with room to spare on 2 vCPUs (at 25-30 req/s it nears saturation, and a
# baseline there is not a healthy one); a surge multiplies them.
LOAD_RPS = (10, 12, 15, 18, 20)


def _kinds_by_domain() -> dict[str, list[str]]:
    from lab.faults import FAULT_KINDS

    out: dict[str, list[str]] = {}
    for kind, fk in FAULT_KINDS.items():
        if fk.domain and fk.domain != "traffic" and kind in STRENGTHS:
            out.setdefault(fk.domain, []).append(kind)
    return out


def _fault(rng: random.Random, kind: str, target: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"kind": kind}
    if kind in TARGETED:
        f["target"] = target or rng.choice(("provider", "retrieval"))
    if kind in STRENGTHS:
        s = STRENGTHS[kind]
        f[s.param] = s.draw(rng)
    if kind == "middlebox_delay":
        f["jitter_ms"] = int(f["delay_ms"] * rng.uniform(0, 0.2))
    elif kind == "provider_throttle":
        f["retry_after_s"] = rng.choice((0.5, 1, 2))
    elif kind == "provider_overload":
        f["status"] = rng.choice((529, 503))
    return f


def _domain_of(kind: str) -> str | None:
    from lab.faults import FAULT_KINDS

    return FAULT_KINDS[kind].domain


def _draw(rng: random.Random, index: int, seed: int, by_domain: dict[str, list[str]]) -> dict[str, Any]:
    what = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
    # At least the responder's 60 s baseline window: with less, an early alert's baseline window
    # would reach back into the fault.
    baseline_s = rng.choice((60, 75, 90))
    fault_s = rng.choice((45, 60, 75))
    onset = rng.choice((0, 0, 5, 10, 15))
    faults: list[dict[str, Any]] = []
    if what == "single":
        domain = rng.choice(sorted(by_domain))
        faults.append(_fault(rng, rng.choice(by_domain[domain])))
        label = faults[0]["kind"]
    elif what == "pair":
        d1, d2 = rng.sample(sorted(by_domain), 2)
        k1, k2 = rng.choice(by_domain[d1]), rng.choice(by_domain[d2])
        same_path = rng.random() < 0.5
        if same_path and (k1 in TARGETED) != (k2 in TARGETED) and (ON_PATH.get(k1) or ON_PATH.get(k2)):
            path = ON_PATH.get(k1) or ON_PATH.get(k2)
            faults = [_fault(rng, k1, path), _fault(rng, k2, path)]
        else:
            faults = [_fault(rng, k1), _fault(rng, k2)]
        if rng.random() < 0.5:  # staggered: the second starts later
            faults[1]["start_s"] = min(fault_s - 15, onset + rng.choice((10, 15, 20)))
        label = f"{k1}.{k2}"
    else:
        control = rng.choice(CONTROLS)
        label = control
        if control != "steady":
            faults.append(_fault(rng, control))
    if onset:
        for f in faults:
            f["start_s"] = max(onset, f.get("start_s", 0))
    expect = list(dict.fromkeys(d for f in faults if (d := _domain_of(f["kind"]))))
    name = f"s{seed}-{index:03d}-{label.replace('_', '-')}"
    return {"name": name[:80], "baseline_s": baseline_s, "fault_s": fault_s, "load_rps": rng.choice(LOAD_RPS),
            "seed": seed * SEED_STRIDE + index, "faults": faults, "expect": expect}


def generate(seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` scenarios drawn from ``seed`` (the same arguments, the same scenarios)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count: expected a whole number in 1..{MAX_COUNT}, got {count!r}")
    rng = random.Random(seed)
    by_domain = _kinds_by_domain()
    return [_draw(rng, i, seed, by_domain) for i in range(count)]


def render(seed: int, count: int) -> str:
    """The scenario file's text, checked by parsing it back (``lab.scenarios``)."""
    scenarios = generate(seed, count)
    header = (f"# Drawn by `llmslo lab generate --seed {seed} --count {count}` (lab/generate.py).\n"
              "# Run: llmslo lab run --scenarios THIS_FILE --out DIR --resume "
              "--mode combined --mode traces-only --mode kernel-only\n")
    text = header + yaml.safe_dump({"scenarios": scenarios}, sort_keys=False, default_flow_style=None, width=120)
    parsed: list[Scenario] = parse_scenarios(text, f"<generated seed {seed}>")
    assert len(parsed) == count
    return text
