"""Shared pieces of the binned linear-leakage attacks (Robbing the Fed, Scale-MIA).

A binned imprint layer has K rows that all read one linear query ``h = <query, z>`` of their
input z, each with its own threshold: bin k passes the samples with ``h`` above edge k
(``cumulative``, ReLU) or inside interval k (``sparse``, a hardtanh ramp across the interval).
When every bin receives the same upstream gradient per sample, the weight gradients of two
consecutive cumulative bins differ by exactly the samples between their edges, so the ratio of
weight to bias gradient differences is the input z of a sample alone in its interval, however
many local steps, clients and momentum terms were summed into the update (each sample's
coefficient cancels in the ratio).

This module holds what both attacks need: the query and edges at quantiles of it estimated
from the attacker's auxiliary data, the rows of the two variants, Robbing the Fed's block, the
update -> gradient estimate for known local training and the share of it one sample can make
(which lets an attacker count the samples in a bin from observations), the per-bin solve
(``bin_solve``), and the combinatorial bound (plus, for diagnosis only, the oracle count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from flaudit.auditor.ops.bin_solve import bin_solve
from flaudit.auditor.ops.imprint import activate, imprint_forward
from flaudit.core.errors import ConfigError
from flaudit.scenarios.views import TrainingSpec

EDGE_GRID = 16384  # points of the smoothed CDF that the quantile edges are read from
OUTER_REACH = 4.0  # outer edges sit this many data ranges beyond the auxiliary data
EMPTY_BIN_TOLERANCE = 1e-3  # |bias-gradient difference| below this share of the largest: empty


# ---- bin edges from auxiliary data ----------------------------------------------------------


def quantile_edges(values: torch.Tensor, bins: int) -> torch.Tensor:
    """``bins + 1`` ascending edges splitting the distribution of ``values`` (the query on the
    attacker's auxiliary data) into ``bins`` intervals of equal estimated mass.

    The distribution is a Gaussian kernel estimate of the CDF, not a Gaussian fit: with a few
    hundred auxiliary samples and as many bins, raw order statistics give bins whose true
    masses vary by ~70 %, and uneven bins collide more often. The bandwidth follows the
    CDF-optimal rate n^(-1/3) (Silverman's density rule n^(-1/5) oversmooths quantiles). The
    outer edges lie far beyond the data so that no target falls outside every interval.
    """
    v = values.detach().double().flatten().cpu()
    if v.numel() < 2 or not bool(torch.isfinite(v).all()):
        raise ConfigError(f"quantile_edges needs at least 2 finite auxiliary values, got {v.numel()}")
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    spread = float(v.max() - v.min())
    if spread == 0.0:
        raise ConfigError("the query is constant on the auxiliary data; it cannot separate samples")
    iqr = float(torch.quantile(v, 0.75) - torch.quantile(v, 0.25))
    sigma = min(float(v.std()), iqr / 1.349) if iqr > 0 else float(v.std())
    bandwidth = 0.9 * sigma * v.numel() ** (-1 / 3)
    grid = torch.linspace(float(v.min()) - 6 * bandwidth, float(v.max()) + 6 * bandwidth, EDGE_GRID, dtype=torch.float64)
    cdf = torch.zeros_like(grid)
    normal = torch.distributions.Normal(0.0, 1.0)
    for chunk in v.split(1024):
        cdf += normal.cdf((grid[:, None] - chunk[None, :]) / bandwidth).sum(1)
    cdf /= v.numel()
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    inner = _interpolate(levels, cdf, grid)
    reach = OUTER_REACH * spread
    outer_low = torch.tensor([float(v.min()) - reach], dtype=torch.float64)
    outer_high = torch.tensor([float(v.max()) + reach], dtype=torch.float64)
    return torch.cat([outer_low, inner, outer_high]).float()


def _interpolate(levels: torch.Tensor, cdf: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Inverse of the monotone table ``cdf(grid)`` at ``levels`` (linear between grid points)."""
    right = torch.searchsorted(cdf, levels).clamp(1, len(grid) - 1)
    left = right - 1
    span = (cdf[right] - cdf[left]).clamp(min=1e-300)
    return grid[left] + (levels - cdf[left]) / span * (grid[right] - grid[left])


def principal_direction(centred: torch.Tensor) -> torch.Tensor:
    """Unit vector of largest variance of centred samples [N, D] (sign: positive sum), the
    query of both attacks: the widest-spread direction gives the widest bins, the ones local
    training moves least relative to their width."""
    _, _, vh = torch.linalg.svd(centred.detach().double().cpu(), full_matrices=False)
    direction = vh[0]
    return (direction * torch.sign(direction.sum())).float().to(centred.device)


# ---- the two variants -----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How a binning variant maps edges to rows, and its per-bin gradients to intervals."""

    activation: str  # of auditor.ops.imprint.ACTIVATIONS
    rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # edges -> (scale, offset)
    interval_rows: Callable[[torch.Tensor], torch.Tensor]  # [K, ...] -> rows whose differences hold the intervals
    stride: int  # interval k is difference stride * k of those rows


def _cumulative_rows(edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin k: relu((h - edge_k) / w) for k < K, with w the median interval width (so that
    pre-activations count bin widths); edge K is unused: the top interval is open."""
    width = (edges[2:-1] - edges[1:-2]).median() if len(edges) > 3 else edges[-1] - edges[0]
    thresholds = edges[:-1]
    return torch.full_like(thresholds, 1 / float(width)), -thresholds / width


def _sparse_rows(edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin k: clamp((h - edge_k) / (edge_{k+1} - edge_k), 0, 1), a ramp across interval k."""
    scale = 1 / (edges[1:] - edges[:-1])
    return scale, -edges[:-1] * scale


def _pad_empty_row(rows: torch.Tensor) -> torch.Tensor:
    """Cumulative rows and an all-zero bin K after them: the top interval's difference."""
    return torch.cat([rows, torch.zeros_like(rows[:1])])


def _interleave_empty_rows(rows: torch.Tensor) -> torch.Tensor:
    """Sparse bins already are intervals: pair each with a zero row, so that the even
    differences are the bins themselves (exact, no cumulative sums)."""
    return torch.stack([rows, torch.zeros_like(rows)], 1).flatten(0, 1)


VARIANTS: dict[str, Variant] = {
    "cumulative": Variant("relu", _cumulative_rows, _pad_empty_row, 1),
    "sparse": Variant("hardtanh", _sparse_rows, _interleave_empty_rows, 2),
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConfigError(f"imprint variant must be one of {sorted(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


# ---- Robbing the Fed's block ------------------------------------------------------------------


class ImprintBlock(nn.Module):
    """The binned imprint block a malicious server puts in front of a model (Robbing the Fed).

    ``x -> x + readout(s)``: ``s`` is the standardised sum of the K bin activations, which the
    readout adds to the image along the query direction, a monotone remapping of the image's
    query value that keeps the backbone seeing (and learning from) the image. Because the bins
    are pooled by one sum, each sample's upstream gradient is the same for every bin, during
    every local step: the cancellation the attack needs holds exactly, not only at the first.

    Bin k reads the features ``z = gain * [x - centre, energy, 1]``; its
    pre-activation is ``scale_k * <query, z> / gain + offset_k + <tilt_k, z>``. The crafted part
    (query, scale, offset: buffers the clients do not train) fixes the bins; the trainable
    ``tilt`` [K, D+2] starts at zero, so its update is the per-bin gradient sum itself, stored
    with full float32 precision rather than as a small difference of large weights. Its last
    column is the bias gradient (feature 1), its second-to-last the samples' energy
    ``|x - centre|**2``: a lone sample's solve reproduces it, a mixture of samples does not
    (Jensen). ``gain`` sets how far local training moves the bins (the tilt's effect on them
    grows with gain**2) and how large the block's update is (it grows with gain).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        variant_name: str,
        query: torch.Tensor,
        edges: torch.Tensor,
        centre: torch.Tensor,
        readout_rms: float,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.variant_name = variant_name
        pixels = math.prod(self.image_shape)
        scale, offset = variant(variant_name).rows(edges.float())
        query_row = torch.zeros(1, pixels + 2)
        query_row[0, :pixels] = query.float().flatten()
        self.register_buffer("query", query_row, persistent=False)
        self.register_buffer("scale", scale.contiguous(), persistent=False)
        self.register_buffer("offset", offset.contiguous(), persistent=False)
        self.register_buffer("edges", edges.float(), persistent=False)
        self.register_buffer("centre", centre.float().flatten(), persistent=False)
        self.register_buffer("pooled_mean", torch.tensor(0.0), persistent=False)
        self.register_buffer("pooled_std", torch.tensor(1.0), persistent=False)
        self.gain = 1.0
        self.tilt = nn.Linear(pixels + 2, len(scale), bias=False)
        self.readout = nn.Linear(1, pixels, bias=False)
        with torch.no_grad():
            self.tilt.weight.zero_()
            self.readout.weight.copy_(readout_rms * math.sqrt(pixels) * query_row[0, :pixels, None])

    @property
    def bins(self) -> int:
        return self.scale.shape[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) - self.centre
        return self.gain * torch.cat([flat, self._energy(flat)[:, None], torch.ones_like(flat[:, :1])], 1)

    @staticmethod
    def _energy(flat: torch.Tensor) -> torch.Tensor:
        """``|x - centre|**2 / sqrt(D)``: scaled like the sum of sqrt(D) pixels, so that noise in
        an update (secure aggregation's quantization) perturbs it no more than the image's own
        mean square, which it is checked against."""
        return flat.square().sum(1) / math.sqrt(flat.shape[1])

    def images_from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Solved features ``[N, D+2]`` (gain divided out) -> (images [N, C, H, W], relative
        mismatch of each image's energy and its energy feature: ~1e-6 for a lone sample, the
        samples' spread for a mixture)."""
        pixels = self.centre.numel()
        flat = features[:, :pixels]
        energy = self._energy(flat)
        mismatch = (features[:, pixels] - energy).abs() / energy.clamp(min=1e-12)
        return (flat + self.centre).view(-1, *self.image_shape), mismatch

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The K bin activations ``[B, K]``: the fused kernel while the tilt is untouched (and
        no hook, e.g. Opacus, needs to see the tilt layer run), else crafted part + tilt."""
        z = self.features(x)
        query = self.query / self.gain
        act = variant(self.variant_name).activation
        if not (self.tilt._forward_hooks or self.tilt._forward_pre_hooks or self.tilt._backward_hooks):
            return imprint_forward(z, query, self.scale, self.offset, act, self.tilt.weight)
        pre = imprint_forward(z, query, self.scale, self.offset, "identity") + self.tilt(z)
        return activate(pre, act)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return (self.activations(x).sum(1, keepdim=True) - self.pooled_mean) / self.pooled_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.readout(self.pooled(x)).view_as(x)

    @torch.no_grad()
    def standardise(self, images: torch.Tensor) -> None:
        """Centres and scales the pooled activation on (auxiliary) images."""
        self.pooled_mean.zero_()
        self.pooled_std.fill_(1.0)
        pooled = self.pooled(images)
        self.pooled_mean.copy_(pooled.mean())
        self.pooled_std.copy_(pooled.std().clamp(min=1e-12))

    @torch.no_grad()
    def set_gain(self, gain: float) -> None:
        if not gain > 0 or not math.isfinite(gain):
            raise ConfigError(f"the imprint gain must be a positive finite number, got {gain}")
        self.gain = float(gain)

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the crafted rows (the server re-sends them every round)."""
        self.tilt.weight.zero_()

    def query_values(self, x: torch.Tensor) -> torch.Tensor:
        """``h = <query, [x, ...]>`` per sample, the value the edges split."""
        return self.features(x) @ (self.query[0] / self.gain)

    def bin_of(self, x: torch.Tensor) -> torch.Tensor:
        """The interval each sample falls in (ground truth when ``x`` are the targets)."""
        return (torch.searchsorted(self.edges, self.query_values(x).contiguous(), right=True) - 1).clamp(0, self.bins - 1)


# ---- update -> gradient estimate -------------------------------------------------------------


def local_steps(num_samples: int, training: TrainingSpec) -> int:
    return training.epochs * math.ceil(num_samples / training.batch_size)


def several_local_steps(num_samples: Sequence[int], training: TrainingSpec) -> bool:
    """Whether some client of the round takes more than one local step: then the crafted bins
    can move before the last of its samples is read."""
    return max(local_steps(n, training) for n in num_samples) > 1


def momentum_coefficients(steps: int, mu: float) -> torch.Tensor:
    """How often step t's gradient enters the update after ``steps`` SGD steps with momentum
    mu (heavy ball, torch's SGD): ``(1 - mu^(steps - t + 1)) / (1 - mu)``; 1 without momentum."""
    remaining = torch.arange(steps, 0, -1, dtype=torch.float64)
    return torch.ones_like(remaining) if mu == 0 else (1 - mu**remaining) / (1 - mu)


def update_coefficient(num_samples: Sequence[int], training: TrainingSpec) -> float:
    """How many gradients an aggregated update holds: the sum of a client's momentum
    coefficients over its local steps, weighted by the clients' sample counts."""
    mu = training.momentum
    total = sum(num_samples)
    if total <= 0:
        raise ConfigError("the round has no samples")
    coefficient = 0.0
    for n in num_samples:
        coefficient += n / total * float(momentum_coefficients(local_steps(n, training), mu).sum())
    return coefficient


def sample_weight_range(num_samples: Sequence[int], training: TrainingSpec) -> tuple[float, float]:
    """Bounds on how much of one sample's own gradient an aggregated gradient estimate holds.

    A client's loss is the mean over its batch, so a sample of gradient g adds g / |batch| to
    its step's gradient, and that step enters the client's update with its momentum coefficient;
    the aggregate weights the client by n / N and ``gradient_estimate`` divides by the round's
    ``update_coefficient``. The sample's position in each epoch is unknown (shuffled), hence a
    range: one value for a single local step (FedSGD), wider with more steps and momentum. This
    lets an attacker whose crafted layer gives every sample the same upstream gradient count the
    samples in a bin from its bias-gradient difference alone."""
    mu, B = training.momentum, training.batch_size
    total, coefficient = sum(num_samples), update_coefficient(num_samples, training)
    low, high = math.inf, 0.0
    for n in num_samples:
        per_epoch = math.ceil(n / B)
        steps = training.epochs * per_epoch
        momentum = momentum_coefficients(steps, mu)
        batch = torch.full((per_epoch,), float(B), dtype=torch.float64)
        batch[-1] = n - (per_epoch - 1) * B
        share = (momentum / batch.repeat(training.epochs)).view(training.epochs, per_epoch)
        scale = n / total / coefficient
        low = min(low, float(share.min(1).values.sum()) * scale)
        high = max(high, float(share.max(1).values.sum()) * scale)
    return low, high


def step_share_floor(num_samples: Sequence[int], training: TrainingSpec) -> float:
    """The least share of one sample's own gradient that one of its local steps puts in the
    gradient estimate (``sample_weight_range``'s units): the last step (momentum coefficient 1)
    of the largest batch, of the client that weighs least. A sample whose crafted bin moved
    between its steps leaves its share in several intervals, each holding at least this."""
    B, total = training.batch_size, sum(num_samples)
    coefficient = update_coefficient(num_samples, training)
    floor = math.inf
    for n in num_samples:
        steps = local_steps(n, training)
        least = float(momentum_coefficients(steps, training.momentum).min()) / min(B, n)
        floor = min(floor, least * n / total / coefficient)
    return floor


def gradient_estimate(update: torch.Tensor, num_samples: Sequence[int], training: TrainingSpec) -> torch.Tensor:
    """The average per-step gradient behind an aggregated update (exact for a constant
    gradient): ``-update / (lr * update_coefficient)``."""
    return update / (-training.lr * update_coefficient(num_samples, training))


# ---- the per-bin solve -------------------------------------------------------------------------


@dataclass(frozen=True)
class BinSolution:
    """Per interval k: the solved input ``inputs[k]`` (the sample's input when it is alone),
    the bias-gradient difference ``weight[k]`` (the sample's summed coefficient) and
    ``nonempty[k]``."""

    inputs: torch.Tensor  # [K, D]
    weight: torch.Tensor  # [K]
    nonempty: torch.Tensor  # bool [K]


def solve_bins(weight_grad: torch.Tensor, bias_grad: torch.Tensor, variant_name: str) -> BinSolution:
    """Solves every interval of one imprint layer from its gradients ``[K, D]`` and ``[K]`` with
    ``bin_solve``. An interval is non-empty when its bias-gradient difference exceeds
    ``EMPTY_BIN_TOLERANCE`` of the largest one (empty intervals differ by rounding only)."""
    chosen = variant(variant_name)
    gW = chosen.interval_rows(weight_grad.float()).contiguous()
    gb = chosen.interval_rows(bias_grad.float()).contiguous()
    step = chosen.stride
    differences = (gb[:-1] - gb[1:])[::step]
    eps = EMPTY_BIN_TOLERANCE * float(differences.abs().max()) if len(differences) else 0.0
    X, valid = bin_solve(gW[None], gb[None], eps)
    return BinSolution(X[0, ::step], differences, valid[0, ::step])


DRIFT_REACH = 3  # intervals above a bin searched for an empty one to read the readout's drift from


def subtract_readout_drift(
    weight_grad: torch.Tensor, bias_grad: torch.Tensor, widths: torch.Tensor, empty: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative bins' gradients ``[K, D]``, ``[K]`` with what the readout's own training adds
    to their differences taken out, from observations.

    While a client trains, the readout column of bin k moves by ``-lr * sum (p - y) * a_k``;
    consecutive bins' activations differ by their interval's width for every sample above
    both, so their columns drift apart in proportion to that width, and every later sample
    above the interval adds its latent to the interval's difference with that drift as its
    coefficient. That contamination changes only where samples sit: an interval that holds no
    sample (``empty``, bool [K]) shows it alone, and the next interval below, holding one
    sample, carries the same contamination times the ratio of the two intervals' ``widths``
    (its crafted pre-activation width). Each interval with an empty one within
    ``DRIFT_REACH`` above it has the nearest such one's difference, so scaled, subtracted; the
    others are left as they are. Returns the cumulative gradients of the corrected differences."""
    W = torch.cat([weight_grad.double(), torch.zeros_like(weight_grad[:1], dtype=torch.float64)])
    b = torch.cat([bias_grad.double(), torch.zeros(1, dtype=torch.float64, device=bias_grad.device)])
    dW, db = W[:-1] - W[1:], b[:-1] - b[1:]
    K = len(db)
    found = torch.zeros(K, dtype=torch.bool, device=db.device)
    cW, cb = dW.clone(), db.clone()
    widths = widths.double()
    for m in range(1, DRIFT_REACH + 1):
        here = torch.arange(K - m, device=db.device)
        use = ~found[here] & empty[here + m]
        rows = here[use]
        ratio = widths[rows] / widths[rows + m]
        cW[rows] = dW[rows] - ratio[:, None] * dW[rows + m]
        cb[rows] = db[rows] - ratio * db[rows + m]
        found[rows] = True
    weight = cW.flip(0).cumsum(0).flip(0)
    bias = cb.flip(0).cumsum(0).flip(0)
    return weight.to(weight_grad.dtype).contiguous(), bias.to(bias_grad.dtype).contiguous()


# ---- what a binning can do at best -------------------------------------------------------------


def isolation_bound(n: int, bins: int) -> float:
    """About how many of n samples spread over ``bins`` equal bins are alone in theirs."""
    return math.exp(-(n - 1) / bins)


def isolated_fraction(bin_index: torch.Tensor) -> float:
    """Share of samples alone in their bin, given each sample's bin (ground truth: an oracle)."""
    if bin_index.numel() == 0:
        return 0.0
    _, inverse, counts = torch.unique(bin_index, return_inverse=True, return_counts=True)
    return float((counts[inverse] == 1).double().mean())
