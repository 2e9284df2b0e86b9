"""Compression of uploaded updates: top-k, random-k, b-bit quantization, signSGD.

Each scheme compresses one *segment* of the flat update at a time: the whole vector
(``scope = "global"``) or each tensor of the layout (``scope = "layer"``). The server receives
the decompressed (dense) vector, which is what the attacks see. With ``error_feedback`` each
client keeps what compression dropped and adds it to its next upload (EF-SGD, Stich et al. 2018;
Karimireddy et al. 2019), so nothing is lost for good; the residual lives across the rounds the
client joins. Payload sizes follow what a real encoder would send (values, indices or a seed,
scales), and the compression ratio figure is dense float32 bits over those.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch

from flaudit.defenses.base import Defense
from flaudit.defenses.registry import register_defense
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.scenario import FLWorld, derive_seed
from flaudit.scenarios.updates import ParamLayout

COMPRESSION_SEED_STREAM = 503  # derive_seed stream of random-k and stochastic rounding
FLOAT_BITS = 32


class Compressor(ABC):
    """One compression scheme, applied per segment."""

    @abstractmethod
    def compress(self, segment: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The segment as the server decodes it (same shape and dtype)."""

    @abstractmethod
    def payload_bits(self, numel: int) -> int:
        """Bits an encoder sends for a segment of ``numel`` entries."""

    def figures(self) -> dict[str, float]:
        return {}


def kept_count(ratio: float, numel: int) -> int:
    """Entries a sparsifier keeps of ``numel``: ceil(ratio * numel), at least one."""
    return min(numel, max(1, math.ceil(ratio * numel)))


def index_bits(kept: int, numel: int) -> int:
    """Bits that name ``kept`` of ``numel`` positions: a list of indices or a bitmap, the smaller."""
    return min(kept * max(1, math.ceil(math.log2(numel))), numel) if kept < numel else 0


