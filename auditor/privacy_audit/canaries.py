"""Gradient canaries in one client's local training, and their scores from what the server sees.

A Dirac canary is a record whose gradient is ``norm`` times one coordinate's unit vector (the
strongest record DP-SGD's guarantee covers: any gradient, clipped). Each included canary is
sampled into each local step with the loader's rate, like the client's records under Poisson
sampling. Under Opacus it enters as one more per-sample gradient row, so the defense's own
clipping and noise act on it; under plain SGD its gradient joins the batch mean. The server
scores canary ``i`` by how far the observed update moved its coordinate against that gradient,
summed over the rounds the canary client took part in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from flaudit.scenarios.fedavg import RoundRecord
from flaudit.scenarios.updates import ParamLayout

ROOM = 8  # canary coordinates come from the largest tensors holding ROOM x their count


@dataclass(frozen=True)
class CanarySet:
    """``coordinates[i]``: canary i's index in the flat update; ``parameter[i]`` and
    ``offset[i]``: the same place as (index among the model's parameters, flat offset in it)."""

    coordinates: np.ndarray
    parameter: np.ndarray
    offset: np.ndarray
    included: np.ndarray  # bool: canary i is in the canary client's data
    norm: float

    @classmethod
    def draw(cls, layout: ParamLayout, count: int, norm: float, seed: int) -> "CanarySet":
        """``count`` distinct parameter coordinates (at most every one), each included w.p. 1/2.
        They are drawn from the largest parameter tensors holding ``ROOM`` times ``count``
        entries: a large weight matrix's entries move least under the client's real data, so the
        canaries stand out from it (a bias or a shared conv kernel moves a lot)."""
        starts = np.cumsum([0] + [s.numel() for s in layout.shapes])
        spans = [(starts[i], starts[i + 1]) for i, p in enumerate(layout.is_parameter) if p]
        chosen = set()
        for span in sorted(spans, key=lambda s: s[0] - s[1]):
            if sum(b - a for a, b in chosen) >= ROOM * count:
                break
            chosen.add(span)
        flat = np.concatenate([np.arange(a, b) for a, b in spans if (a, b) in chosen])
        rng = np.random.default_rng(seed)
        coordinates = np.sort(rng.choice(flat, size=min(count, len(flat)), replace=False))
        parameter = np.searchsorted([b for _, b in spans], coordinates, side="right")
        offset = coordinates - np.array([a for a, _ in spans])[parameter]
        included = rng.random(len(coordinates)) < 0.5
        return cls(coordinates, parameter, offset, included, norm)

    def __len__(self) -> int:
        return len(self.coordinates)


class CanaryOptimizer:
    """Delegates to the client's (possibly DP) optimizer; before each step it adds the
    gradients of the included canaries this step samples."""

    def __init__(self, inner: Any, canaries: CanarySet, rate: float, batch_size: int | None,
                 generator: torch.Generator) -> None:
        self.inner = inner
        self.canaries = canaries
        self.rate = rate
        self.batch_size = batch_size
        self.generator = generator
        self.params = [p for group in inner.param_groups for p in group["params"]]
        self.members = np.flatnonzero(canaries.included)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> Any:
        draws = torch.rand(len(self.members), generator=self.generator).numpy()
        sampled = self.members[draws < self.rate]
        if len(sampled):
            per_sample = hasattr(self.inner, "grad_samples")  # Opacus' DPOptimizer
            (self._add_rows if per_sample else self._add_to_mean)(sampled)
        return self.inner.step()

    def _add_rows(self, sampled: np.ndarray) -> None:
        """One per-sample gradient row per sampled canary, for Opacus to clip and noise."""
        c = self.canaries
        for index, param in enumerate(self.params):
            rows = torch.zeros((len(sampled), param.numel()), dtype=param.dtype, device=param.device)
            hit = np.flatnonzero(c.parameter[sampled] == index)
            rows[hit, c.offset[sampled[hit]]] = c.norm
            rows = rows.view(len(sampled), *param.shape)
            grad_sample = param.grad_sample
            param.grad_sample = grad_sample + [rows] if isinstance(grad_sample, list) else torch.cat([grad_sample, rows])

    def _add_to_mean(self, sampled: np.ndarray) -> None:
        """Plain SGD minimises the batch mean: each canary adds norm / batch size."""
        c = self.canaries
        for index, param in enumerate(self.params):
            hit = sampled[c.parameter[sampled] == index]
            if len(hit):
                flat = param.grad.view(-1)
                flat[torch.as_tensor(c.offset[hit], device=flat.device)] += c.norm / self.batch_size


@dataclass
class CanaryTraining:
    """The TrainingWrapper that puts the canaries into client ``client_id``'s training; it must
    come after the defenses' wrappers so that it sees (and keeps) their optimizer."""

    canaries: CanarySet
    client_id: int
    seed: int
    steps: int = 0

    def wrap(self, client_id: int, round_index: int, model: nn.Module, optimizer: Any,
             loader: DataLoader) -> tuple[nn.Module, Any, DataLoader]:
        if client_id != self.client_id:
            return model, optimizer, loader
        generator = torch.Generator().manual_seed(self.seed + round_index)
        return model, CanaryOptimizer(optimizer, self.canaries, 1.0 / len(loader), loader.batch_size, generator), loader

    def unwrap(self, client_id: int, model: nn.Module) -> nn.Module:
        return model


@dataclass
class CanaryScores:
    """The observer: accumulates each canary's score from the server's view of every round."""

    canaries: CanarySet
    client_id: int
    scores: np.ndarray = field(init=False)
    rounds: int = 0
    observed: str = "upload"

    def __post_init__(self) -> None:
        self.scores = np.zeros(len(self.canaries))

    def __call__(self, record: RoundRecord) -> None:
        view = record.server_view
        if self.client_id not in view.participants:
            return
        if view.uploads is None:  # secure aggregation: only the aggregate is seen
            seen, self.observed = view.aggregate, "aggregate"
        else:
            seen = next(u.update for u in view.uploads if u.client_id == self.client_id)
        coordinates = torch.as_tensor(self.canaries.coordinates)
        self.scores -= seen.detach().cpu()[coordinates].double().numpy()  # gradient steps move against it
        self.rounds += 1
