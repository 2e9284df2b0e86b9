"""Shamir t-out-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A secret s becomes the constant term of a random polynomial f of degree t - 1; holder x gets
(x, f(x)). Any t shares give s back by Lagrange interpolation at 0, and any t - 1 shares are
independent of s. The field (a Mersenne prime larger than 2^256) holds any 32-byte secret, so a
private key or a seed is shared whole.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Iterable, Mapping

from flaudit.core.errors import FlauditError

PRIME = 2**521 - 1
SHARE_BYTES = (PRIME.bit_length() + 7) // 8
SECRET_BYTES = 32


class SecretSharingError(FlauditError, ValueError):
    """Too few (or inconsistent) shares to reconstruct a secret."""


@dataclass(frozen=True)
class Share:
    x: int  # the holder's evaluation point, >= 1
    y: int

    def to_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, data: bytes) -> "Share":
        return cls(x, int.from_bytes(data, "big"))


def split(secret: bytes, points: Iterable[int], threshold: int) -> Mapping[int, Share]:
    """Shares of ``secret`` for the evaluation points ``points`` (distinct, >= 1); any
    ``threshold`` of them reconstruct it."""
    points = list(points)
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if len(set(points)) != len(points) or any(x < 1 or x >= PRIME for x in points):
        raise ValueError(f"evaluation points must be distinct and in [1, p), got {points}")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold must be in [1, {len(points)}] for {len(points)} holders, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: Share(x, _evaluate(coefficients, x)) for x in points}


def combine(shares: Iterable[Share], threshold: int) -> bytes:
    """The secret behind ``shares`` (any ``threshold`` of them with distinct points)."""
    distinct = {share.x: share for share in shares}
    if len(distinct) < threshold:
        raise SecretSharingError(f"{len(distinct)} distinct shares cannot reconstruct a {threshold}-out-of-n secret")
    chosen = list(distinct.values())[:threshold]
    weights = _lagrange_at_zero(tuple(share.x for share in chosen))
    secret = sum(share.y * w for share, w in zip(chosen, weights)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise SecretSharingError("the shares are inconsistent: they interpolate to no 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


@functools.lru_cache(maxsize=256)
def _lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    """The weights l_i(0) = prod_{j != i} x_j / (x_j - x_i); the server reconstructs many secrets
    from the same holders, so they are computed once per set of holders."""
    weights = []
    for i, xi in enumerate(points):
        numerator, denominator = 1, 1
        for j, xj in enumerate(points):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def _evaluate(coefficients: list[int], x: int) -> int:
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value
