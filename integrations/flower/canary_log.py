"""The canary's batch recorder: a consenting client's train loop calls ``log_batch(x, y)`` for
each batch it trains on; the call records only while a ``CanaryMod`` has switched recording on
for this client's training round, and is a no-op otherwise (every other client, evaluation).

Module state, not a context variable: Flower's simulation pickles the ClientApp, and a
ContextVar cannot be pickled; each simulated client trains in its own worker, one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BatchRecorder:
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    batch: list[np.ndarray] = field(default_factory=list)

    def log(self, images, labels) -> None:
        x = _numpy(images).astype(np.float32)
        y = _numpy(labels).astype(np.int64).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"log_batch: {len(x)} images but {len(y)} labels")
        self.batch.append(np.full(len(y), len(self.images), dtype=np.int64))
        self.images.append(x)
        self.labels.append(y)

    @property
    def empty(self) -> bool:
        return not self.images

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.images), np.concatenate(self.labels), np.concatenate(self.batch)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


_active: BatchRecorder | None = None


def log_batch(images, labels) -> None:
    """Records one training batch (images in [0, 1], integer labels) if this client is the
    canary and its round is being recorded; otherwise does nothing."""
    if _active is not None:
        _active.log(images, labels)


def start_recording() -> BatchRecorder:
    global _active
    _active = BatchRecorder()
    return _active


def stop_recording() -> None:
    global _active
    _active = None
