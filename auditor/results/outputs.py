"""Writes a run folder's final files, each atomically: scorecard.json, report.html, summary.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from flaudit.auditor.results import report, summary
from flaudit.auditor.results.scorecard import SCORECARD
from flaudit.auditor.running.store import atomic_write

REPORT = "report.html"
SUMMARY = "summary.md"


def write_reports(document: Mapping[str, Any], out: Path) -> None:
    atomic_write(out / REPORT, report.render(document, out))
    atomic_write(out / SUMMARY, summary.render(document))


def write_all(document: Mapping[str, Any], out: Path) -> None:
    atomic_write(out / SCORECARD, json.dumps(document, indent=1, allow_nan=False))
    write_reports(document, out)
