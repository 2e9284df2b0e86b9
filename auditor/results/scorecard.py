"""The scorecard (``DIR/scorecard.json``, schema ``flaudit.scorecard/2``): every cell of the
matrix with its per-seed runs, metrics as means with 95% intervals over seeds (the attack's,
its null's and their difference, the leakage), utility with and without the defense, the risk
level with the evidence it was read from, and artifacts, plus the environment manifest.

The JSON Schemas ship in the package (``auditor/results/schemas/``); every scorecard is
validated against its own when written and when read. Version 1 scorecards (no nulls, risk from
raw recovery) still load and render; ``flaudit gate`` compares version 2 only.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import jsonschema

from flaudit.auditor.privacy_audit.claims import figures as audit_figures
from flaudit.auditor.privacy_audit.claims import privacy_audits, violations
from flaudit.auditor.results import risk
from flaudit.auditor.results.cells import CellFigures, worst_cells
from flaudit.auditor.running.config import BASELINE, ScenarioSpec
from flaudit.auditor.running.results import AttackOutcome, JobResult, UtilityOutcome
from flaudit.core.jsonable import to_json
from flaudit.auditor.metrics.stats import interval
from flaudit.core.errors import FlauditError
from flaudit.core.tables import one_line
from flaudit.auditor.results.artifact_paths import check_scorecard

if TYPE_CHECKING:  # building needs the plan; reading and validating must stay light
    from flaudit.auditor.running.plan import AuditPlan, Cell

SCHEMA_ID = "flaudit.scorecard/2"
SCHEMA_V1 = "flaudit.scorecard/1"
SCHEMA_FILES = {SCHEMA_ID: "scorecard-2.schema.json", SCHEMA_V1: "scorecard.schema.json"}
SCORECARD = "scorecard.json"
_RATE, _SIGNED, _POSITIVE = (0.0, 1.0), (-1.0, 1.0), (0.0, math.inf)
RANGES = {  # natural range of each quantity, for clipping its interval
    "recovery_rate": _RATE, "psnr_rate": _RATE, "null_recovery_rate": _RATE, "null_psnr_rate": _RATE,
    "leakage": _SIGNED, "label_accuracy": _RATE, "label_null_accuracy": _RATE, "label_leakage": _SIGNED,
    "ssim_mean": _SIGNED, "psnr_mean": _POSITIVE, "psnr_median": _POSITIVE, "psnr_recovered_mean": _POSITIVE,
    "mse_mean": _POSITIVE, "attack_seconds": _POSITIVE, "n_targets": _POSITIVE, "n_reconstructed": _POSITIVE,
    "n_recovered": _POSITIVE, "n_psnr_recovered": _POSITIVE, "n_null_recovered": _POSITIVE, "n_labels": _POSITIVE,
    "test_accuracy": _RATE, "accuracy_drop": _SIGNED,
}
METRICS = (
    "recovery_rate", "psnr_rate", "null_recovery_rate", "null_psnr_rate", "leakage",
    "label_accuracy", "label_null_accuracy", "label_leakage",
    "psnr_mean", "psnr_median", "psnr_recovered_mean", "ssim_mean", "mse_mean",
    "attack_seconds", "n_targets", "n_reconstructed", "n_recovered", "n_psnr_recovered", "n_null_recovered", "n_labels",
)


class ScorecardError(FlauditError):
    """A scorecard file is missing, not JSON, of another schema, or invalid."""


@lru_cache(maxsize=2)
def schema(schema_id: str = SCHEMA_ID) -> dict[str, Any]:
    return json.loads(resources.files("flaudit.auditor.results").joinpath("schemas", SCHEMA_FILES[schema_id]).read_text())


def validate(document: Any, where: str = "scorecard") -> None:
    """Validates against the document's own schema version (2, or the older 1)."""
    if not isinstance(document, Mapping):
        raise ScorecardError(f"{where} is not a JSON object")
    schema_id = document.get("schema")
    if schema_id not in SCHEMA_FILES:
        raise ScorecardError(f"{where} has schema {schema_id!r}; expected {SCHEMA_ID!r} (or the older {SCHEMA_V1!r})")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema(schema_id)).iter_errors(document))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ScorecardError(f"{where} does not follow {schema_id} at {location}: {one_line(error.message, 200)}")


def scorecard_path(path: Path) -> Path:
    """A run folder or a scorecard file -> the scorecard file."""
    return path / SCORECARD if path.is_dir() else path