class TopK(Compressor):
    """Keeps the k entries of largest magnitude (Aji & Heafield 2017; DGC, Lin et al. 2018)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def compress(self, segment: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kept = segment.abs().topk(kept_count(self.ratio, segment.numel()), sorted=False).indices
        out = torch.zeros_like(segment)
        out[kept] = segment[kept]
        return out

    def payload_bits(self, numel: int) -> int:
        kept = kept_count(self.ratio, numel)
        return kept * FLOAT_BITS + index_bits(kept, numel)


class RandomK(Compressor):
    """Keeps k uniformly drawn entries; ``rescale`` multiplies them by n/k so E[C(x)] = x.

    The indices follow from a seed both sides know, so only the values and the seed are sent.
    """

    def __init__(self, ratio: float, rescale: bool) -> None:
        self.ratio = ratio
        self.rescale = rescale

    def compress(self, segment: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        numel = segment.numel()
        count = kept_count(self.ratio, numel)
        kept = torch.randperm(numel, generator=generator, device=segment.device)[:count]
        out = torch.zeros_like(segment)
        out[kept] = segment[kept] * (numel / count if self.rescale else 1.0)
        return out

    def payload_bits(self, numel: int) -> int:
        return kept_count(self.ratio, numel) * FLOAT_BITS + FLOAT_BITS


class Quantizer(Compressor):
    """b-bit quantization of buckets of ``bucket_size`` consecutive entries of a segment (the
    whole segment when None), each bucket with its own scale as in QSGD. Records the worst-case
    per-entry error bound and the largest error actually made."""

    scale_bits: int  # per bucket

    def __init__(self, bits: int, bucket_size: int | None) -> None:
        self.bits = bits
        self.bucket_size = bucket_size
        self.error_bound = 0.0
        self.error_seen = 0.0

    def buckets(self, segment: torch.Tensor) -> list[torch.Tensor]:
        """The segment as rows of full buckets, plus one row for the shorter tail if any."""
        size = min(self.bucket_size or segment.numel(), segment.numel())
        full = segment.numel() // size * size
        rows = [segment[:full].view(-1, size)]
        return rows + [segment[full:].view(1, -1)] if full < segment.numel() else rows

    def compress(self, segment: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        decoded = []
        for rows in self.buckets(segment):
            out, bound = self.quantize_rows(rows, generator)
            self.error_bound = max(self.error_bound, bound)
            decoded.append(out.reshape(-1))
        decoded = torch.cat(decoded)
        self.error_seen = max(self.error_seen, float((decoded - segment).abs().max()))
        return decoded

    @abstractmethod
    def quantize_rows(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        """Each row quantized with its own scale, and the largest per-entry error bound."""

    def payload_bits(self, numel: int) -> int:
        buckets = math.ceil(numel / min(self.bucket_size or numel, numel))
        return numel * self.bits + buckets * self.scale_bits

    def figures(self) -> dict[str, float]:
        return {
            "bits": float(self.bits),
            "quantization_error_bound": self.error_bound,
            "quantization_error_max": self.error_seen,
        }


class UniformQuantizer(Quantizer):
    """Rounds to the nearest of 2^b evenly spaced levels spanning [min, max] of the bucket;
    the error is at most half a level spacing. Sends b bits per entry, min and max per bucket."""

    scale_bits = 2 * FLOAT_BITS

    def quantize_rows(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        low = rows.min(1, keepdim=True).values
        spacing = (rows.max(1, keepdim=True).values - low) / (2**self.bits - 1)
        steps = torch.round((rows - low) / torch.where(spacing > 0, spacing, 1.0))
        return low + steps * spacing, float(spacing.max()) / 2


class StochasticQuantizer(Quantizer):
    """QSGD (Alistarh et al. 2017): |x_i| / ||x||_2 rounded at random to one of s = 2^(b-1) - 1
    levels, up or down with the probabilities that make it unbiased. Sends a sign bit and b-1
    level bits per entry plus the norm per bucket. Error per entry < ||x|| / s; variance at most
    min(d / s^2, sqrt(d) / s) * ||x||^2 for buckets of d entries (``variance_bound``, relative)."""

    scale_bits = FLOAT_BITS

    def __init__(self, bits: int, bucket_size: int | None) -> None:
        super().__init__(bits, bucket_size)
        self.levels = 2 ** (bits - 1) - 1
        self.variance_bound = 0.0

    def quantize_rows(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, float]:
        width = rows.shape[1]
        self.variance_bound = max(
            self.variance_bound, min(width / self.levels**2, math.sqrt(width) / self.levels)
        )
        norm = rows.norm(dim=1, keepdim=True)
        scaled = rows.abs() / torch.where(norm > 0, norm, 1.0) * self.levels
        scaled.clamp_(max=self.levels)  # float slack of |x_i| / ||x|| above 1
        lower = scaled.floor()
        draw = torch.rand(rows.shape, generator=generator, device=rows.device)
        level = lower + (draw < scaled - lower).to(rows.dtype)
        return torch.sign(rows) * norm * level / self.levels, float(norm.max()) / self.levels

    def figures(self) -> dict[str, float]:
        return {**super().figures(), "variance_bound": self.variance_bound}


class ScaledSign(Compressor):
    """signSGD with a scale (EF-signSGD, Karimireddy et al. 2019): sign(x) * ||x||_1 / n.
    Zero entries go up (+scale) since one bit has no third state. Sends n bits plus the scale."""

    def compress(self, segment: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = segment.abs().mean()
        return torch.where(segment >= 0, scale, -scale)

    def payload_bits(self, numel: int) -> int:
        return numel + FLOAT_BITS


class CompressedUpload:
    """The UpdateTransform: compresses each segment, with optional per-client error feedback."""

    def __init__(
        self, compressor: Compressor, scope: str, error_feedback: bool, seed: int
    ) -> None:
        self.compressor = compressor
        self.scope = scope
        self.error_feedback = error_feedback
        self.seed = seed
        self.residuals: dict[int, torch.Tensor] = {}
        self.dense_bits = 0
        self.sent_bits = 0

    def segment_sizes(self, layout: ParamLayout) -> list[int]:
        return [s.numel() for s in layout.shapes] if self.scope == "layer" else [layout.numel]

    def transform(
        self, client_id: int, round_index: int, update: torch.Tensor, layout: ParamLayout
    ) -> torch.Tensor:
        corrected = update + self.residuals[client_id] if client_id in self.residuals else update
        generator = torch.Generator(device=update.device)
        generator.manual_seed(derive_seed(self.seed, COMPRESSION_SEED_STREAM, round_index, client_id))
        sizes = self.segment_sizes(layout)
        sent = torch.cat(
            [self.compressor.compress(part, generator) for part in corrected.split(sizes)]
        )
        if self.error_feedback:
            self.residuals[client_id] = corrected - sent
        self.dense_bits += FLOAT_BITS * layout.numel
        self.sent_bits += sum(self.compressor.payload_bits(size) for size in sizes)
        return sent

    def figures(self) -> dict[str, float]:
        if self.sent_bits == 0:
            return {}
        figures = {"compression_ratio": self.dense_bits / self.sent_bits, **self.compressor.figures()}
        if self.error_feedback and self.residuals:
            figures["residual_norm_max"] = max(float(r.norm()) for r in self.residuals.values())
        return figures


@dataclass(frozen=True)
class CompressionParams:
    """Keys every compression takes: per tensor or whole-vector segments, error feedback."""

    scope: Literal["layer", "global"] = "layer"
    error_feedback: bool = False


@dataclass(frozen=True)
class SparsifyParams(CompressionParams):
    """``[defense.topk]``; random-k adds ``rescale``."""

    ratio: float = bounded(0.1, min=0.0, max=1.0, exclusive_min=True, doc="share of entries kept")


@dataclass(frozen=True)
class RandomKParams(SparsifyParams):
    """``[defense.randk]``."""

    rescale: bool = True


@dataclass(frozen=True)
class QuantizeParams(CompressionParams):
    """``[defense.quantize]``."""

    mode: Literal["uniform", "stochastic"] = "uniform"
    bits: int = bounded(8, min=1, max=16)
    bucket_size: int | None = bounded(512, min=1, doc="entries sharing one scale; None: the segment")

    def __post_init__(self) -> None:
        if self.mode == "stochastic" and self.bits < 2:
            raise ConfigError(
                f"[defense.quantize] bits={self.bits}: stochastic quantization needs a sign bit "
                "and at least one level bit (bits >= 2)"
            )


class CompressionDefense(Defense):
    """A compression scheme as a defense; subclasses say which compressor their params build."""

    def __init__(self, params: CompressionParams | None = None) -> None:
        super().__init__(params)
        self.last_run: CompressedUpload | None = None

    @abstractmethod
    def compressor(self) -> Compressor: ...

    def update_transform(self, world: FLWorld) -> CompressedUpload:
        self.last_run = CompressedUpload(
            self.compressor(), self.params.scope, self.params.error_feedback, world.config.seed
        )
        return self.last_run

    def figures(self) -> dict[str, float]:
        """Compression ratio of the last run (dense float32 bits / sent bits), and the scheme's own."""
        return self.last_run.figures() if self.last_run is not None else {}


@register_defense("topk", "top-k magnitude sparsification (per layer or global), optional error feedback")
class TopKCompression(CompressionDefense):
    Params = SparsifyParams

    def compressor(self) -> Compressor:
        return TopK(self.params.ratio)


@register_defense("randk", "random-k sparsification (unbiased with rescale), optional error feedback")
class RandomKCompression(CompressionDefense):
    Params = RandomKParams

    def compressor(self) -> Compressor:
        return RandomK(self.params.ratio, self.params.rescale)


QUANTIZERS: dict[str, type[Quantizer]] = {"uniform": UniformQuantizer, "stochastic": StochasticQuantizer}


@register_defense("quantize", "uniform or stochastic (QSGD) b-bit quantization, optional error feedback")
class QuantizeCompression(CompressionDefense):
    Params = QuantizeParams

    def compressor(self) -> Compressor:
        return QUANTIZERS[self.params.mode](self.params.bits, self.params.bucket_size)


@register_defense("sign", "signSGD with a per-segment scale ||x||_1/n, optional error feedback")
class SignCompression(CompressionDefense):
    Params = CompressionParams

    def compressor(self) -> Compressor:
        return ScaledSign()
