"""Client dropouts during a secure-aggregation round, at any of its four stages.

A client that drops at a stage sends nothing from that stage on. What the server must then do
depends on the stage: a client lost before sharing its keys is simply left out; one lost after
sharing but before its masked input has pairwise masks in the other inputs, which the server
removes by reconstructing its mask key from the survivors' shares; one lost after its masked
input is summed, and its self-mask seed is reconstructed the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np


class Stage(enum.IntEnum):
    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASKING = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "Stage":
        return cls[label.upper()]



@dataclass(frozen=True)
class DropoutPlan:
    """For each client that drops, the first stage it does not answer."""

    stage_of: Mapping[int, Stage] = field(default_factory=dict)

    @classmethod
    def random(cls, clients: Sequence[int], rate: float, stage: Stage | None, seed: int) -> "DropoutPlan":
        """Each client drops with probability ``rate``, at ``stage`` or (None) a uniformly
        random stage; deterministic given ``seed``."""
        rng = np.random.default_rng(seed)
        drops = rng.random(len(clients)) < rate
        stages = rng.integers(0, len(Stage), size=len(clients))
        return cls({
            c: (stage if stage is not None else Stage(int(s))) for c, d, s in zip(clients, drops, stages) if d
        })

    def answers(self, client: int, stage: Stage) -> bool:
        dropped_at = self.stage_of.get(client)
        return dropped_at is None or stage < dropped_at

    def dropped_at(self, stage: Stage, among: Sequence[int]) -> tuple[int, ...]:
        return tuple(sorted(c for c in among if self.stage_of.get(c) == stage))
