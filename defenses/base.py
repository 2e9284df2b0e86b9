"""The Defense interface: a defense contributes hooks to the FedAvg round and reports figures.

A defense may wrap local training (DP-SGD), transform each upload (noise, compression) and/or
replace the aggregation protocol (secure aggregation). ``compose`` turns an ordered list of
defenses (e.g. ``dp`` then ``secagg``) into the simulation's ``FLHooks``.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar, Sequence

from torch import nn

from flaudit.core.component import Component
from flaudit.core.errors import ConfigError
from flaudit.scenarios.hooks import Aggregator, FLHooks, TrainingWrapper, UpdateTransform
from flaudit.scenarios.scenario import FLWorld


class Defense(Component, ABC):
    """Base of every registered defense; subclasses override the hooks they need."""

    kind = "defense"
    hides_individual_updates: ClassVar[bool] = False  # True: the server sees only the aggregate
    # True: the defense makes a DP claim (its figures hold ``epsilon_client_<id>`` and ``delta``),
    # which the auditor checks with canaries (flaudit.auditor.privacy_audit)
    claims_dp: ClassVar[bool] = False

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapts the initial global model to the defense (identity unless overridden)."""
        return model

    def training_wrapper(self, world: FLWorld) -> TrainingWrapper | None:
        return None

    def update_transform(self, world: FLWorld) -> UpdateTransform | None:
        return None

    def aggregator(self, world: FLWorld) -> Aggregator | None:
        return None

    def figures(self) -> dict[str, float]:
        """The defense's own numbers after a run (epsilon spent, dropouts survived, ...)."""
        return {}


def compose(defenses: Sequence[Defense], world: FLWorld) -> FLHooks:
    """Hooks for ``defenses`` applied in order; at most one may own the aggregation protocol."""
    hooks = FLHooks()
    owner = None
    for defense in defenses:
        hooks.model_preparers.append(defense.prepare_model)
        if (wrapper := defense.training_wrapper(world)) is not None:
            hooks.training_wrappers.append(wrapper)
        if (transform := defense.update_transform(world)) is not None:
            hooks.update_transforms.append(transform)
        if (aggregator := defense.aggregator(world)) is not None:
            if owner is not None:
                raise ConfigError(
                    f"defenses {owner!r} and {defense.name!r} both replace the aggregation "
                    "protocol; keep one of them"
                )
            owner = defense.name
            hooks.aggregator = aggregator
    return hooks
