"""``DIR/summary.md``: the verdict, the first findings and the matrix of the scenario that leaks
most, short enough for a pull-request comment; report.html has the rest."""

from __future__ import annotations

import re
from typing import Any, Mapping

from flaudit.auditor.results import risk
from flaudit.auditor.results.cells import CellFigures, signed_percent
from flaudit.auditor.results.findings import findings
from flaudit.auditor.results.view import AuditInfo, AuditView, RunFacts, ScenarioInfo, UtilityFigures
from flaudit.auditor.running.config import BASELINE

SUMMARY_TOPICS = ("leaks", "realism", "defenses", "settings", "failures")  # not-applicable reasons are in the report
SUMMARY_FINDINGS = 8
_MARKDOWN = re.compile(r"([\\`*|<>\[\]~])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(value: Any) -> str:
    """A label or name as literal Markdown text on one line (labels are user input)."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))


def _cell(figures: CellFigures) -> str:
    """Level, counts against the null and the leakage, in few words (report.html has the rest;
    a label step another row reports is left out)."""
    if figures.status == "not_applicable":
        return "n/a"
    parts = [f"**{figures.risk}**"]
    if figures.images:
        null = "" if figures.images.null_hits is None else f" (null {figures.images.null_hits})"
        leakage = f" {signed_percent(figures.images.leakage)}" if figures.images.leakage else ""
        parts.append(f"{figures.images.hits}/{figures.images.trials}{null}{leakage}")
    if figures.labels and figures.labels.rated:
        null = "" if figures.labels.null is None else f" (null {100 * figures.labels.null.mean:.0f}%)"
        parts.append(f"labels {100 * figures.labels.accuracy.mean:.0f}%{null}")
    if figures.failed:
        parts.append(f"{figures.failed} failed")
    return " ".join(parts)


def _accuracy(entry: UtilityFigures | None) -> str:
    if entry is not None and entry.status == "not_applicable":
        return "n/a"
    if entry is None or entry.accuracy is None:
        return "failed"
    text = f"{entry.accuracy.mean:.3f}"
    if entry.defense != BASELINE and entry.drop is not None:
        text += f" ({-entry.drop.mean:+.3f})"
    return text


def _criterion(audit: AuditInfo) -> str:
    text = f"recovered = PSNR >= {audit.psnr_threshold:g} dB"
    if audit.identifiable_margin_db is None:
        return text
    return (f"{text} and {audit.identifiable_margin_db:g} dB closer than any non-member · risk from leakage "
            "(recovery above the data-blind null, lower end of its 95% interval)")


def worst_scenario(view: AuditView) -> ScenarioInfo | None:
    """The scenario whose cells leak most (sum of risk ranks), the first on a tie."""
    def leak(scenario: ScenarioInfo) -> int:
        cells = (view.cell(scenario.label, d, a) for d in scenario.defenses for a in scenario.attacks)
        return sum(max(0, risk.rank(c.risk)) for c in cells if c is not None and c.risk in risk.LEVELS)
    return max(view.scenarios, key=leak, default=None)


def _matrix(view: AuditView, scenario: ScenarioInfo) -> list[str]:
    lines = [f"### {_md(scenario.label)}", "", _md(scenario.description or scenario.training), "",
             "| attack \\ defense | " + " | ".join(map(_md, scenario.defenses)) + " |",
             "|---" * (len(scenario.defenses) + 1) + "|"]
    for attack in scenario.attacks:
        row = [_cell(c) if (c := view.cell(scenario.label, d, attack)) else "–" for d in scenario.defenses]
        lines.append(f"| {_md(attack)} | " + " | ".join(row) + " |")
    lines.append("| *test accuracy* | " + " | ".join(_accuracy(view.utility.get((scenario.label, d))) for d in scenario.defenses) + " |")
    return lines


def render(document: Mapping[str, Any]) -> str:
    """The verdict, the first findings and the worst scenario's matrix; the rest is in report.html."""
    view, facts = AuditView.of(document), RunFacts.of(document)
    counts, by_risk, unscored = facts.counts, facts.counts.by_risk, facts.counts.unscored
    lines = [
        f"## flaudit audit: {_md(view.name)}",
        "",
        f"{counts.cells} cells: {counts.ok - unscored} scored, "
        + (f"{unscored} unscored (no ground truth), " if unscored else "")
        + f"{counts.not_applicable} not applicable, "
        f"{counts.error} failed · risk: high {by_risk['high']}, medium {by_risk['medium']}, "
        f"low {by_risk['low']}, none {by_risk['none']} · {_criterion(facts.audit)} · "
        f"config `{facts.audit.config_hash[:12]}`, profile {_md(facts.audit.profile)}",
    ]
    found = findings(view)
    shown = [f for f in found if f.topic in SUMMARY_TOPICS][:SUMMARY_FINDINGS]
    if shown:
        lines += ["", *(f"- **{_md(f.headline)}** {_md(f.detail)}" for f in shown)]
    worst = worst_scenario(view)
    if worst is not None:
        lines += ["", *_matrix(view, worst)]
    if not view.attacks:
        lines += ["", "No attack is registered yet: the audit measured utility only."]
    rest = len(found) - len(shown)
    others = len(view.scenarios) - (worst is not None)
    if rest or others:
        lines += ["", f"report.html has the rest: {rest} more finding(s), {others} more scenario matrix(es), "
                  "reconstruction grids, privacy-utility plots, failures and the manifest."]
    return "\n".join(lines) + "\n"
