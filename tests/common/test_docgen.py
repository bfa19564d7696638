"""Generated tables in the docs: replaced between their markers, and a missing marker named."""
from __future__ import annotations

import pytest

from common.docgen import markers, replace_between


def test_only_what_stands_between_the_markers_is_replaced():
    begin, end = markers("make x", "a table")
    text = f"intro\n{begin}\nold\nrows\n{end}\noutro\n"
    assert replace_between(text, begin, end, "| new |\n", "x.md") == f"intro\n{begin}\n| new |\n{end}\noutro\n"


def test_a_missing_marker_is_named():
    begin, end = markers("make x", "a table")
    with pytest.raises(ValueError, match="x.md has no"):
        replace_between(f"{begin}\nno end", begin, end, "", "x.md")
