"""Benchmarks: each measures its baseline in the same run and prints ratios against it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(result: dict[str, Any], out: str | Path) -> Path:
    """The run's results as JSON at ``out`` (its directory made if needed), and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path}")
    return path
