"""One in-process memo for the models an attack trains on data it holds (GGL's generator, the
peer's prior): the rounds, seeds and defense columns of one audit that hand the attack the same
data share one training instead of repeating it."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Hashable, TypeVar

import torch

from flaudit.scenarios.datasets import ImageDataset

Model = TypeVar("Model")
_TRAINED: dict[tuple, Any] = {}


def data_digest(data: ImageDataset) -> str:
    """A fingerprint of a dataset's images and labels (the cache key's data part)."""
    h = hashlib.sha256()
    for tensor in (data.images, data.labels):
        h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trained_once(
    train: Callable[[ImageDataset, Any, torch.device], Model], data: ImageDataset, spec: Hashable, device: torch.device
) -> Model:
    """``train(data, spec, device)``, once per (training function, data, spec, device)."""
    key = (train.__module__, train.__qualname__, data_digest(data), spec, str(device))
    if key not in _TRAINED:
        _TRAINED[key] = train(data, spec, device)
    return _TRAINED[key]
