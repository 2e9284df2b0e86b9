"""The ``secagg`` and ``secagg_plus`` defenses: every FedAvg round runs the secure-aggregation
protocol among the round's clients, and the server learns only the weighted sum.

Weighted FedAvg under secure aggregation: each client masks ``n_i * update_i`` (its sample count
``n_i`` is public), the server unmasks the sum and divides by ``sum(n_i)`` over the clients whose
inputs it received. A round that loses too many clients is aborted, as a deployment would: the
global model is left unchanged and the abort is counted.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from flaudit.defenses.base import Defense
from flaudit.defenses.registry import register_defense
from flaudit.defenses.secagg.dropouts import DropoutPlan, Stage
from flaudit.defenses.secagg.fixed_point import FixedPoint
from flaudit.defenses.secagg.graph import NeighbourGraph
from flaudit.defenses.secagg.protocol import (
    AggregationAborted,
    ClientInput,
    ProtocolConfig,
    SecAggResult,
    run_secure_aggregation,
)
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.hooks import AggregationOutcome
from flaudit.scenarios.scenario import FLWorld, derive_seed
from flaudit.scenarios.views import ClientUpload

DROPOUT_SEED_STREAM = 510  # derive_seed streams of the dropout draws and the SecAgg+ graph
GRAPH_SEED_STREAM = 511

DropoutStage = Literal["random", "advertise_keys", "share_keys", "masked_input", "unmasking"]


@dataclass(frozen=True)
class SecAggParams:
    """Quantization, threshold and simulated dropouts of secure aggregation."""

    clip_range: float = bounded(1.0, min=0.0, exclusive_min=True, doc="update entries are clipped to +-clip_range")
    quant_bits: int | None = bounded(
        None, min=2, max=32, doc="fixed-point bits per entry; unset: the most the clients' total samples allow"
    )
    threshold_fraction: float = bounded(
        0.6, min=0.0, max=1.0, exclusive_min=True, doc="t = ceil(fraction * share holders); fewer survivors abort"
    )
    dropout_rate: float = bounded(0.0, min=0.0, max=1.0, doc="probability that a client drops during a round")
    dropout_stage: DropoutStage = "random"
    seed: int = bounded(0, min=0, doc="seed of the dropout draws (and of the SecAgg+ graph)")


@dataclass(frozen=True)
class SecAggPlusParams(SecAggParams):
    neighbours: int = bounded(8, min=2, doc="even degree k of the random Harary graph")

    def __post_init__(self) -> None:
        if self.neighbours % 2:
            raise ConfigError(f"defense.secagg_plus.neighbours must be even, got {self.neighbours}")


@dataclass
class SecAggStats:
    rounds_aggregated: int = 0
    rounds_aborted: int = 0
    dropouts_survived: int = 0
    clipped_values: int = 0
    quantization_error_bound: float = 0.0
    quant_bits: int = 0

    def record(self, result: SecAggResult) -> None:
        self.rounds_aggregated += 1
        self.dropouts_survived += result.dropout_count
        self.clipped_values += result.clipped
        self.quantization_error_bound = max(self.quantization_error_bound, result.error_bound)


class SecureAggregation(Defense):
    """Runs the protocol each round on the graph ``neighbour_graph`` gives."""

    hides_individual_updates = True
    Params = SecAggParams

    def __init__(self, params: SecAggParams | None = None) -> None:
        super().__init__(params)
        self.stats = SecAggStats()

    @abstractmethod
    def neighbour_graph(self, clients: Sequence[int], round_index: int) -> NeighbourGraph:
        """Who masks with, and holds the shares of, whom in this round."""

    def threshold(self, graph: NeighbourGraph) -> int:
        holders = graph.degree + 1
        return min(holders, max(1, math.ceil(round(self.params.threshold_fraction * holders, 9))))

    def aggregator(self, world: FLWorld) -> "SecureAggregator":
        max_total_weight = sum(len(c.train_indices) for c in world.clients)
        fixed_point = self.fixed_point(max_total_weight)
        self.stats.quant_bits = fixed_point.quant_bits
        return SecureAggregator(self, fixed_point)

    def fixed_point(self, max_total_weight: int) -> FixedPoint:
        """The configured quantizer, checked against the largest sum a round can make."""
        p = self.params
        if p.quant_bits is None:
            return FixedPoint.widest(p.clip_range, max_total_weight)
        fixed_point = FixedPoint(p.clip_range, p.quant_bits)
        try:
            fixed_point.check_total_weight(max_total_weight, "the clients' total sample count")
        except ConfigError as exc:
            raise ConfigError(f"defense.{self.name}.{exc}") from None
        return fixed_point

    def figures(self) -> dict[str, float]:
        return {k: float(v) for k, v in dataclasses.asdict(self.stats).items()}


class SecureAggregator:
    """The Aggregator hook: one protocol run per round, seeded dropouts, aborts counted."""

    def __init__(self, defense: SecureAggregation, fixed_point: FixedPoint) -> None:
        self.defense = defense
        self.fixed_point = fixed_point

    def aggregate(self, round_index: int, uploads: Sequence[ClientUpload]) -> AggregationOutcome:
        params = self.defense.params
        ids = [u.client_id for u in uploads]
        graph = self.defense.neighbour_graph(ids, round_index)
        config = ProtocolConfig(self.fixed_point, self.defense.threshold(graph), graph, session=round_index)
        stage = None if params.dropout_stage == "random" else Stage.from_label(params.dropout_stage)
        plan = DropoutPlan.random(
            ids, params.dropout_rate, stage, derive_seed(params.seed, DROPOUT_SEED_STREAM, round_index)
        )
        inputs = [ClientInput(u.client_id, u.num_samples, u.update) for u in uploads]
        try:
            result = run_secure_aggregation(inputs, config, plan)
        except AggregationAborted as exc:
            self.defense.stats.rounds_aborted += 1
            warnings.warn(f"round {round_index}: {exc}; the global model is left unchanged", RuntimeWarning)
            transcript = {"aborted": str(exc), "dropouts": {s.label: plan.dropped_at(s, ids) for s in Stage}}
            return AggregationOutcome(torch.zeros_like(uploads[0].update), False, transcript)
        self.defense.stats.record(result)
        return AggregationOutcome(result.mean, individual_updates_visible=False, transcript=result.transcript())


@register_defense("secagg", "secure aggregation (Bonawitz et al. 2017): the server sees only the sum")
class SecAgg(SecureAggregation):
    """Every pair of clients masks and shares secrets: O(n^2) keys, any n - t dropouts survive."""

    def neighbour_graph(self, clients: Sequence[int], round_index: int) -> NeighbourGraph:
        return NeighbourGraph.complete(clients)


@register_defense("secagg_plus", "SecAgg+ (Bell et al. 2020): secure aggregation on a sparse random graph")
class SecAggPlus(SecureAggregation):
    """Masks and shares only along a random k-regular graph: O(n k) keys."""

    Params = SecAggPlusParams

    def neighbour_graph(self, clients: Sequence[int], round_index: int) -> NeighbourGraph:
        seed = derive_seed(self.params.seed, GRAPH_SEED_STREAM, round_index)
        return NeighbourGraph.harary(list(clients), self.params.neighbours, seed)
