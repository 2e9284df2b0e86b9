"""Scenario kinds: which FL protocol a scenario runs (``[scenario] kind = "fedmd"``).

A kind builds its world from the ``ScenarioConfig`` and runs it round by round; each round
yields a record carrying ``test_accuracy``, ``ground_truth`` (scoring only) and the views the
kind produces. The auditor reads ``views`` to decide which threat models (and so which
attacks) apply: update-sharing FedAvg shows the server updates, the FedMD family logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from flaudit.core.errors import ConfigError
from flaudit.scenarios.fedavg import FedAvgSimulation
from flaudit.scenarios.hooks import FLHooks
from flaudit.core.registry import Registry
from flaudit.scenarios.scenario import FLWorld, ScenarioConfig, build_world
from flaudit.scenarios.views import LogitView, PeerView, ServerView

if TYPE_CHECKING:  # the logit kinds import this module to register themselves
    from flaudit.scenarios.logit_sharing.base import LogitSharingSimulation


class Simulation(Protocol):
    def run_round(self, round_index: int) -> Any: ...


def _accepts_every_defense(hooks: FLHooks) -> None:
    """An update-sharing round (FedAvg) has a slot for every hook a defense composes."""
    return None


@dataclass(frozen=True)
class ScenarioKind:
    build_world: Callable[[ScenarioConfig], FLWorld]
    simulation: Callable[[FLWorld, FLHooks], Simulation]
    views: frozenset[type]  # the view types its rounds produce
    # Why composed defenses cannot act on its rounds (None when they can): the auditor marks
    # such a defense column not applicable instead of running it into the simulation's error.
    rejects: Callable[[FLHooks], str | None] = _accepts_every_defense


SCENARIO_KINDS: Registry[ScenarioKind] = Registry("scenario kind")


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


def register_logit_kind(name: str, summary: str, build: Callable[[ScenarioConfig], FLWorld],
                        simulation: type[LogitSharingSimulation]) -> None:
    SCENARIO_KINDS.register(name, summary)(ScenarioKind(build, simulation, frozenset({LogitView}), simulation.rejects))


# Logit-sharing kinds (each import registers its kind):
from flaudit.scenarios.logit_sharing import dsfl, fedgems, fedmd  # noqa: E402,F401
