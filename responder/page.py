"""The incident page (``GET /incidents/{id}``): placeholder until the full page lands."""
from __future__ import annotations

import html
import json
from typing import Any


def render_incident_page(incident: dict[str, Any]) -> str:
    verdict = incident.get("verdict") or {}
    title = f"{incident['id']} · {incident['status']} · " + (", ".join(verdict.get("domains") or []) or
                                                              ("abstained" if verdict else "capturing"))
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(verdict.get('abstain_reason') or '')}</p>"
            f"<pre>{html.escape(json.dumps(incident, indent=2, default=str))}</pre>")
