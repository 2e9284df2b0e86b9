"""The Python API: audit, load, gate and simulate from code, as the CLI does from a shell.

    >>> import flaudit
    >>> card = flaudit.run_audit("audit.toml", out="runs/pr-123")      # doctest: +SKIP
    >>> [c.id for c in card.cells if c.risk == "high"]                  # doctest: +SKIP
    >>> flaudit.gate("runs/main", card).passed                          # doctest: +SKIP
    >>> flaudit.simulate({"clients": 4, "rounds": 2}).final_test_accuracy  # doctest: +SKIP

Every function raises ``flaudit.core.errors.FlauditError`` (one readable line) for bad input.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from flaudit.auditor.results import gate as gates
from flaudit.auditor.results import scorecard as scorecards
from flaudit.auditor.running.config import (
    AuditConfig,
    GateTolerances,
    audit_from_document,
    default_audit_text,
    load_audit,
    load_scenario,
)
from flaudit.auditor.running.runner import RunOptions
from flaudit.auditor.results.view import AuditView, RunFacts
from flaudit.auditor.running.runner import run_audit as run_plan
from flaudit.core.tables import from_mapping
from flaudit.scenarios.fedavg import SimulationResult
from flaudit.scenarios.kinds import simulate as simulate_kind
from flaudit.scenarios.scenario import ScenarioConfig

ConfigSource = AuditConfig | Mapping[str, Any] | str | Path | None


@dataclass(frozen=True)
class CellResult:
    """One cell of the matrix (scenario x defense x attack), as the scorecard records it."""

    id: str
    scenario: str
    defense: str
    attack: str
    status: str  # ok, not_applicable, error
    risk: str
    reason: str | None  # why it did not apply
    means: Mapping[str, float | None]  # each metric's mean over seeds (empty unless scored)

    @classmethod
    def of(cls, cell: Mapping[str, Any]) -> "CellResult":
        metrics = cell.get("metrics") or {}
        return cls(
            id=cell["id"], scenario=cell["scenario"], defense=cell["defense"]["label"],
            attack=cell["attack"]["label"], status=cell["status"], risk=cell["risk"], reason=cell.get("reason"),
            means={name: value.get("mean") for name, value in metrics.items() if isinstance(value, Mapping)},
        )


@dataclass(frozen=True)
class Scorecard:
    """A validated scorecard: ``document`` is the JSON (``schema`` names its version)."""

    document: Mapping[str, Any]
    path: Path | None = None

    def __repr__(self) -> str:
        counts = self.facts.counts
        return (f"Scorecard(name={self.name!r}, schema={self.schema!r}, cells={counts.cells} "
                f"(ok {counts.ok}, not applicable {counts.not_applicable}, error {counts.error}), "
                f"path={str(self.path)!r})")

    @property
    def view(self) -> AuditView:
        """The matrix as typed figures: scenarios, cells (counts against the null, leakage), utility."""
        return AuditView.of(self.document)

    @property
    def facts(self) -> RunFacts:
        """The audit's settings, its defense columns' components, the counts and the manifest."""
        return RunFacts.of(self.document)

    @property
    def schema(self) -> str:
        return self.facts.audit.schema

    @property
    def name(self) -> str:
        return self.facts.audit.name

    @property
    def cells(self) -> tuple[CellResult, ...]:
        return tuple(CellResult.of(cell) for cell in self.document["cells"])

    def cell(self, cell_id: str) -> CellResult:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise KeyError(f"no cell {cell_id!r} in this scorecard")


def _audit_config(config: ConfigSource, profile: str | None) -> AuditConfig:
    if isinstance(config, AuditConfig):
        return config
    if isinstance(config, Mapping):
        return audit_from_document(config, "<python mapping>", profile)
    return load_audit(None if config is None else Path(config), profile)


def run_audit(config: ConfigSource = None, *, out: str | Path = "runs/default", executor: str = "local",
              profile: str | None = None, workers: int | None = None, address: str | None = None,
              resume: bool = False, progress: bool = False) -> Scorecard:
    """Runs an audit and writes its run folder ``out`` (scorecard.json, report.html, summary.md).

    ``config``: a TOML file, a mapping shaped like one (``{"scenario": {...}, "attack": [...]}``),
    an ``AuditConfig``, or None for the embedded default audit.

        >>> card = flaudit.run_audit({"scenario": {"rounds": 1}, "attack": [{"name": "rtf"}]},
        ...                          out="/tmp/rtf-audit")               # doctest: +SKIP
    """
    options = RunOptions(Path(out), executor, address, workers, resume, progress)
    run = run_plan(_audit_config(config, profile), options)
    return Scorecard(run.scorecard, Path(out) / scorecards.SCORECARD)


def load_scorecard(path: str | Path) -> Scorecard:
    """Reads and validates a scorecard (the file or its run folder).

        >>> flaudit.load_scorecard("runs/default").cell("digits-cnn/none/rtf").risk  # doctest: +SKIP
    """
    file = scorecards.scorecard_path(Path(path))
    return Scorecard(scorecards.load(file), file)


def _scorecard(card: Scorecard | str | Path) -> Scorecard:
    return card if isinstance(card, Scorecard) else load_scorecard(card)


def gate(baseline: Scorecard | str | Path, candidate: Scorecard | str | Path,
         tolerances: GateTolerances | Mapping[str, float] | None = None) -> gates.GateResult:
    """Did leakage grow from ``baseline`` to ``candidate`` beyond ``tolerances`` (default: the
    baseline's ``[gate]``)? ``result.passed``, ``result.findings`` say.

        >>> flaudit.gate("runs/main", "runs/pr-123", {"leakage": 0.0}).passed  # doctest: +SKIP
    """
    base, cand = _scorecard(baseline), _scorecard(candidate)
    gates.check_versions(base.document, cand.document)
    if tolerances is None:
        limits = gates.tolerances_of(base.document)
    elif isinstance(tolerances, GateTolerances):
        limits = tolerances
    else:
        limits = from_mapping(GateTolerances, tolerances, "gate")
    return gates.compare(base.document, cand.document, limits)


def simulate(scenario: ScenarioConfig | Mapping[str, Any] | str | Path | None = None, *,
             label: str | None = None, overrides: Iterable[str] = (), progress: bool = False) -> SimulationResult:
    """Runs one federation without attacks: a ``ScenarioConfig``, a ``[scenario]`` table as a
    mapping, a config file (``label`` picks one of its scenarios), or None for the defaults.

        >>> flaudit.simulate({"kind": "fedmd", "clients": 3, "rounds": 2}).final_test_accuracy  # doctest: +SKIP
    """
    if isinstance(scenario, ScenarioConfig):
        config = scenario
    elif isinstance(scenario, Mapping):
        config = from_mapping(ScenarioConfig, scenario, "scenario")
    else:
        config = load_scenario(None if scenario is None else Path(scenario), overrides, label)
    return simulate_kind(config, progress=progress)


def default_audit() -> Mapping[str, Any]:
    """The embedded default audit as a mapping, to adapt and pass to ``run_audit``."""
    return tomllib.loads(default_audit_text())
