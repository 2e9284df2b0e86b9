"""Turns an audit config into the matrix of cells and the jobs that fill it.

Everything a user can get wrong is checked here, before any job runs: component names against
the registries, parameters against each component's ``Params``, the attacked round against the
scenario's rounds, and each scenario by building its world once (unknown dataset or model,
unreadable data root, impossible partition) and composing each defense column on it. A column
the scenario's kind rejects (e.g. top-k sparsification on a logit-sharing round, which has no
updates) is not applicable there: its cells carry the kind's reason and its utility is not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flaudit.auditor.attacks.base import ThreatModel
from flaudit.auditor.privacy_audit.job import AuditSettings, PrivacyAuditJob, claims_dp
from flaudit.auditor.running.catalog import Catalog
from flaudit.auditor.running.config import WILDCARD, AttackSpec, AuditConfig, ComponentSpec, DefenseSpec, ScenarioSpec
from flaudit.auditor.running.jobs import AttackJob, ResolvedComponent, UtilityJob
from flaudit.auditor.running.threat_views import kind_mismatch
from flaudit.defenses.base import compose
from flaudit.core.errors import ConfigError, FlauditError, UnknownNameError
from flaudit.core.registry import Registry
from flaudit.core.tables import one_line
from flaudit.scenarios.kinds import scenario_kind
from flaudit.scenarios.views import ServerView

SIZE_KEYS = ("image_size", "max_samples", "extra_classes", "clients", "batch_size")  # named when memory runs out


@dataclass(frozen=True)
class DefenseColumn:
    label: str
    components: tuple[ResolvedComponent, ...]

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "components": [c.describe() for c in self.components]}


@dataclass(frozen=True)
class AttackRow:
    label: str
    component: ResolvedComponent
    attacked_round: int | None
    timeout_s: float | None = None

    @property
    def threat_model(self) -> ThreatModel:
        return self.component.cls.threat_model

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label, "name": self.component.name, "threat_model": self.threat_model.name.lower(),
            "threat_model_text": self.threat_model.value, "params": self.component.describe()["params"],
        }


@dataclass(frozen=True)
class Cell:
    """scenario x defense x attack; one ``AttackJob`` per seed unless not applicable."""

    cell_id: str
    scenario: ScenarioSpec
    defense: DefenseColumn
    attack: AttackRow
    not_applicable: str | None
    jobs: tuple[AttackJob, ...]


@dataclass(frozen=True)
class ScenarioMatrix:
    """The defense columns and attack rows one scenario runs (its ``defenses`` / ``attacks``)."""

    scenario: str
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]


@dataclass(frozen=True)
class AuditPlan:
    config: AuditConfig
    defenses: tuple[DefenseColumn, ...]
    attacks: tuple[AttackRow, ...]
    cells: tuple[Cell, ...]
    utility_jobs: tuple[UtilityJob, ...]
    threads: int
    catalog: Catalog
    rejected: Mapping[tuple[str, str], str]  # (scenario, defense) labels -> why its kind cannot run that column
    audit_jobs: tuple[PrivacyAuditJob, ...] = ()  # empirical checks of the DP columns' epsilon
    matrices: tuple[ScenarioMatrix, ...] = ()  # per scenario, in config order

    def matrix(self, scenario: str) -> ScenarioMatrix:
        found = next((m for m in self.matrices if m.scenario == scenario), None)
        if found is None:  # a plan built without per-scenario selections runs every column and row
            return ScenarioMatrix(scenario, tuple(d.label for d in self.defenses), tuple(a.label for a in self.attacks))
        return found

    @property
    def jobs(self) -> list[UtilityJob | AttackJob | PrivacyAuditJob]:
        return [*self.utility_jobs, *(job for cell in self.cells for job in cell.jobs), *self.audit_jobs]


def cell_id(scenario: str, defense: str, attack: str) -> str:
    return f"{scenario}/{defense}/{attack}"


def _profile_params(cls: type, profile: str | None) -> Mapping[str, Any]:
    """A component's own parameters for ``profile``: its ``profiles`` class attribute,
    e.g. ``profiles = {"full": {"iterations": 24000}}`` (small budgets are the defaults)."""
    return dict(cls.profiles.get(profile, {})) if profile else {}


def _resolve(spec: ComponentSpec, registry: Registry, config: AuditConfig, overlay: Mapping[str, Any]) -> ResolvedComponent:
    cls = registry.get(spec.name)
    table = {**_profile_params(cls, config.profile), **spec.params, **overlay.get(spec.name, {})}
    return ResolvedComponent(spec.name, cls, cls.from_table(table).params)


def _check_overlay_names(config: AuditConfig, registry: Registry, kind: str) -> None:
    overlay = getattr(config.overlay, kind)
    for name in overlay:
        if name not in registry:
            try:
                registry.get(name)
            except UnknownNameError as exc:
                raise UnknownNameError(f"[profile.{config.profile}.{kind}.{name}]: {exc}") from None


def _expand(specs: tuple, registry: Registry, is_wildcard: Callable[[Any], bool], make: Callable[[str], Any]) -> list:
    """Replaces each wildcard entry by every registered name no other entry uses as a label."""
    taken = {s.label for s in specs if not is_wildcard(s)}
    expanded = []
    for spec in specs:
        if is_wildcard(spec):
            expanded += [make(name) for name in registry.names() if name not in taken]
            taken.update(registry.names())
        else:
            expanded.append(spec)
    return expanded


def _expand_defenses(specs: tuple[DefenseSpec, ...], registry: Registry) -> list[DefenseSpec]:
    return _expand(
        specs, registry, lambda s: [c.name for c in s.components] == [WILDCARD],
        lambda name: DefenseSpec(name, (ComponentSpec(name),)),
    )


def _expand_attacks(specs: tuple[AttackSpec, ...], registry: Registry) -> list[AttackSpec]:
    return _expand(specs, registry, lambda s: s.component.name == WILDCARD, lambda name: AttackSpec(name, ComponentSpec(name)))


def _attacked_round(row: AttackRow, config: AuditConfig, scenario: ScenarioSpec) -> int:
    wanted = config.options.attacked_round if row.attacked_round is None else row.attacked_round
    rounds = scenario.config.rounds
    resolved = wanted + rounds if wanted < 0 else wanted
    if not 0 <= resolved < rounds:
        key = "audit.attacked_round" if row.attacked_round is None else f"attack {row.label!r} attacked_round"
        raise ConfigError(f"{key}={wanted}, but scenario {scenario.label!r} has {rounds} rounds")
    return resolved


def _preflight(scenario: ScenarioSpec, defenses: tuple[DefenseColumn, ...]) -> dict[str, str]:
    """Builds the scenario's world (first seed) and composes every defense column on it;
    returns why the scenario's kind rejects a column, by column label."""
    try:
        kind = scenario_kind(scenario.config.kind)
        world = kind.build_world(scenario.config.replace(seed=scenario.seeds[0]))
        world.new_model()
        hooks = {column.label: compose([c.build() for c in column.components], world) for column in defenses}
    except FlauditError as exc:
        raise type(exc)(f"scenario {scenario.label!r}: {exc}") from None
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        sizes = ", ".join(f"{k}={getattr(scenario.config, k)}" for k in SIZE_KEYS if getattr(scenario.config, k))
        raise ConfigError(
            f"scenario {scenario.label!r}: its data or model does not fit in memory ({sizes}): {one_line(str(exc), 160)}"
        ) from None
    return {label: reason for label, column_hooks in hooks.items() if (reason := kind.rejects(column_hooks))}


