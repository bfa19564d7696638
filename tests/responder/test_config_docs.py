"""docs/configuration.md names every setting the code has, with its environment variable, and
nothing the code does not have."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from responder import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
INTERNAL = {"generated_token"}  # state, not a setting


def test_every_setting_and_variable_is_documented():
    keys = {f.name for f in dataclasses.fields(config.Settings)} - INTERNAL
    documented = set(re.findall(r"`([a-z_]+)`", DOC))
    assert keys - documented == set()
    assert set(config._ENV) - set(re.findall(r"`(LLMSLO_[A-Z_]+)`", DOC)) == set()


def test_the_doc_names_no_variable_the_code_does_not_read():
    named = set(re.findall(r"\bLLMSLO_[A-Z_]+[A-Z]\b", DOC))
    assert named - set(config._ENV) == set()


def test_the_settings_table_is_the_generated_one():
    assert config.render_doc(DOC) == DOC, "docs/configuration.md is stale: run python -m responder.config"
    documented = {f.name for f in dataclasses.fields(config.Settings) if "doc" in f.metadata}
    assert documented == {f.name for f in dataclasses.fields(config.Settings)} - INTERNAL
