"""``flaudit gate``: did leakage grow from a baseline scorecard to a candidate beyond the
tolerances? Both must audit the same matrix (same cell ids: scenario/defense/attack labels),
so a candidate that only changes a defense's strength is compared cell by cell, and both must
be ``flaudit.scorecard/2``: only it records leakage (a v1 scorecard is refused, exit 2).

A cell regresses when its mean leakage over seeds (image: identifiable recovery above the null;
label: label accuracy above the label-blind guess) grows by more than its tolerance, in those
units; a candidate that returns fewer but better images is no regression unless it leaks more.
It also regresses when it failed in the candidate (its leakage is unknown), or when an attack
that did not apply in the baseline applies in the candidate and leaks (risk above none).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from flaudit.auditor.results.cells import CellFigures, Stat
from flaudit.auditor.results.scorecard import SCHEMA_ID, ScorecardError
from flaudit.auditor.results.view import AuditView
from flaudit.auditor.running.config import GateTolerances
from flaudit.auditor.running.store import atomic_write
from flaudit.core.tables import from_mapping

LISTED = 5  # cell ids named when the matrices differ


class MatrixMismatchError(ScorecardError):
    """The two scorecards audit different cells, so they cannot be compared."""


@dataclass(frozen=True)
class Finding:
    cell_id: str
    metric: str
    baseline: float | None
    candidate: float | None
    tolerance: float | None
    note: str = ""

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.candidate - self.baseline


@dataclass(frozen=True)
class GateResult:
    cells: tuple[CellFigures, ...]  # the candidate's cells, in order
    findings: tuple[Finding, ...]
    tolerances: GateTolerances

    @property
    def passed(self) -> bool:
        return not self.findings


def tolerances_of(scorecard: Mapping[str, Any]) -> GateTolerances:
    """The [gate] tolerances recorded in a scorecard (its run's config)."""
    return from_mapping(GateTolerances, scorecard["audit"]["gate"], "gate")


LEAKAGE_OF = {  # gate tolerance -> the cell's leakage it bounds
    "leakage": lambda f: f.images.leakage if f.images else None,
    "label_leakage": lambda f: f.labels.leakage if f.labels else None,
}


def _mean(cell: CellFigures, metric: str) -> float | None:
    stat: Stat | None = LEAKAGE_OF[metric](cell)
    return None if stat is None else stat.mean


def check_versions(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> None:
    older = [(name, d["schema"]) for name, d in (("baseline", baseline), ("candidate", candidate)) if d["schema"] != SCHEMA_ID]
    if older:
        name, schema = older[0]
        raise ScorecardError(
            f"the {name} is a {schema} scorecard, which records no leakage; gate compares {SCHEMA_ID} scorecards "
            f"only: re-run the {name} audit with this flaudit"
        )


def _check_matrix(baseline: AuditView, candidate: AuditView) -> None:
    base, cand = set(baseline.cells), set(candidate.cells)
    if base == cand:
        return

    def listed(ids: set[str]) -> str:
        names = sorted(ids)
        more = f" (+{len(names) - LISTED} more)" if len(names) > LISTED else ""
        return ", ".join(names[:LISTED]) + more if names else "none"

    raise MatrixMismatchError(
        f"the scorecards audit different matrices; only in the baseline: {listed(base - cand)}; "
        f"only in the candidate: {listed(cand - base)}"
    )


def _cell_findings(base: CellFigures, cand: CellFigures, tolerances: GateTolerances) -> list[Finding]:
    cell_id = cand.cell_id
    if cand.status == "error":
        return [Finding(cell_id, "status", None, None, None, f"failed in the candidate: {cand.first_error or 'failed'}")]
    if cand.status == "not_applicable":
        return []
    if base.status == "not_applicable":
        if cand.risk == "none":
            return []
        return [Finding(cell_id, "risk", None, None, None, f"now applicable with risk {cand.risk} (baseline: {base.reason})")]
    findings = []
    for metric, tolerance in tolerances.items():
        before, after = _mean(base, metric), _mean(cand, metric)
        if before is not None and after is not None and after - before > tolerance:
            findings.append(Finding(cell_id, metric, before, after, tolerance))
    return findings


def dp_violation_findings(candidate: AuditView) -> list[Finding]:
    """Every cell of a column whose DP claim the privacy audit refuted fails, whatever the
    baseline: the defense does not give the privacy it reports."""
    refuted = {column: [c for c in u.privacy_audits if c.violation] for column, u in candidate.utility.items()}
    findings = []
    for cell in candidate.cells.values():
        for check in refuted.get((cell.scenario, cell.defense), []):
            claimed = check.claimed and check.claimed.mean
            bound = check.bound and check.bound.mean
            note = (f"dp_violation: {check.component} claims epsilon {_fmt(claimed)} but the audit proves "
                    f">= {_fmt(bound)} ({check.canaries} canaries, {check.confidence:.0%} "
                    f"confidence; seeds {', '.join(map(str, check.violating_seeds))})")
            findings.append(Finding(cell.cell_id, "dp_violation", claimed, bound, None, note))
    return findings


def compare(baseline: Mapping[str, Any], candidate: Mapping[str, Any], tolerances: GateTolerances) -> GateResult:
    check_versions(baseline, candidate)
    base, cand = AuditView.of(baseline), AuditView.of(candidate)
    _check_matrix(base, cand)
    findings = [f for cell in cand.cells.values() for f in _cell_findings(base.cells[cell.cell_id], cell, tolerances)]
    findings += dp_violation_findings(cand)
    return GateResult(tuple(cand.cells.values()), tuple(findings), tolerances)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def render_table(result: GateResult) -> str:
    """The offending cells, one row per regressed metric."""
    header = ("cell", "metric", "baseline", "candidate", "delta", "tolerance", "note")
    rows = [
        (f.cell_id, f.metric, _fmt(f.baseline), _fmt(f.candidate), _fmt(f.delta, True), _fmt(f.tolerance), f.note)
        for f in result.findings
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines)


def junit_xml(result: GateResult) -> str:
    """One test case per cell (classname scenario.defense, name attack); not-applicable cells
    are skipped, regressed cells fail with their findings."""
    by_cell: dict[str, list[Finding]] = {}
    for finding in result.findings:
        by_cell.setdefault(finding.cell_id, []).append(finding)
    suite = ET.Element(
        "testsuite", name="flaudit.gate", tests=str(len(result.cells)), failures=str(len(by_cell)),
        skipped=str(sum(c.status == "not_applicable" for c in result.cells)),
    )
    for cell in result.cells:
        case = ET.SubElement(suite, "testcase", classname=f"{cell.scenario}.{cell.defense}", name=cell.attack)
        if cell.cell_id in by_cell:
            found = by_cell[cell.cell_id]
            summary = "; ".join(
                f.note or f"{f.metric} {_fmt(f.baseline)} -> {_fmt(f.candidate)} ({_fmt(f.delta, True)} > {_fmt(f.tolerance)})"
                for f in found
            )
            ET.SubElement(case, "failure", message=summary, type="leakage_regression").text = summary
        elif cell.status == "not_applicable":
            ET.SubElement(case, "skipped", message=cell.reason or "not applicable")
        else:
            ET.SubElement(case, "system-out").text = f"risk {cell.risk}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: GateResult, path: Path) -> None:
    atomic_write(path, junit_xml(result))


def describe_tolerances(tolerances: GateTolerances) -> str:
    return ", ".join(f"{name} +{value:g}" for name, value in tolerances.items())

