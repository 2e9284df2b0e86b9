"""The base of the jobs that run one (scenario, defense column, seed) as a whole federation:
the utility job and the privacy-audit job. Its own module, because the jobs module imports
the privacy-audit job and both need it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from flaudit.core.jsonable import digest, to_json
from flaudit.scenarios.scenario import ScenarioConfig

if TYPE_CHECKING:
    from flaudit.auditor.running.jobs import ResolvedComponent


@dataclass(frozen=True)
class ColumnJob:
    kind: ClassVar[str]
    scenario_label: str
    defense_label: str
    scenario: ScenarioConfig
    defenses: tuple[ResolvedComponent, ...]
    threads: int

    def describe(self) -> dict[str, Any]:
        """Everything that determines the result (what the key digests)."""
        return {
            "kind": self.kind, "scenario_label": self.scenario_label, "defense_label": self.defense_label,
            "scenario": to_json(self.scenario), "defenses": [d.describe() for d in self.defenses],
            "threads": self.threads,
        }

    @property
    def key(self) -> str:
        return f"{self.kind}-{digest(self.describe())}"
