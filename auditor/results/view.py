"""A scorecard read once into typed figures: its scenarios (each with the defense columns and
attack rows it ran), its cells and its utility, for the findings, the summary and the report.

Scorecards written before per-scenario selections ran every column and row on every scenario.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from flaudit.auditor.results.cells import CellFigures, Stat
from flaudit.auditor.running.config import BASELINE


@dataclass(frozen=True)
class SettingsFinding:
    """What a scenario's kind finds in its own settings before any attack (a recorded Flower
    federation's DP settings): ``severity`` info or warning."""

    code: str
    severity: str
    message: str


@dataclass(frozen=True)
class ScenarioInfo:
    label: str
    description: str | None
    config: Mapping[str, Any]
    seeds: tuple[int, ...]
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    settings_findings: tuple[SettingsFinding, ...] = ()

    @property
    def training(self) -> str:
        """``E=1, B=8`` and the partition, the facts that decide how much one update leaks."""
        c = self.config
        alpha = f" alpha={c['alpha']:g}" if isinstance(c.get("alpha"), (int, float)) else ""
        return f"{c.get('dataset')}, {c.get('clients')} clients, E={c.get('local_epochs')}, B={c.get('batch_size')}, {c.get('partition')}{alpha}"


@dataclass(frozen=True)
class AttackInfo:
    label: str
    name: str
    threat_model_text: str


@dataclass(frozen=True)
class UtilityFigures:
    scenario: str
    defense: str
    status: str
    reason: str | None
    accuracy: Stat | None
    drop: Stat | None

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> "UtilityFigures":
        return cls(entry["scenario"], entry["defense"], entry["status"], entry.get("reason"),
                   Stat.of(entry.get("test_accuracy")), Stat.of(entry.get("accuracy_drop")))


@dataclass(frozen=True)
class AuditView:
    name: str
    scenarios: tuple[ScenarioInfo, ...]
    defenses: tuple[str, ...]
    attacks: tuple[AttackInfo, ...]
    cells: Mapping[str, CellFigures]
    utility: Mapping[tuple[str, str], UtilityFigures]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "AuditView":
        audit = document["audit"]
        defenses = tuple(d["label"] for d in audit["defenses"])
        attacks = tuple(AttackInfo(a["label"], a["name"], a["threat_model_text"]) for a in audit["attacks"])
        scenarios = tuple(
            ScenarioInfo(s["label"], s.get("description"), s["config"], tuple(s["seeds"]),
                         tuple(s.get("defenses", defenses)), tuple(s.get("attacks", [a.label for a in attacks])),
                         tuple(SettingsFinding(f["code"], f["severity"], f["message"]) for f in s.get("findings", [])))
            for s in audit["scenarios"]
        )
        cells = {c["id"]: CellFigures.of(c) for c in document["cells"]}
        utility = {(u["scenario"], u["defense"]): UtilityFigures.of(u) for u in document["utility"]}
        return cls(audit["name"], scenarios, defenses, attacks, cells, utility)

    def cell(self, scenario: str, defense: str, attack: str) -> CellFigures | None:
        return self.cells.get(f"{scenario}/{defense}/{attack}")

    def attack(self, label: str) -> AttackInfo:
        return next(a for a in self.attacks if a.label == label)

    def baseline(self, scenario: str, attack: str) -> CellFigures | None:
        return self.cell(scenario, BASELINE, attack)
