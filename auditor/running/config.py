"""Config files: the ``[scenario]`` table and ``--set`` overrides (``flaudit simulate``), and the
audit config of ``flaudit run``, the public contract users write.

An audit config holds one ``[scenario]`` table (or ``[[scenario]]`` tables), ``[[defense]]``
and ``[[attack]]`` tables naming registered components with their parameters, ``[audit]``
options, ``[gate]`` tolerances and ``[profile.NAME]`` overlays. Everything is checked here,
key by key, before anything runs; names are resolved against the registries in
``flaudit.auditor.running.plan``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from flaudit.core.tables import bounded, from_mapping, read_toml
from flaudit.core.errors import ConfigError
from flaudit.scenarios.scenario import ScenarioConfig

AUDIT_TABLES = ("audit", "scenario", "defense", "attack", "gate", "profile")
BASELINE = "none"  # the defense label of the undefended run, always part of the matrix
WILDCARD = "*"  # [[attack]] / [[defense]] name = "*": every registered one, with its defaults
BUILTIN_PROFILES = ("quick", "full")
DEFAULT_AUDIT = "default_audit.toml"


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``rounds=5``, ``partition="iid"``); bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("scenario.")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set rounds=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


# ---- the audit config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditOptions:
    """The ``[audit]`` table: how cells are run and scored."""

    name: str = "audit"
    profile: str | None = None  # used when --profile is not given
    psnr_threshold: float = bounded(20.0, doc="dB; a target is recovered at or above it")
    identifiable_margin_db: float = bounded(
        1.0, min=0.0, doc="dB; and only when its match is this much closer to it than to every non-member of the test split"
    )
    attacked_round: int = bounded(-1, doc="0-based round the attacks observe; negative counts from the end")
    attacker_client: int | None = bounded(None, min=0, doc="curious-client attacks: the attacking client")
    threads: int = bounded(1, min=1, doc="torch threads per unit: fixed, so results do not depend on the executor; "
                           "1 suits small models (more threads contend); raise it for large ones")
    grid_cells: int = bounded(6, min=0, doc="worst cells shown with reconstruction grids in the report")
    grid_images: int = bounded(8, min=1, max=64, doc="image pairs per reconstruction grid")
    dp_audit_canaries: int = bounded(1000, min=0, doc="canaries in the empirical audit of each DP defense "
                                     "column (0: no audit)")
    dp_audit_confidence: float = bounded(0.95, min=0.5, max=1.0, exclusive_min=True,
                                         doc="confidence of the audit's epsilon lower bound")
    dp_audit_client: int = bounded(0, min=0, doc="the client whose training holds the canaries")
    job_timeout_s: float | None = bounded(None, min=0.0, exclusive_min=True,
                                          doc="seconds a job may run (its simulation included) before it is "
                                          "stopped and recorded as an error; default: no limit")
    max_memory_gb: float | None = bounded(None, min=0.0, exclusive_min=True,
                                          doc="resident memory a job may use before it is stopped and recorded "
                                          "as an error; default: 75% of this machine's RAM shared by the jobs at once")


@dataclass(frozen=True)
class GateTolerances:
    """``[gate]``: the largest allowed increase of each cell's mean leakage (candidate - baseline),
    in leakage units: image leakage (recovery rate above the null) and label leakage (label
    accuracy above the label-blind guess)."""

    leakage: float = bounded(0.02, min=0.0)
    label_leakage: float = bounded(0.05, min=0.0)

    def items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


@dataclass(frozen=True)
class ScenarioSpec:
    label: str
    config: ScenarioConfig  # its ``seed`` is replaced by each of ``seeds``
    seeds: tuple[int, ...]
    description: str | None = None  # what this federation stands for, in the report's words
    defenses: tuple[str, ...] | None = None  # the defense columns run on it (None: every column)
    attacks: tuple[str, ...] | None = None  # the attack rows run on it (None: every row)


@dataclass(frozen=True)
class ComponentSpec:
    """A registered attack or defense by name, with its raw parameter table (checked later
    against the component's ``Params``)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DefenseSpec:
    """One column of the matrix: defenses applied in order (empty: the ``none`` baseline)."""

    label: str
    components: tuple[ComponentSpec, ...]


@dataclass(frozen=True)
class AttackSpec:
    label: str
    component: ComponentSpec
    attacked_round: int | None = None  # overrides AuditOptions.attacked_round
    timeout_s: float | None = None  # overrides AuditOptions.job_timeout_s


@dataclass(frozen=True)
class ProfileOverlay:
    """``[profile.NAME]``: changes the named profile makes to the config as written."""

    seeds: tuple[int, ...] | None = None
    audit: Mapping[str, Any] = field(default_factory=dict)
    scenario: Mapping[str, Any] = field(default_factory=dict)
    attack: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defense: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditConfig:
    options: AuditOptions
    scenarios: tuple[ScenarioSpec, ...]
    defenses: tuple[DefenseSpec, ...]  # wildcards not yet expanded (running.plan does it)
    attacks: tuple[AttackSpec, ...]
    gate: GateTolerances
    profile: str | None
    overlay: ProfileOverlay
    source: str  # the config file, or "<embedded default>"
    document: Mapping[str, Any]  # as written, for the scorecard and the config hash

    @property
    def config_hash(self) -> str:
        """sha256 of the document and the chosen profile, independent of key order."""
        text = json.dumps({"config": self.document, "profile": self.profile}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted({s for spec in self.scenarios for s in spec.seeds}))


def _tables(document: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """``[key]`` or ``[[key]]`` as a list of tables."""
    value = document.get(key, [])
    tables = [value] if isinstance(value, Mapping) else value
    if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
        raise ConfigError(f"[{key}] must be a table or an array of tables ([[{key}]]), got {value!r}")
    return tables


def _seeds(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of seeds, e.g. [0, 1, 2], got {value!r}")
    for i, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{key}[{i}]: a seed is an integer >= 0, got {seed!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key}: seeds repeat: {value}")
    return tuple(value)


MAX_LABEL = 100
MAX_DESCRIPTION = 300


def _label(table: Mapping[str, Any], key: str, default: str) -> str:
    label = table.get("label", default)
    if not isinstance(label, str) or not label.strip() or "/" in label or not label.isprintable():
        raise ConfigError(f"{key}.label: expected a non-empty printable string without '/', got {str(label)[:60]!r}")
    if len(label) > MAX_LABEL:
        raise ConfigError(f"{key}.label: at most {MAX_LABEL} characters, got {len(label)}")
    return label


def _unique(labels: list[str], what: str) -> None:
    seen = set()
    for label in labels:
        if label in seen:
            raise ConfigError(f"two {what} entries are labelled {label!r}; give one a different `label`")
        seen.add(label)


def _description(table: dict[str, Any], key: str) -> str | None:
    text = table.pop("description", None)
    if text is None:
        return None
    if not isinstance(text, str) or not text.strip() or not text.isprintable() or len(text) > MAX_DESCRIPTION:
        raise ConfigError(f"{key}.description: expected printable text of at most {MAX_DESCRIPTION} characters, "
                          f"got {str(text)[:60]!r}")
    return text.strip()


def _selection(table: dict[str, Any], key: str, what: str) -> tuple[str, ...] | None:
    """``defenses = [...]`` / ``attacks = [...]``: the labels of the columns or rows this
    scenario runs (checked against the expanded labels when the plan is built)."""
    chosen = table.pop(what, None)
    if chosen is None:
        return None
    if not isinstance(chosen, list) or not chosen or not all(isinstance(c, str) for c in chosen):
        raise ConfigError(f"{key}.{what}: expected a non-empty list of {what[:-1]} labels, got {str(chosen)[:80]!r}")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"{key}.{what}: {chosen} lists a label twice")
    return tuple(chosen)


def _in_profile(table: dict[str, Any], key: str, profile: str | None) -> bool:
    """``profiles = [...]`` limits a scenario to those profiles (e.g. a large one to "full")."""
    only = table.pop("profiles", None)
    if only is None:
        return True
    if not isinstance(only, list) or not all(isinstance(p, str) for p in only):
        raise ConfigError(f"{key}.profiles: expected a list of profile names, got {only!r}")
    return profile in only


def _scenario_specs(document: Mapping[str, Any], overlay: ProfileOverlay, profile: str | None) -> tuple[ScenarioSpec, ...]:
    tables = _tables(document, "scenario") or [{}]
    specs = []
    for i, raw in enumerate(tables):
        key = "scenario" if len(tables) == 1 else f"scenario[{i}]"
        table = {**raw, **overlay.scenario}
        if not _in_profile(table, key, profile):
            continue
        if "seed" in table and "seeds" in table:
            raise ConfigError(f"{key}: set either seed or seeds, not both")
        seeds = _seeds(table.pop("seeds"), f"{key}.seeds") if "seeds" in table else None
        if "seed" in table:
            seeds = _seeds([table.pop("seed")], f"{key}.seed")
        seeds = overlay.seeds or seeds or (0,)
        label_default = f"{table.get('dataset', ScenarioConfig.dataset)}-{table.get('model', ScenarioConfig.model)}"
        label = _label(table, key, label_default)
        table.pop("label", None)
        description = _description(table, key)
        defenses, attacks = _selection(table, key, "defenses"), _selection(table, key, "attacks")
        config = from_mapping(ScenarioConfig, table, key)
        specs.append(ScenarioSpec(label, config, seeds, description, defenses, attacks))
    if not specs:
        raise ConfigError(f"no [[scenario]] is part of profile {profile!r} (see each scenario's `profiles`)")
    _unique([s.label for s in specs], "[[scenario]]")
    return tuple(specs)


def _component(table: Mapping[str, Any], name: str, reserved: tuple[str, ...]) -> ComponentSpec:
    return ComponentSpec(name, {k: v for k, v in table.items() if k not in reserved})


def _defense_specs(document: Mapping[str, Any]) -> tuple[DefenseSpec, ...]:
    specs = [DefenseSpec(BASELINE, ())]
    for i, table in enumerate(_tables(document, "defense")):
        key = f"defense[{i}]"
        names = table.get("name")
        if isinstance(names, str):
            names = [names]
            params = {names[0]: _component(table, names[0], ("name", "label")).params}
        elif isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            extra = sorted(set(table) - {"name", "label", *names})
            if extra:
                raise ConfigError(
                    f"{key}: composed defenses take their parameters in sub-tables named after "
                    f"each defense ([{key.split('[')[0]}.{names[0]}]); unexpected key {extra[0]!r}"
                )
            params = {n: table.get(n, {}) for n in names}
            for n, p in params.items():
                if not isinstance(p, Mapping):
                    raise ConfigError(f"{key}.{n}: expected a table of {n}'s parameters, got {p!r}")
        else:
            raise ConfigError(f"{key}.name: expected a defense name or a list of names, got {names!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.name: {names} lists a defense twice")
        if WILDCARD in names and (len(names) > 1 or params[WILDCARD] or "label" in table):
            raise ConfigError(f"{key}: name = {WILDCARD!r} (every registered defense) takes no other keys")
        if names == [BASELINE]:
            if params[BASELINE] or "label" in table:
                raise ConfigError(f"{key}: the {BASELINE!r} baseline takes no parameters")
            continue  # always included
        if BASELINE in names:
            raise ConfigError(f"{key}.name: {BASELINE!r} cannot be composed with other defenses")
        label = _label(table, key, "+".join(names))
        specs.append(DefenseSpec(label, tuple(ComponentSpec(n, params[n]) for n in names)))
    _unique([s.label for s in specs], "[[defense]]")
    return tuple(specs)


@dataclass(frozen=True)
class _AttackTimeout:
    """``[[attack]] timeout_s``: checked like every other number."""

    timeout_s: float = bounded(1.0, min=0.0, exclusive_min=True)


def _attack_specs(document: Mapping[str, Any]) -> tuple[AttackSpec, ...]:
    specs = []
    for i, table in enumerate(_tables(document, "attack")):
        key = f"attack[{i}]"
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name: expected an attack name, got {name!r}")
        attacked_round = table.get("attacked_round")
        if attacked_round is not None and (isinstance(attacked_round, bool) or not isinstance(attacked_round, int)):
            raise ConfigError(f"{key}.attacked_round: expected an integer, got {attacked_round!r}")
        timeout = table.get("timeout_s")
        if timeout is not None:
            timeout = from_mapping(_AttackTimeout, {"timeout_s": timeout}, key).timeout_s
        component = _component(table, name, ("name", "label", "attacked_round", "timeout_s"))
        if name == WILDCARD and (component.params or "label" in table or timeout is not None):
            raise ConfigError(f"{key}: name = {WILDCARD!r} (every registered attack) takes no parameters")
        specs.append(AttackSpec(_label(table, key, name), component, attacked_round, timeout))
    _unique([s.label for s in specs], "[[attack]]")
    return tuple(specs)


def _overlay(document: Mapping[str, Any], profile: str | None) -> ProfileOverlay:
    profiles = document.get("profile", {})
    if not isinstance(profiles, Mapping) or not all(isinstance(p, Mapping) for p in profiles.values()):
        raise ConfigError("[profile] must hold tables: [profile.quick], [profile.full], ...")
    if profile is None:
        return ProfileOverlay()
    known = sorted({*BUILTIN_PROFILES, *profiles})
    if profile not in known:
        raise ConfigError(f"unknown profile {profile!r}; this config knows: {', '.join(known)}")
    table = dict(profiles.get(profile, {}))
    key = f"profile.{profile}"
    unknown = sorted(set(table) - {"seeds", "audit", "scenario", "attack", "defense"})
    if unknown:
        raise ConfigError(f"[{key}] unknown key {unknown[0]!r}; known keys: attack, audit, defense, scenario, seeds")
    seeds = _seeds(table["seeds"], f"{key}.seeds") if "seeds" in table else None
    parts = {}
    for part in ("audit", "scenario", "attack", "defense"):
        value = table.get(part, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}.{part}: expected a table, got {value!r}")
        if part in ("attack", "defense") and not all(isinstance(v, Mapping) for v in value.values()):
            raise ConfigError(f"{key}.{part}: expected tables named after each {part}, e.g. [{key}.{part}.NAME]")
        parts[part] = dict(value)
    if "seeds" in parts["scenario"] or "seed" in parts["scenario"]:
        raise ConfigError(f"{key}.scenario: set the profile's seeds with {key}.seeds")
    if "profile" in parts["audit"]:
        raise ConfigError(f"{key}.audit: a profile cannot choose another profile")
    return ProfileOverlay(seeds, parts["audit"], parts["scenario"], parts["attack"], parts["defense"])


def audit_from_document(document: Mapping[str, Any], source: str, profile: str | None = None) -> AuditConfig:
    """Checks an audit config document; ``profile`` (else ``[audit] profile``) picks an overlay."""
    unknown = sorted(set(document) - set(AUDIT_TABLES))
    if unknown:
        raise ConfigError(f"unknown top-level table or key {unknown[0]!r}; known: {', '.join(AUDIT_TABLES)}")
    written = from_mapping(AuditOptions, document.get("audit", {}), "audit")
    gate = from_mapping(GateTolerances, document.get("gate", {}), "gate")
    profile = profile or written.profile
    overlay = _overlay(document, profile)
    options = from_mapping(AuditOptions, {**document.get("audit", {}), **overlay.audit}, "audit")
    return AuditConfig(
        options=options,
        scenarios=_scenario_specs(document, overlay, profile),
        defenses=_defense_specs(document),
        attacks=_attack_specs(document),
        gate=gate,
        profile=profile,
        overlay=overlay,
        source=source,
        document=document,
    )


def default_audit_text() -> str:
    """The embedded default audit (``auditor/running/default_audit.toml``)."""
    return resources.files("flaudit.auditor.running").joinpath(DEFAULT_AUDIT).read_text()


def load_audit(path: Path | None, profile: str | None = None) -> AuditConfig:
    """The audit config in ``path``, or the embedded default when None."""
    if path is None:
        return audit_from_document(tomllib.loads(default_audit_text()), "<embedded default>", profile)
    return audit_from_document(read_toml(path), str(path), profile)


def load_scenario(path: Path | None, overrides: Iterable[str] = (), label: str | None = None,
                  profile: str | None = None) -> ScenarioConfig:
    """One federation of config file ``path`` (``flaudit simulate``): the same ``[scenario]``
    tables as ``flaudit run`` reads (``seeds``, ``label``, ``profiles``, any kind), with the
    ``--set`` overrides applied to each; ``label`` picks one of several (default: the first),
    which runs with its first seed. Without a file, the default ``ScenarioConfig``."""
    document = dict(read_toml(path)) if path is not None else {}
    changes = dict(parse_override(o) for o in overrides)
    if changes:
        tables = _tables(document, "scenario") or [{}]
        if "seed" in changes:  # an override's seed replaces the file's seeds
            tables = [{k: v for k, v in t.items() if k != "seeds"} for t in tables]
        scenario = [{**t, **changes} for t in tables]
        document["scenario"] = scenario[0] if len(scenario) == 1 else scenario
    config = audit_from_document(document, str(path), profile)
    specs = {spec.label: spec for spec in config.scenarios}
    if label is None:
        spec = config.scenarios[0]
    elif label in specs:
        spec = specs[label]
    else:
        raise ConfigError(f"no [[scenario]] is labelled {label!r}; this config has: {', '.join(specs)}")
    return spec.config.replace(seed=spec.seeds[0])


def load_gate(path: Path) -> GateTolerances:
    """Only the ``[gate]`` table of a config file (``flaudit gate --config``)."""
    return from_mapping(GateTolerances, read_toml(path).get("gate", {}), "gate")