def _not_a_number(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def parse_json(text: str) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to inf are errors (ValueError), so
    no metric or tolerance can be NaN; absurd nesting is a ValueError too."""
    try:
        return json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load(path: Path) -> dict[str, Any]:
    """Reads and validates a scorecard (``path``: the file or its run folder); refuses one whose
    run did not finish and one naming artifacts outside its folder."""
    from flaudit.auditor.running.folder import unfinished

    file = scorecard_path(path)
    if (reason := unfinished(file.parent)) is not None:
        raise ScorecardError(reason)
    try:
        document = parse_json(file.read_text())
    except FileNotFoundError:
        raise ScorecardError(f"scorecard {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScorecardError(f"scorecard {file} cannot be read: {one_line(str(exc))}") from None
    except ValueError as exc:
        raise ScorecardError(f"scorecard {file} is not valid JSON: {one_line(str(exc))}") from None
    validate(document, f"scorecard {file}")
    check_scorecard(document, f"scorecard {file}")
    return document


# ---- building -------------------------------------------------------------------------------------


def _run_entry(seed: int, result: JobResult) -> dict[str, Any]:
    entry = {"seed": seed, "status": result.status, "seconds": result.seconds}
    if not result.ok:
        entry["error"] = result.error.to_json()
        return entry
    found = result.attack
    entry.update(
        metrics={k: found.metrics.get(k) for k in METRICS},
        null=found.null,
        rated_by=list(found.rated_by),
        attacked_round=found.attacked_round,
        target_clients=list(found.target_clients),
        test_accuracy_at_attack=found.test_accuracy_at_attack,
        diagnostics=found.diagnostics,
        timing=found.timing,
        artifact=found.artifact,
    )
    if found.unscored:
        entry["unscored"] = found.unscored
    return entry


def _figures(runs: list[UtilityOutcome]) -> dict[str, dict[str, Any]]:
    """Each defense's own figures (epsilon, ...) over seeds: {defense: {figure: interval}}."""
    values: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for defense, figures in run.defense_figures.items():
            for name, value in figures.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[defense][name].append(value)
    return {d: {n: interval(v) for n, v in f.items()} for d, f in values.items()}


def _utility(plan: AuditPlan, results: Mapping[str, JobResult]) -> list[dict[str, Any]]:
    by_pair: dict[tuple[str, str], dict[int, JobResult]] = defaultdict(dict)
    for job in plan.utility_jobs:
        by_pair[job.scenario_label, job.defense_label][job.scenario.seed] = results[job.key]
    entries = []
    for scenario, defense in [(s.label, d) for s in plan.config.scenarios for d in plan.matrix(s.label).defenses]:
        runs, baseline, reason = by_pair[scenario, defense], by_pair[scenario, BASELINE], plan.rejected.get((scenario, defense))
        ok = {s: r.utility for s, r in runs.items() if r.ok}
        accuracy = {s: r.test_accuracy for s, r in ok.items()}
        base = {s: r.utility.test_accuracy for s, r in baseline.items() if r.ok}
        drop = [base[s] - a for s, a in accuracy.items() if s in base and a is not None and base[s] is not None]
        entries.append({
            "scenario": scenario,
            "defense": defense,
            "status": "not_applicable" if reason else "ok" if len(ok) == len(runs) else "error",
            "reason": reason,
            "test_accuracy": interval(accuracy.values(), *RANGES["test_accuracy"]),
            "baseline_test_accuracy": interval(base.values(), *RANGES["test_accuracy"]),
            "accuracy_drop": interval(drop, *RANGES["accuracy_drop"]),
            "figures": _figures(list(ok.values())),
            "errors": [r.error.to_json(s) for s, r in runs.items() if not r.ok],
        })
    return entries


def _metrics(ok: list[AttackOutcome]) -> dict[str, Any] | None:
    if not ok:
        return None
    return {name: interval((o.metrics.get(name) for o in ok), *RANGES[name]) for name in METRICS}


@dataclass(frozen=True)
class Rated:
    """The evidence a cell's risk level was read from: each rated output's leakage, with the
    lower end of its interval and the rule that found it (``risk``)."""

    output: str  # images, labels
    lower: float
    rule: str
    hits: int
    null_hits: int
    trials: int
    level: str


def _evidence(ok: list[AttackOutcome], output: str) -> risk.Evidence | None:
    """A rated output's leakage over the ok runs, None when they are not rated by it."""
    if not ok or any(output not in o.rated_by for o in ok):
        return None
    m = [o.metrics for o in ok]
    if output == "images":
        return risk.Evidence(tuple(x["leakage"] for x in m), sum(x["n_recovered"] or 0 for x in m),
                             sum(x["n_null_recovered"] or 0 for x in m), sum(x["n_targets"] for x in m))
    count = lambda key: sum(round(x[key] * x["n_labels"]) for x in m)  # noqa: E731 - shares of a whole batch
    return risk.Evidence(tuple(x["label_leakage"] for x in m), count("label_accuracy"), count("label_null_accuracy"),
                         sum(x["n_labels"] for x in m))


def rating(ok: list[AttackOutcome]) -> tuple[str, list[Rated]]:
    """The risk level of a cell's finished runs and the evidence behind it."""
    found = {name: _evidence(ok, name) for name in ("images", "labels")}
    cutoffs = {"images": risk.LEAKAGE_CUTOFFS, "labels": risk.LABEL_LEAKAGE_CUTOFFS}
    rated = [Rated(name, e.lower, e.rule, e.hits, e.null_hits, e.trials, e.level(cutoffs[name]))
             for name, e in found.items() if e is not None]
    return risk.risk_level(found["images"], found["labels"]) if ok else risk.UNKNOWN, rated


def _cell_entry(cell: Cell, results: Mapping[str, JobResult], utility: Mapping[tuple[str, str], dict]) -> dict:
    seeded = [(job.scenario.seed, results[job.key]) for job in cell.jobs]
    ok = [r.attack for _, r in seeded if r.ok]
    rated: list[Rated] = []
    if cell.not_applicable:
        status, level, metrics = "not_applicable", risk.NOT_APPLICABLE, None
    else:
        metrics = _metrics(ok)
        status = "ok" if len(ok) == len(seeded) else "error"
        level, rated = rating(ok)
        if seeded and all(r.ok and r.attack.unscored for _, r in seeded):
            level = risk.UNSCORED
    use = utility[cell.scenario.label, cell.defense.label]
    return {
        "id": cell.cell_id,
        "scenario": cell.scenario.label,
        "defense": {**cell.defense.describe(), "figures": use["figures"]},
        "attack": cell.attack.describe(),
        "status": status,
        "reason": cell.not_applicable,
        "seeds": list(cell.scenario.seeds),
        "metrics": metrics,
        "utility": {k: use[k] for k in ("test_accuracy", "baseline_test_accuracy", "accuracy_drop")},
        "risk": level,
        "rated": to_json(rated),
        "artifacts": [{"seed": s, "grid": r.attack.artifact} for s, r in seeded if r.ok and r.attack.artifact],
        "errors": [r.error.to_json(s) for s, r in seeded if not r.ok],
        "runs": [_run_entry(s, r) for s, r in seeded],
    }


def _summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {status: sum(c["status"] == status for c in cells) for status in ("ok", "not_applicable", "error")}
    by_risk = {level: sum(c["risk"] == level for c in cells) for level in (*risk.LEVELS, risk.UNKNOWN, risk.NOT_APPLICABLE, risk.UNSCORED)}
    return {"cells": len(cells), **counts, "by_risk": by_risk, "worst": [c.cell_id for c in worst_cells(map(CellFigures.of, cells), 5)]}


def _add_privacy_audits(plan: AuditPlan, results: Mapping[str, JobResult], utility: list[dict[str, Any]],
                        cells: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The DP audit beside each audited column's claim: ``privacy_audit`` and the bound among
    the component's figures in its utility entry, ``dp_violation`` on its cells, the violated
    claims in the summary."""
    audits = privacy_audits(plan.audit_jobs, results)
    for entry in utility:
        checks = audits.get((entry["scenario"], entry["defense"]))
        if checks:
            entry["privacy_audit"] = checks
            for name, check in checks.items():
                entry["figures"].setdefault(name, {}).update(audit_figures(check))
    for cell in cells:
        checks = audits.get((cell["scenario"], cell["defense"]["label"]))
        if checks:
            cell["dp_violation"] = any(c["violation"] for c in checks.values())
    summary["dp_violations"] = violations(audits)


def _without_seed(config: Any) -> dict[str, Any]:
    return {k: v for k, v in to_json(config).items() if k != "seed"}


def _scenario_entry(spec: ScenarioSpec, plan: AuditPlan) -> dict[str, Any]:
    """A scenario with the columns and rows it ran, and what its kind finds in its own settings
    (a recorded federation's DP)."""
    from flaudit.scenarios.kinds import scenario_kind  # building only: reading a scorecard stays light

    matrix = plan.matrix(spec.label)
    entry = {"label": spec.label, "config": _without_seed(spec.config), "seeds": list(spec.seeds),
             "defenses": list(matrix.defenses), "attacks": list(matrix.attacks)}
    if spec.description is not None:
        entry["description"] = spec.description
    found = scenario_kind(spec.config.kind).findings(spec.config)
    if found:
        entry["findings"] = found
    return entry


def build(plan: AuditPlan, results: Mapping[str, JobResult], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The scorecard of a finished plan; ``results``: every job's result by job key."""
    config, options = plan.config, plan.config.options
    utility_entries = _utility(plan, results)
    utility = {(u["scenario"], u["defense"]): u for u in utility_entries}
    cells = [_cell_entry(cell, results, utility) for cell in plan.cells]
    summary = _summary(cells)
    _add_privacy_audits(plan, results, utility_entries, cells, summary)
    document = {
        "schema": SCHEMA_ID,
        "audit": {
            "name": options.name,
            "source": config.source,
            "profile": config.profile,
            "options": to_json(options),
            "config_hash": config.config_hash,
            "config": to_json(config.document),
            "psnr_threshold": options.psnr_threshold,
            "identifiable_margin_db": options.identifiable_margin_db,
            "risk_thresholds": risk.thresholds(),
            "gate": dict(config.gate.items()),
            "scenarios": [_scenario_entry(s, plan) for s in config.scenarios],
            "defenses": [d.describe() for d in plan.defenses],
            "attacks": [a.describe() for a in plan.attacks],
        },
        "manifest": to_json(manifest),
        "summary": summary,
        "utility": utility_entries,
        "cells": cells,
    }
    document = to_json(document)
    validate(document)
    return document
