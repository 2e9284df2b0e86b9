"""Who masks with, and holds the secret shares of, whom.

Bonawitz et al. (2017) use the complete graph: every pair of clients shares a mask and every
client holds a share of every other's secrets, O(n^2) work in all. SecAgg+ (Bell et al. 2020)
uses a sparse random graph of degree k = O(log n): a Harary graph H(k, n) on the clients in a
random order (each linked to the k/2 nearest on either side of a ring), so that masks and
shares cost O(n k) and a client's privacy rests on its k neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from flaudit.core.errors import ConfigError


@dataclass(frozen=True)
class NeighbourGraph:
    """An undirected graph on client ids."""

    neighbours: Mapping[int, frozenset[int]]

    @classmethod
    def complete(cls, clients: Sequence[int]) -> "NeighbourGraph":
        everyone = frozenset(clients)
        return cls({c: everyone - {c} for c in clients})

    @classmethod
    def harary(cls, clients: Sequence[int], degree: int, seed: int) -> "NeighbourGraph":
        """H(degree, n) over a seeded random ordering; the complete graph when degree >= n - 1."""
        if degree < 2 or degree % 2:
            raise ConfigError(f"the SecAgg+ neighbour count must be an even number >= 2, got {degree}")
        n = len(clients)
        if degree >= n - 1:
            return cls.complete(clients)
        ring = [clients[i] for i in np.random.default_rng(seed).permutation(n)]
        half = degree // 2
        return cls({
            ring[i]: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d != 0) for i in range(n)
        })

    def of(self, client: int) -> frozenset[int]:
        return self.neighbours[client]

    def holders(self, client: int) -> frozenset[int]:
        """The clients that hold shares of ``client``'s secrets: its neighbours and itself."""
        return self.neighbours[client] | {client}

    @property
    def degree(self) -> int:
        return max((len(n) for n in self.neighbours.values()), default=0)

    def as_lists(self) -> dict[int, tuple[int, ...]]:
        return {c: tuple(sorted(n)) for c, n in sorted(self.neighbours.items())}