def _check_inputs(row: AttackRow, scenario: ScenarioSpec, identity: str) -> None:
    """What the attack needs from the scenario (a client it names, auxiliary data), before any job."""
    missing = row.component.build().missing_input(scenario.config)
    if missing:
        raise ConfigError(f"cell {identity}: {missing}")


def _check_attacker(config: AuditConfig, scenario: ScenarioSpec) -> None:
    chosen, clients = config.options.attacker_client, scenario.config.clients
    if chosen is not None and chosen >= clients:
        raise ConfigError(f"audit.attacker_client={chosen}, but scenario {scenario.label!r} has {clients} clients (0..{clients - 1})")


def _not_applicable(row: AttackRow, scenario: ScenarioSpec, column: DefenseColumn, attacked_round: int) -> str | None:
    kind = scenario.config.kind
    unavailable = (kind_mismatch(row.threat_model, kind)
                   or scenario_kind(kind).refuses(row.component.cls, scenario.config, attacked_round))
    if unavailable:
        return unavailable
    attack = row.component.build()
    return attack.not_applicable(scenario.config, [c.build() for c in column.components])


def _audit_jobs(config: AuditConfig, scenario: ScenarioSpec, columns: tuple[DefenseColumn, ...],
                rejects: Mapping[str, str], threads: int) -> list[PrivacyAuditJob]:
    """One privacy audit per seed of each column with a DP claim, where the scenario shares
    updates (canaries are gradients; a logit-sharing server sees no update)."""
    options = config.options
    if options.dp_audit_canaries == 0 or ServerView not in scenario_kind(scenario.config.kind).views:
        return []
    settings = AuditSettings(options.dp_audit_canaries, options.dp_audit_confidence, options.dp_audit_client)
    return [
        PrivacyAuditJob(scenario.label, column.label, scenario.config.replace(seed=seed), column.components, threads, settings)
        for column in columns if column.label not in rejects and any(claims_dp(c) for c in column.components)
        for seed in scenario.seeds
    ]


