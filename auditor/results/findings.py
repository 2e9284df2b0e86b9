"""What an audit found, in sentences written from its scorecard: which attacks leak (beyond
their data-blind null) in which federation, what realistic training alone changes, which
defenses stop them and at what utility cost, and which cells failed or did not apply.

Every statement is read from the cells' risk levels and counts (never from raw rates), so the
findings say nothing the matrix does not show. They open the report and the summary.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from flaudit.auditor.results import risk
from flaudit.auditor.results.cells import CellFigures, counts_text, signed_percent
from flaudit.auditor.results.view import AuditView, ScenarioInfo
from flaudit.auditor.running.config import BASELINE

LEAKING = {"low", "medium", "high"}


@dataclass(frozen=True)
class Finding:
    """One finding: ``topic`` groups it (leaks, realism, defenses, settings, failures, not applicable),
    ``headline`` is its first words, ``detail`` the evidence; both plain text."""

    topic: str
    headline: str
    detail: str

    @property
    def text(self) -> str:
        return f"{self.headline} {self.detail}".strip()


def evidence(cell: CellFigures) -> str:
    """``high: 54/64 recovered, null 1/64, leakage +82.8%`` — what a level was read from."""
    parts = []
    if cell.images is not None:
        parts.append(counts_text(cell.images))
        if cell.images.leakage is not None:
            parts.append(f"leakage {signed_percent(cell.images.leakage)}")
    if cell.labels is not None and cell.labels.rated:
        null = f", null {100 * cell.labels.null.mean:.0f}%" if cell.labels.null is not None else ""
        parts.append(f"labels {100 * cell.labels.accuracy.mean:.0f}%{null}")
    return f"{cell.risk}" + (f" ({', '.join(parts)})" if parts else "")


def _leaking(view: AuditView, scenario: ScenarioInfo, defense: str = BASELINE) -> list[CellFigures]:
    cells = [view.cell(scenario.label, defense, a) for a in scenario.attacks]
    found = [c for c in cells if c is not None and c.status == "ok" and c.risk in LEAKING]
    return sorted(found, key=lambda c: (-risk.rank(c.risk), -c.rated_leakage))


def _leaks(view: AuditView) -> Iterable[Finding]:
    for scenario in view.scenarios:
        if BASELINE not in scenario.defenses:
            continue
        scored = [c for a in scenario.attacks if (c := view.baseline(scenario.label, a)) and c.status == "ok"]
        leaking = _leaking(view, scenario)
        where = f"{scenario.label} ({scenario.description or scenario.training}):"
        if not scored:
            continue
        if not leaking:
            yield Finding("leaks", where, f"none of its {len(scored)} scored attacks leaks beyond its data-blind null without a defense.")
            continue
        listed = "; ".join(f"{c.attack} {evidence(c)}" for c in leaking)
        yield Finding("leaks", where, f"{len(leaking)} of {len(scored)} scored attacks leak without a defense: {listed}.")


def _realism(view: AuditView) -> Iterable[Finding]:
    """Pairs of undefended scenarios on the same data: the attacks whose level differs."""
    by_data: dict[str, list[ScenarioInfo]] = defaultdict(list)
    for scenario in view.scenarios:
        if BASELINE in scenario.defenses and scenario.federation.kind == "fedavg":
            by_data[str(scenario.federation.dataset)].append(scenario)
    for group in by_data.values():
        for first, second in zip(group, group[1:]):
            changes, kept = [], []
            for attack in (a for a in first.attacks if a in second.attacks):
                one, two = view.baseline(first.label, attack), view.baseline(second.label, attack)
                if not (one and two and one.status == two.status == "ok"):
                    continue
                if one.risk != two.risk:
                    changes.append(f"{attack} {one.risk} -> {two.risk}")
                elif one.risk in LEAKING:
                    kept.append(attack)
            if not changes and not kept:
                continue
            detail = ("; ".join(changes) or "no attack changes its level") + (
                f"; leaking in both: {', '.join(kept)}" if kept else "")
            yield Finding("realism", f"From {first.label} to {second.label} ({first.training} -> {second.training}):", detail + ".")


def _utility_text(view: AuditView, scenario: str, defense: str) -> str:
    entry = view.utility.get((scenario, defense))
    if entry is None or entry.accuracy is None:
        return "utility not measured"
    text = f"test accuracy {entry.accuracy.mean:.3f}"
    return text + (f" ({round(-entry.drop.mean, 3) + 0.0:+.3f} vs none)" if entry.drop is not None else "")


def _defenses(view: AuditView) -> Iterable[Finding]:
    for defense in (d for d in view.defenses if d != BASELINE):
        lines = []
        for scenario in (s for s in view.scenarios if defense in s.defenses and BASELINE in s.defenses):
            leaking = [c.attack for c in _leaking(view, scenario)]
            cells = {a: view.cell(scenario.label, defense, a) for a in leaking}
            ran = {a: c for a, c in cells.items() if c is not None and c.status == "ok"}
            if not ran:
                continue
            stopped = [a for a, c in ran.items() if c.risk == "none"]
            still = [f"{a} {evidence(c)}" for a, c in ran.items() if c.risk in LEAKING]
            unscored = [a for a, c in ran.items() if c.risk not in LEAKING and c.risk != "none"]
            text = f"in {scenario.label} it stops {len(stopped)} of the {len(ran)} attacks that leak without it"
            text += f" ({', '.join(stopped)})" if stopped else ""
            text += f"; still leaking: {'; '.join(still)}" if still else ""
            text += f"; not scored under it: {', '.join(unscored)}" if unscored else ""
            lines.append(f"{text}; {_utility_text(view, scenario.label, defense)}")
            violated = [c.cell_id for c in (view.cell(scenario.label, defense, a) for a in scenario.attacks) if c and c.dp_violation]
            if violated:
                lines.append(f"its DP claim is violated in {scenario.label} (empirical epsilon above the claim)")
        if lines:
            yield Finding("defenses", f"{defense}:", "; ".join(lines) + ".")


def _settings(view: AuditView) -> Iterable[Finding]:
    """What each scenario's own settings say (a recorded federation's DP mods and accounting)."""
    for scenario in view.scenarios:
        for found in scenario.settings_findings:
            yield Finding("settings", f"{scenario.label}, {found.code} ({found.severity}):", found.message)


def _grouped(cells: Iterable[CellFigures], why) -> dict[str, list[CellFigures]]:
    groups: dict[str, list[CellFigures]] = defaultdict(list)
    for cell in cells:
        groups[why(cell)].append(cell)
    return groups


def _names(cells: list[CellFigures], limit: int = 4) -> str:
    names = [c.cell_id for c in cells[:limit]]
    return ", ".join(names) + (f" and {len(cells) - limit} more" if len(cells) > limit else "")


def _failures(view: AuditView) -> Iterable[Finding]:
    failed = [c for c in view.cells.values() if c.failed or c.risk == risk.UNKNOWN]
    for reason, cells in _grouped(failed, lambda c: c.first_error or "nothing the attack returned could be scored").items():
        yield Finding("failures", f"{len(cells)} cell(s) failed:", f"{reason} ({_names(cells)}).")


def _not_applicable(view: AuditView) -> Iterable[Finding]:
    """Grouped by reason, the attack's own name taken off its front ("ig needs each client's
    update; ..."), so one defense's reason lists every attack it rules out."""
    cells = [c for c in view.cells.values() if c.status == "not_applicable"]
    for reason, group in _grouped(cells, lambda c: (c.reason or "").removeprefix(f"{c.attack} ")).items():
        attacks = sorted({c.attack for c in group})
        yield Finding("not applicable", f"{', '.join(attacks)}: not applicable in {len(group)} cell(s):", f"{reason}.")


TOPICS = (_leaks, _realism, _defenses, _settings, _failures, _not_applicable)


def findings(view: AuditView) -> list[Finding]:
    """Every finding, leaks first, then realism, defenses, the scenarios' settings, failures and
    cells that did not apply."""
    return [finding for topic in TOPICS for finding in topic(view)]
