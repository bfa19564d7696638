"""The attribution rules table: checked against the probe catalog, and the page that documents it
generated from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from capture.attribution import rules as R
from capture.probes import CATALOG

REPO = Path(__file__).resolve().parents[2]


def test_every_kernel_rule_reads_a_counter_or_histogram_its_probe_has_for_a_domain_it_lists():
    R.check()
    for r in R.KERNEL_RULES:
        probe = CATALOG[r.probe]
        assert r.domain in probe.domains
        assert r.field in (probe.counters if r.measure in ("rate", "demand", "peer_mean") else probe.histograms)
    # every probe that speaks for a domain has at least one rule reading it
    speaking = {name for name, p in CATALOG.items() if p.domains}
    read = {r.probe for r in R.KERNEL_RULES}
    assert speaking <= read, speaking - read


@pytest.mark.parametrize("change, message", [
    ({"probe": "tcp_retrans", "field": "nope"}, "probe tcp_retrans has no counter 'nope'"),
    ({"probe": "ghost"}, "no probe 'ghost' in the catalog"),
    ({"domain": "dns"}, "probe tcp_retrans does not speak for dns"),
    ({"domain": "weather"}, "unknown domain 'weather'"),
    ({"role": "maybe"}, "role must be cause, symptom or upstream"),
])
def test_a_wrong_row_is_refused_naming_it(change, message):
    bad = dataclasses.replace(R.KERNEL_RULES[0], **change)
    with pytest.raises(ValueError, match=message):
        R.check((bad,))


def test_a_row_listed_twice_is_refused():
    with pytest.raises(ValueError, match="listed twice"):
        R.check((R.KERNEL_RULES[0], R.KERNEL_RULES[0]))


def test_the_documented_table_is_the_generated_one():
    doc = (REPO / "docs" / "attribution.md").read_text()
    assert R.render_doc(doc) == doc, "docs/attribution.md is stale: run python -m capture.attribution.rules"
    for r in R.RULES:
        assert f"`{r.signal}`" in doc
