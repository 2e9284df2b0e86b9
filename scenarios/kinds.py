"""Scenario kinds: which FL protocol a scenario runs (``[scenario] kind = "fedmd"``).

A kind builds its world from the ``ScenarioConfig`` and runs it round by round; each round
yields a record carrying ``test_accuracy``, ``ground_truth`` (scoring only) and the views the
kind produces. The auditor reads ``views`` to decide which threat models (and so which
attacks) apply: update-sharing FedAvg shows the server updates, the FedMD family logits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from flaudit.core.errors import ConfigError
from flaudit.scenarios.fedavg import FedAvgSimulation, SimulationResult, run_rounds
from flaudit.scenarios.hooks import FLHooks
from flaudit.scenarios.logit_sharing.dsfl import DSFL
from flaudit.scenarios.logit_sharing.fedgems import FedGEMS
from flaudit.scenarios.logit_sharing.fedmd import FedMD
from flaudit.core.registry import Registry
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, build_world
from flaudit.scenarios.views import LogitView, PeerView, ServerView


class Simulation(Protocol):
    def run_round(self, round_index: int) -> Any: ...


def _accepts_every_defense(hooks: FLHooks) -> None:
    """An update-sharing round (FedAvg) has a slot for every hook a defense composes."""
    return None


def _serves_every_attack(attack: type, config: ScenarioConfig, attacked_round: int) -> None:
    return None


def _no_findings(config: ScenarioConfig) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True)
class ScenarioKind:
    build_world: Callable[[ScenarioConfig], FLWorld]
    simulation: Callable[[FLWorld, FLHooks], Simulation]
    views: frozenset[type]  # the view types its rounds produce
    # Why composed defenses cannot act on its rounds (None when they can): the auditor marks
    # such a defense column not applicable instead of running it into the simulation's error.
    rejects: Callable[[FLHooks], str | None] = _accepts_every_defense
    # Why its attacked round cannot serve an attack class although it produces its view (None
    # when it can): a recording cannot be re-sent a crafted model, nor show what it did not record.
    refuses: Callable[[type, ScenarioConfig, int], str | None] = _serves_every_attack
    summary: str = ""  # one line for `flaudit list` (a plugin kind's; built-ins pass theirs to register)
    # What the scenario's own settings say before any attack runs ({code, severity, message,
    # values} each, in the scorecard's scenario entry), e.g. a recorded federation's DP settings.
    findings: Callable[[ScenarioConfig], list[dict[str, Any]]] = _no_findings


def _kind_plugin(name: str, obj: Any) -> ScenarioKind:
    if not isinstance(obj, ScenarioKind):
        raise ConfigError(f"scenario kind plugin {name!r} is {obj!r}, not a flaudit.scenarios.kinds.ScenarioKind")
    return obj


# Pluggable: kinds outside scenarios/ come in as entry points of the group ``flaudit.scenario_kinds``
# (flaudit's own ``recorded`` kind, setup.py: flaudit.integrations.flower.replay:RECORDED) or as
# ``"package.module:KIND"``, so scenarios/ imports no integration.
SCENARIO_KINDS: Registry[ScenarioKind] = Registry("scenario kind", plugins="flaudit.scenario_kinds", accept=_kind_plugin)


def scenario_kind(name: str) -> ScenarioKind:
    """The registered kind ``name``; an unknown name raises UnknownNameError listing the kinds."""
    return SCENARIO_KINDS.get(name)


def _fedavg_world(config: ScenarioConfig) -> FLWorld:
    if config.logit_options:
        raise ConfigError(
            f"scenario.logit_options is set, but kind={config.kind!r} shares updates, not logits; "
            "choose a logit-sharing kind (dsfl, fedgems, fedmd) or drop logit_options"
        )
    return build_world(config)


SCENARIO_KINDS.register("fedavg", "FedAvg: clients share parameter updates")(
    ScenarioKind(_fedavg_world, FedAvgSimulation, frozenset({ServerView, PeerView}))
)

for protocol in (DSFL, FedGEMS, FedMD):  # the logit-sharing kinds
    SCENARIO_KINDS.register(protocol.kind, protocol.summary)(
        ScenarioKind(protocol.build_world, protocol, frozenset({LogitView}), protocol.rejects)
    )


def simulate(config: ScenarioConfig, hooks: FLHooks | None = None, progress: bool = False,
             describe: bool = False) -> SimulationResult:
    """Runs the federation ``config`` describes, of any kind, for its rounds (no attack);
    ``describe`` first prints its data, model and clients on stderr."""
    kind = scenario_kind(config.kind)
    world = kind.build_world(config)
    if describe:
        sizes = [len(c.train_indices) for c in world.clients]
        print(f"{config.kind}: {config.dataset} ({len(world.data.train)} train / {len(world.data.test)} test), "
              f"model {config.model}, {config.clients} clients ({config.partition}, "
              f"{min(sizes)}-{max(sizes)} samples each), {config.rounds} rounds, "
              f"E={config.local_epochs}, B={config.batch_size}", file=sys.stderr)
    simulation = kind.simulation(world, hooks or FLHooks())
    result = run_rounds(simulation, config.rounds, progress=progress, desc=f"{config.kind} rounds")
    result.model = getattr(simulation, "model", None)
    return result

