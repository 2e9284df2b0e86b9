"""``DIR/summary.md``: the audit in a few lines and one attack x defense table per scenario,
short enough for a pull-request comment."""

from __future__ import annotations

import re
from typing import Any, Mapping

from flaudit.auditor.results.cells import CellFigures, counts_text, labels_text, signed_percent
_MARKDOWN = re.compile(r"([\\`*|<>\[\]~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(value: Any) -> str:
    """A label or name as literal Markdown text on one line (labels are user input)."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))


def _cell(cell: Mapping[str, Any]) -> str:
    figures = CellFigures.of(cell)
    if figures.status == "not_applicable":
        return "n/a"
    parts = [f"**{figures.risk}**"]
    if figures.images:
        parts.append(counts_text(figures.images))
        if figures.images.leakage:
            parts.append(f"leakage {signed_percent(figures.images.leakage)}")
    if figures.labels:
        parts.append(labels_text(figures.labels))
    if figures.failed:
        parts.append(f"{figures.failed} failed")
    return f"{parts[0]} {' · '.join(parts[1:])}".rstrip()


def _accuracy(entry: Mapping[str, Any] | None) -> str:
    if entry and entry["status"] == "not_applicable":
        return "n/a"
    if not entry or not entry["test_accuracy"]:
        return "failed"
    text = f"{entry['test_accuracy']['mean']:.3f}"
    if entry["defense"] != "none" and entry["accuracy_drop"]:
        text += f" ({-entry['accuracy_drop']['mean']:+.3f})"
    return text


def _criterion(audit: Mapping[str, Any]) -> str:
    text = f"recovered = PSNR >= {audit['psnr_threshold']:g} dB"
    if "identifiable_margin_db" not in audit:
        return text
    return (f"{text} and {audit['identifiable_margin_db']:g} dB closer than any non-member · risk from leakage "
            "(recovery above the data-blind null, lower end of its 95% interval)")


def render(document: Mapping[str, Any]) -> str:
    audit, summary = document["audit"], document["summary"]
    by_risk = summary["by_risk"]
    unscored = by_risk.get("unscored", 0)  # older scorecards have no such level
    lines = [
        f"## flaudit audit: {_md(audit['name'])}",
        "",
        f"{summary['cells']} cells: {summary['ok'] - unscored} scored, "
        + (f"{unscored} unscored (no ground truth), " if unscored else "")
        + f"{summary['not_applicable']} not applicable, "
        f"{summary['error']} failed · risk: high {by_risk['high']}, medium {by_risk['medium']}, "
        f"low {by_risk['low']}, none {by_risk['none']} · {_criterion(audit)} · "
        f"config `{audit['config_hash'][:12]}`, profile {_md(audit['profile'])}",
    ]
    defenses = [d["label"] for d in audit["defenses"]]
    for entry in audit["scenarios"]:
        scenario = entry["label"]
        cells = {c["id"]: c for c in document["cells"] if c["scenario"] == scenario}
        utility = {u["defense"]: u for u in document["utility"] if u["scenario"] == scenario}
        lines += ["", f"### {_md(scenario)}", "", "| attack \\ defense | " + " | ".join(map(_md, defenses)) + " |",
                  "|---" * (len(defenses) + 1) + "|"]
        for attack in audit["attacks"]:
            found = (cells.get(f"{scenario}/{d}/{attack['label']}") for d in defenses)
            row = [_cell(c) if c else "–" for c in found]
            lines.append(f"| {_md(attack['label'])} | " + " | ".join(row) + " |")
        lines.append("| *test accuracy* | " + " | ".join(_accuracy(utility.get(d)) for d in defenses) + " |")
        if entry.get("findings"):
            lines += [""] + [f"- **{f['severity']}** `{f['code']}`: {_md(f['message'])}" for f in entry["findings"]]
    if not audit["attacks"]:
        lines += ["", "No attack is registered yet: the audit measured utility only."]
    return "\n".join(lines) + "\n"
