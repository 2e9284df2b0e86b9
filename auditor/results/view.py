"""A scorecard read once into typed figures: what was audited (scenarios with the defense
columns and attack rows each ran, the components and their parameters), its cells, its utility
and DP checks, its counts and its manifest, for the findings, the summary, the report, the
plots and the gate; nothing downstream reads the scorecard's JSON by key.

Scorecards written before per-scenario selections ran every column and row on every scenario;
``flaudit.scorecard/1`` has no nulls (``identifiable_margin_db`` is None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from flaudit.auditor.results import risk
from flaudit.auditor.results.cells import CellFigures, ErrorInfo, Stat
from flaudit.auditor.running.config import BASELINE


@dataclass(frozen=True)
class SettingsFinding:
    """What a scenario's kind finds in its own settings before any attack (a recorded Flower
    federation's DP settings): ``severity`` info or warning."""

    code: str
    severity: str
    message: str


@dataclass(frozen=True)
class Federation:
    """The settings of a scenario's federation that decide how much one update leaks (None
    where its kind has no such setting, e.g. a recorded federation's batch size)."""

    kind: str
    dataset: Any
    model: Any
    clients: Any
    rounds: Any
    local_epochs: Any
    batch_size: Any
    lr: Any
    partition: Any
    alpha: float | None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Federation":
        alpha = config.get("alpha")
        return cls(str(config.get("kind", "fedavg")),
                   *(config.get(f.name) for f in dataclasses.fields(cls) if f.name not in ("kind", "alpha")),
                   alpha if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else None)


@dataclass(frozen=True)
class ScenarioInfo:
    label: str
    description: str | None
    federation: Federation
    seeds: tuple[int, ...]
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    settings_findings: tuple[SettingsFinding, ...] = ()

    @property
    def partition(self) -> str:
        f = self.federation
        return f"{f.partition}" + (f" alpha={f.alpha:g}" if f.alpha is not None else "")

    @property
    def training(self) -> str:
        """``E=1, B=8`` and the partition, the facts that decide how much one update leaks."""
        f = self.federation
        return f"{f.dataset}, {f.clients} clients, E={f.local_epochs}, B={f.batch_size}, {self.partition}"


@dataclass(frozen=True)
class ComponentInfo:
    """A registered attack or defense as run: its name and parameters (as the config resolved them)."""

    name: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class DefenseInfo:
    label: str
    components: tuple[ComponentInfo, ...]  # in order; empty for the baseline


@dataclass(frozen=True)
class AttackInfo:
    label: str
    name: str
    threat_model_text: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyAuditCheck:
    """The empirical epsilon lower bound beside one DP component's claim (``privacy_audit``)."""

    component: str
    claimed: Stat | None
    bound: Stat | None
    canaries: int | None
    canary_client: int | None
    observed: Any
    confidence: float | None
    seeds: tuple[int, ...]
    violating_seeds: tuple[int, ...]
    errors: tuple[ErrorInfo, ...]

    @property
    def violation(self) -> bool:
        return bool(self.violating_seeds)

    @classmethod
    def of(cls, component: str, raw: Mapping[str, Any]) -> "PrivacyAuditCheck":
        return cls(component, Stat.of(raw.get("claimed_epsilon")), Stat.of(raw.get("epsilon_lower_bound")),
                   raw.get("canaries"), raw.get("canary_client"), raw.get("observed"), raw.get("confidence"),
                   tuple(raw.get("seeds", ())), tuple(raw.get("violating_seeds", ())),
                   tuple(ErrorInfo.of(e) for e in raw.get("errors", ())))


@dataclass(frozen=True)
class UtilityFigures:
    scenario: str
    defense: str
    status: str
    reason: str | None
    accuracy: Stat | None
    drop: Stat | None
    figures: Mapping[str, Mapping[str, Stat]] = dataclasses.field(default_factory=dict)  # defense -> its own figures
    errors: tuple[ErrorInfo, ...] = ()
    privacy_audits: tuple[PrivacyAuditCheck, ...] = ()

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> "UtilityFigures":
        figures = {d: {name: stat for name, raw in f.items() if (stat := Stat.of(raw))} for d, f in entry.get("figures", {}).items()}
        return cls(entry["scenario"], entry["defense"], entry["status"], entry.get("reason"),
                   Stat.of(entry.get("test_accuracy")), Stat.of(entry.get("accuracy_drop")),
                   {d: f for d, f in figures.items() if f}, tuple(ErrorInfo.of(e) for e in entry.get("errors", ())),
                   tuple(PrivacyAuditCheck.of(name, c) for name, c in entry.get("privacy_audit", {}).items()))


