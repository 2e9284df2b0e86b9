"""Model updates as flat float32 vectors, and the layout that maps them back to tensors.

Defenses (noise, compression, secure aggregation) act on one flat vector; attacks read it per
tensor through the layout. The layout covers every floating-point entry of the state dict
(parameters and BatchNorm statistics alike), because that is what FedAvg uploads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flaudit.core.errors import InvalidUpdateError


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and parameter flags of a model's floating-point state, in order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    is_parameter: tuple[bool, ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        params = {name for name, _ in model.named_parameters()}
        entries = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
        return cls(
            names=tuple(k for k, _ in entries),
            shapes=tuple(v.shape for _, v in entries),
            is_parameter=tuple(k in params for k, _ in entries),
        )

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        state = model.state_dict()
        return torch.cat([state[name].detach().reshape(-1).float() for name in self.names])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check(vector)
        sizes = [s.numel() for s in self.shapes]
        return {
            name: part.view(shape)
            for name, shape, part in zip(self.names, self.shapes, vector.split(sizes))
        }

    def load(self, model: nn.Module, vector: torch.Tensor) -> None:
        """Writes a flat state vector into ``model`` in place."""
        tensors = self.unflatten(vector)
        state = model.state_dict()
        with torch.no_grad():
            for name, value in tensors.items():
                state[name].copy_(value)

    def check(self, vector: torch.Tensor, what: str = "update") -> torch.Tensor:
        """Rejects vectors of the wrong shape or with NaN/inf entries, naming the tensor hit."""
        if vector.dim() != 1 or vector.numel() != self.numel:
            raise InvalidUpdateError(
                f"{what} has shape {tuple(vector.shape)}; the model needs a flat vector of "
                f"{self.numel} values"
            )
        if not vector.is_floating_point():
            raise InvalidUpdateError(f"{what} has dtype {vector.dtype}; expected a float tensor")
        finite = torch.isfinite(vector)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            offsets = torch.tensor([0] + [s.numel() for s in self.shapes]).cumsum(0)
            tensor = self.names[int(torch.searchsorted(offsets, first, right=True)) - 1]
            count = int((~finite).sum())
            raise InvalidUpdateError(f"{what} has {count} non-finite values (first in {tensor!r})")
        return vector
