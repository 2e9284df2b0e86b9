"""Fixed-point encoding of float updates in Z_2^32, the ring secure aggregation sums in.

Values are clipped to ``[-clip_range, clip_range]`` and put on the grid
``step = clip_range / (2**(quant_bits - 1) - 1)``. Weighted FedAvg needs ``sum_i n_i * x_i``, so
a client of weight ``n_i`` encodes ``round(n_i * clip(x_i) / step)``: rounding after weighting
keeps each client's error within half a step. The server decodes the sum as a signed 32-bit
integer, which is exact as long as ``total_weight * (2**(quant_bits - 1) - 1) <= 2**31 - 1``.
The numbers are computed in double precision by every implementation (kernels and reference),
so all of them produce the same integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flaudit.core.errors import ConfigError

INT32_MAX = 2**31 - 1
# Slack on top of half a step per client: the double-precision product weight * value / step
# is within 2**-22 of exact for |result| <= 2**31.
ROUNDING_SLACK = 2.0**-20
FLOAT32_RELATIVE = 2.0**-23  # the float32 result's own rounding, relative to |value| <= clip


@dataclass(frozen=True)
class FixedPoint:
    """The quantizer shared by the clients and the server for one aggregation."""

    clip_range: float
    quant_bits: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(f"clip_range must be a positive finite number, got {self.clip_range}")
        if isinstance(self.quant_bits, bool) or not isinstance(self.quant_bits, int) or not 2 <= self.quant_bits <= 32:
            raise ConfigError(f"quant_bits must be an integer in [2, 32], got {self.quant_bits!r}")

    @classmethod
    def widest(cls, clip_range: float, max_total_weight: int) -> "FixedPoint":
        """The finest grid whose sums of up to ``max_total_weight`` never wrap."""
        if not 1 <= max_total_weight <= INT32_MAX:
            raise ConfigError(f"the total weight must be in [1, 2**31 - 1], got {max_total_weight}")
        allowed_levels = INT32_MAX // max_total_weight  # 2**(bits - 1) - 1 must not exceed it
        return cls(clip_range, (allowed_levels + 1).bit_length())

    @property
    def levels(self) -> int:
        """Grid points on each side of zero: |quantized value| <= levels * weight."""
        return 2 ** (self.quant_bits - 1) - 1

    @property
    def step(self) -> float:
        return self.clip_range / self.levels

    @property
    def max_total_weight(self) -> int:
        return INT32_MAX // self.levels

    def scale(self, weight: int) -> float:
        """Multiplier from a clipped value to the grid for a client of ``weight``."""
        if weight < 0 or weight > self.max_total_weight:
            raise ConfigError(
                f"weight {weight} is outside [0, {self.max_total_weight}], the range "
                f"quant_bits={self.quant_bits} allows"
            )
        return weight * self.levels / self.clip_range

    def check_total_weight(self, total_weight: int, what: str = "the total weight") -> None:
        """Raises when sums of ``total_weight`` could wrap around 2**32 (decoding would fail)."""
        if total_weight > self.max_total_weight:
            widest = FixedPoint.widest(self.clip_range, total_weight).quant_bits
            raise ConfigError(
                f"quant_bits={self.quant_bits} is too many for {what} {total_weight}: sums "
                f"would wrap around 2**32; use quant_bits <= {widest}"
            )

    def mean_scale(self, total_weight: int) -> float:
        """Multiplier from the signed integer sum to the weighted mean."""
        return self.step / total_weight

    def error_bound(self, clients: int, total_weight: int) -> float:
        """Bound on |decoded weighted mean - exact weighted mean of the clipped values| per entry.

        Each client's integer is within (1/2 + 2**-20) steps of its exact weighted value, so the
        sum of ``clients`` of them is within ``clients * (1/2 + 2**-20) * step``; dividing by
        the total weight gives the mean's error, plus the rounding of the float32 result
        (|mean| <= clip_range).
        """
        quantization = clients * (0.5 + ROUNDING_SLACK) * self.step / total_weight
        return quantization + FLOAT32_RELATIVE * self.clip_range