@dataclass(frozen=True)
class Counts:
    """How many cells a run has, by status and by risk level."""

    cells: int
    ok: int
    not_applicable: int
    error: int
    by_risk: Mapping[str, int]

    @property
    def unscored(self) -> int:
        return self.by_risk.get(risk.UNSCORED, 0)  # older scorecards have no such level


@dataclass(frozen=True)
class AuditInfo:
    """The audit's own facts: its config, the recovery criterion and the risk cut-offs."""

    name: str
    schema: str
    source: str
    profile: str | None
    config_hash: str
    psnr_threshold: float
    identifiable_margin_db: float | None  # None: a flaudit.scorecard/1 audit (risk from raw recovery)
    risk_thresholds: Mapping[str, Mapping[str, float]]
    grid_cells: int
    gate: Mapping[str, float]


@dataclass(frozen=True)
class Provenance:
    """The tamper evidence ``flaudit verify`` re-checks, where the run recorded it."""

    config_file: str
    config_sha256: str
    data: Mapping[str, tuple[str, Mapping[str, str]]]  # scenario label -> (dataset, {seed: SHA-256})
    code_files: int
    package_sha256: str
    outputs: int


@dataclass(frozen=True)
class ManifestInfo:
    """Where and how the run ran."""

    seeds: tuple[int, ...]
    started: str
    finished: str
    duration_seconds: float
    executor: str
    threads: int
    workers: int | None
    git_commit: str | None
    git_dirty: bool | None
    cpu: str
    cuda_available: bool
    gpus: tuple[str, ...]
    extension_built: bool
    cuda_kernels: bool
    python: str
    platform: str
    packages: Mapping[str, str]
    provenance: Provenance | None

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> "ManifestInfo":
        provenance = None
        if "inputs" in m:
            inputs = m["inputs"]
            data = {label: (str(d["dataset"]), dict(d["seeds"])) for label, d in inputs["data"].items()}
            provenance = Provenance(inputs["config_file"], inputs["config_sha256"], data, m["code"]["files"],
                                    m["code"]["package_sha256"], len(m.get("outputs", {})))
        return cls(
            tuple(m["seeds"]), m["started"], m["finished"], m.get("duration_seconds") or 0.0, m["executor"],
            m["threads"], m.get("workers"), m["git"]["commit"], m["git"]["dirty"], m["device"]["cpu"],
            m["device"]["cuda_available"], tuple(m["device"]["gpus"]), m["extension"]["built"],
            m["extension"]["cuda_kernels"], m["python"], m["platform"], dict(m["packages"]), provenance,
        )


@dataclass(frozen=True)
class RunFacts:
    """What the report says beside the matrix: the audit's settings, the defense columns'
    components, the counts and the manifest."""

    audit: AuditInfo
    defenses: tuple[DefenseInfo, ...]
    counts: Counts
    manifest: ManifestInfo

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> "RunFacts":
        audit, summary = document["audit"], document["summary"]
        info = AuditInfo(
            audit["name"], document["schema"], audit["source"], audit.get("profile"), audit["config_hash"],
            audit["psnr_threshold"], audit.get("identifiable_margin_db"), audit["risk_thresholds"],
            audit["options"]["grid_cells"], dict(audit.get("gate", {})),
        )
        defenses = tuple(
            DefenseInfo(d["label"], tuple(ComponentInfo(c["name"], c["params"]) for c in d["components"]))
            for d in audit["defenses"]
        )
        counts = Counts(summary["cells"], summary["ok"], summary["not_applicable"], summary["error"], dict(summary["by_risk"]))
        return cls(info, defenses, counts, ManifestInfo.of(document["manifest"]))


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
        attacks = tuple(AttackInfo(a["label"], a["name"], a["threat_model_text"], a.get("params", {})) for a in audit["attacks"])
        scenarios = tuple(
            ScenarioInfo(s["label"], s.get("description"), Federation.of(s["config"]), tuple(s["seeds"]),
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

    def scenario_cells(self, scenario: str) -> list[CellFigures]:
        return [c for c in self.cells.values() if c.scenario == scenario]

    def scenario_utility(self, scenario: str) -> list[UtilityFigures]:
        return [u for u in self.utility.values() if u.scenario == scenario]