def _selected(chosen: tuple[str, ...] | None, available: tuple, scenario: ScenarioSpec, what: str) -> tuple:
    """The columns or rows ``scenario.defenses`` / ``scenario.attacks`` names, in the matrix's order."""
    if chosen is None:
        return available
    labels = [item.label for item in available]
    unknown = [label for label in chosen if label not in labels]
    if unknown:
        raise ConfigError(f"scenario {scenario.label!r}: {what} = {list(chosen)} names {unknown[0]!r}, "
                          f"which is not {'an' if what == 'attacks' else 'a'} {what[:-1]} label of this audit "
                          f"({', '.join(labels)})")
    return tuple(item for item in available if item.label in chosen)


def build_plan(config: AuditConfig, catalog: Catalog, preflight: bool = True) -> AuditPlan:
    _check_overlay_names(config, catalog.attacks, "attack")
    _check_overlay_names(config, catalog.defenses, "defense")
    all_columns = tuple(
        DefenseColumn(s.label, tuple(_resolve(c, catalog.defenses, config, config.overlay.defense) for c in s.components))
        for s in _expand_defenses(config.defenses, catalog.defenses)
    )
    all_rows = tuple(
        AttackRow(s.label, _resolve(s.component, catalog.attacks, config, config.overlay.attack), s.attacked_round, s.timeout_s)
        for s in _expand_attacks(config.attacks, catalog.attacks)
    )
    options = config.options
    threads = options.threads
    utility_jobs, cells, rejected, audit_jobs, matrices = [], [], {}, [], []
    for scenario in config.scenarios:
        _check_attacker(config, scenario)
        scenario_columns = _selected(scenario.defenses, all_columns, scenario, "defenses")
        scenario_rows = _selected(scenario.attacks, all_rows, scenario, "attacks")
        matrices.append(ScenarioMatrix(scenario.label, tuple(c.label for c in scenario_columns),
                                       tuple(r.label for r in scenario_rows)))
        rejects = _preflight(scenario, scenario_columns) if preflight else {}
        rejected.update({(scenario.label, label): reason for label, reason in rejects.items()})
        audit_jobs += _audit_jobs(config, scenario, scenario_columns, rejects, threads)
        utility_jobs += [
            UtilityJob(scenario.label, column.label, scenario.config.replace(seed=seed), column.components, threads,
                       options.job_timeout_s)
            for column in scenario_columns if column.label not in rejects
            for seed in scenario.seeds
        ]
        for row in scenario_rows:
            attacked_round = _attacked_round(row, config, scenario)
            for column in scenario_columns:
                identity = cell_id(scenario.label, column.label, row.label)
                reason = rejects.get(column.label) or _not_applicable(row, scenario, column, attacked_round)
                if reason is None:
                    _check_inputs(row, scenario, identity)
                jobs = () if reason else tuple(
                    AttackJob(
                        identity, scenario.config.replace(seed=seed), column.components, row.component,
                        attacked_round, options.attacker_client, options.psnr_threshold, options.identifiable_margin_db,
                        options.grid_images, threads,
                        row.timeout_s or options.job_timeout_s,
                    )
                    for seed in scenario.seeds
                )
                cells.append(Cell(identity, scenario, column, row, reason, jobs))
    return AuditPlan(config, all_columns, all_rows, tuple(cells), tuple(utility_jobs), threads, catalog, rejected,
                     tuple(audit_jobs), tuple(matrices))
