"""The `kproto test` report as one HTML page (templates/report.html.j2, through rig.core.templates)."""
from __future__ import annotations

from rig.analysis.verdict import ORDER
from rig.core import templates
from rig.report.model import Report


def render(report: Report) -> str:
    return templates.render("report.html.j2", r=report.as_json(), order=ORDER)
