"""Scale-MIA (Shi et al., NDSS 2025): a malicious server that may set parameters but not the
architecture turns the model's first latent-space linear layer into a binned imprint and reads
a whole aggregated batch out of it, through secure aggregation.

Phase 1 (the server hook, on the attacker's auxiliary data, once the architecture is known):
train an autoencoder whose encoder is exactly the model's feature extractor; every round, load
the encoder into the model, set the latent linear layer's rows to one query of the latent with
thresholds at quantiles of the auxiliary latents (``imprint.quantile_edges``), and give the
next layer identical columns (with a small logit spread, so the softmax stays soft) so that
every bin receives the same upstream gradient per sample. Phase 1 reads only the auxiliary
data and the round-0 model: its autoencoder is a preparation (``toolkit.preparation``), trained
once for every defense column and attack row of a (scenario, seed) with the same autoencoder
parameters; the crafting from it takes a fraction of a second.
Phase 2 (``reconstruct``, aggregate only): update -> gradient estimate -> ``bin_solve`` per
interval -> the latents of the intervals that hold one sample, decided from observations only:
the interval's bias-gradient difference counts its samples (the crafted readout gives every
sample the same upstream gradient), and a kept latent (its negative entries, impossible after
the encoder's ReLU, set to 0) must reproduce itself through decoder and encoder about as well as
held-out auxiliary latents do (with several local steps, as a simulated client's lone solves
do: ``lone_solve_errors``) -> decoder.

Exact for one local step per client (FedSGD). With several local steps the clients' training
moves the crafted bins between steps (almost all of it through the imprint rows' own update,
whose effect grows with the latent's squared norm), so a sample leaves its share in several
intervals and samples of different steps share intervals; and the readout's own update makes
its columns differ, so every later sample above an interval adds its latent to the interval's
difference. Four measures answer it: the encoder's ReLU scale invariance, balanced by one
simulated step on auxiliary data (``balanced_scales``: the latent shrinks and the bins move
many times less at the same function; a convolution's drift moves a batch's latents together,
so it weighs less than the rows'); ``subtract_readout_drift`` (the contamination is
proportional to an interval's width and changes only where samples sit, so an empty
neighbour shows it); ``merge_visits`` (a sample's visits solve to the same latent and
their shares add up to one sample's); and a selection threshold measured on a simulated client
of the attacker's own held-out images (``lone_solve_errors``: a lone visit's solve, read under a
drifting encoder and with what is left of the readout's drift, reprojects worse than a clean
latent, by as much as the round's training makes it). With the readout's drift read off, the
crafting can trade it for slower bins (smaller ``logit_spread`` and ``bin_slope``). What is left
at many steps of small batches (E=5, B=8: 20 steps with momentum) is the second order of both:
visits so contaminated that they decode to no image.
The trade depends on the clients' labels: a later sample adds its latent to the readout's
contamination through the softmax's coupling of the two samples' classes, which cancels on
average across classes and not within one, so clients holding few classes need a larger
``logit_spread`` than IID ones (the bins' movement grows with ``logit_spread / bin_slope**2``
and the contamination with its inverse). The attacker knows the training but not the labels, so
the server tries both (``ScaleMiaServer``: round 0 at the IID optimum ``logit_spread``, round 1
at ``trial_spread``) and sends whichever gave more clean solves (``clean_solve_count``);
``examples/label-skew`` measures the choice against each spread fixed.

The same trade bounds the attack's reach in local steps: per step and per sample the bins move
by about ``lr / (1 - momentum) * upstream / batch`` against a bin's width, and the readout's
columns drift by about ``lr / (1 - momentum) * activation`` against the upstream; the two
ratios' product grows with ``(lr / (1 - momentum))**2 * K / batch`` whatever the crafting's
scales. Where it is large and clients hold hundreds of images the bins cross (a sample's active
rows stop being a prefix, so its latent enters the differences of intervals it never visited),
the readout's training leaves the lone solves off and the encoder's piles samples at the bins'
ends: 2 IID clients of 400
photo_patches, one epoch of B=16 (25 steps), SGD lr 0.05 with momentum 0.9 leave 230
identifiable of 2400 over 3 seeds (null 125, isolation bound 504), label-skewed ones 73 (null
56); at lr 0.01 with momentum 0.9, 407 (null 127); with 100 images per client at lr 0.05, 323 of
600 (null 43). ``examples/scale-mia-reach`` has the whole table, its command, and a replay
that measures what each trained part costs.

Supported models (``MODEL_ADAPTERS``): ``cnn`` (encoder conv-conv, imprint = the 512-unit
layer), ``mlp`` (the hidden layer reads the pixels: identity encoder, exact pixels),
``resnet18`` (no wide latent layer: the pooled latent feeds the output layer, whose rows are
the classes, so the attack recovers the samples alone in their class, see ``ClassRowLayer``).
"""

from __future__ import annotations

import copy
import math
import time
import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel, NullContext
from flaudit.auditor.attacks.toolkit.imprint import (
    gradient_estimate,
    isolation_bound,
    principal_direction,
    quantile_edges,
    sample_weight_range,
    several_local_steps,
    solve_bins,
    step_share_floor,
    subtract_readout_drift,
    variant,
)
from flaudit.auditor.attacks.toolkit.preparation import Codec, Preparation, State, model_digest, tensor_digest
from flaudit.auditor.ops.bin_solve import bin_solve
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.client import make_loader, train_client
from flaudit.scenarios.models import FeatureClassifier
from flaudit.scenarios.views import ServerView
from flaudit.core.progress import step_bar


@dataclass(frozen=True)
class ScaleMiaParams:
    ae_epochs: int = bounded(150, min=0, doc="autoencoder training epochs over the (augmented) auxiliary data")
    ae_batch_size: int = bounded(32, min=1)
    ae_lr: float = bounded(3e-3, min=0.0, exclusive_min=True, doc="peak of the one-cycle learning rate")
    decoder_width: int = bounded(64, min=1, doc="channels of the decoder's upsampling stages")
    holdout_fraction: float = bounded(
        0.1, min=0.0, max=0.5, exclusive_min=True, doc="auxiliary share kept out of training to calibrate the bin selection"
    )
    logit_spread: float = bounded(
        0.01, min=0.0, exclusive_min=True,
        doc="largest change the bins make to a logit on auxiliary data (keeps the softmax soft); the crafting of round 0 "
        "and, without a trial spread, of every round",
    )
    trial_spread: float = bounded(
        0.05, min=0.0,
        doc="the logit spread round 1 is crafted with; from round 2 on the server sends whichever of the two gave "
        "more clean solves (clients that hold few classes are read better at a larger one: examples/label-skew); "
        "0: no trial",
    )
    bin_slope: float = bounded(
        0.005, min=0.0, exclusive_min=True,
        doc="bin pre-activation per std of the query: small crafted rows keep their update above float32 rounding",
    )
    unit_tolerance: float = bounded(
        0.3, min=0.0, max=0.9,
        doc="relative slack on the bias-gradient difference one sample can make (softmax deviation, drift)",
    )
    selection_quantile: float = bounded(
        0.99, min=0.5, max=1.0,
        doc="quantile of held-out latents' reprojection error a kept solve may reach (with several local steps: of a "
        "simulated client's lone solves, when larger)",
    )
    selection_slack: float = bounded(1.5, min=1.0, doc="factor on that quantile")
    encoder_drift_weight: float = bounded(
        0.2, min=0.0, max=1.0, exclusive_min=True,
        doc="weight of the convolutions' drift against the imprint rows' in the encoder's balance: a convolution moves "
        "a batch's latents together (they stay apart), the rows' own update moves each bin by the samples in it",
    )
    merge_quantile: float = bounded(
        0.05, min=0.0, max=0.5,
        doc="solves closer than this quantile of the auxiliary latents' nearest-neighbour distance are one sample's "
        "visits of several bins (its bin moved while the client trained); 0 merges nothing",
    )


# ---- model adapters: where the encoder, the imprint layer and the next layer are -------------


@dataclass
class LatentLayers:
    """A model seen by Scale-MIA: ``encoder(x)`` gives the flat latent that the linear
    ``imprint`` layer reads; ``readout`` is the linear layer after its ReLU (None when the
    imprint layer is the model's output layer)."""

    encoder: nn.Module
    imprint: nn.Linear
    imprint_name: str  # state-dict prefix of the imprint layer
    readout: nn.Linear | None
    latent_shape: tuple[int, ...]  # the encoder's output before flattening


@dataclass(frozen=True)
class ModelAdapter:
    matches: Callable[[nn.Module], bool]
    layers: Callable[[nn.Module, tuple[int, int, int]], LatentLayers]
    decoder: Callable[[tuple[int, ...], tuple[int, int, int], int], nn.Module]
    trains_autoencoder: bool
    leakage: str  # of LEAKAGE_LAYERS


def _is_cnn(model: nn.Module) -> bool:
    return (
        isinstance(model, FeatureClassifier)
        and isinstance(model.features[-1], nn.Flatten)
        and any(isinstance(m, nn.Conv2d) for m in model.features)
        and isinstance(model.classifier, nn.Sequential)
        and len(model.classifier) == 3
        and isinstance(model.classifier[0], nn.Linear)
        and isinstance(model.classifier[1], nn.ReLU)
        and isinstance(model.classifier[2], nn.Linear)
    )


def _cnn_layers(model: nn.Module, shape: tuple[int, int, int]) -> LatentLayers:
    with torch.no_grad():
        latent = model.features[:-1](torch.zeros(1, *shape, device=_device(model))).shape[1:]
    return LatentLayers(model.features, model.classifier[0], "classifier.0", model.classifier[2], tuple(latent))


def _is_mlp(model: nn.Module) -> bool:
    f = getattr(model, "features", None)
    return (
        isinstance(model, FeatureClassifier)
        and len(f) == 3
        and isinstance(f[0], nn.Flatten)
        and isinstance(f[1], nn.Linear)
        and isinstance(f[2], nn.ReLU)
        and isinstance(model.classifier, nn.Linear)
    )


def _mlp_layers(model: nn.Module, shape: tuple[int, int, int]) -> LatentLayers:
    return LatentLayers(model.features[0], model.features[1], "features.1", model.classifier, tuple(shape))


def _resnet_layers(model: nn.Module, shape: tuple[int, int, int]) -> LatentLayers:
    trunk = nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4, model.avgpool
    )
    return LatentLayers(nn.Sequential(trunk, nn.Flatten()), model.fc, "fc", None, (model.fc.in_features, 1, 1))


def conv_decoder(latent_shape: tuple[int, ...], image_shape: tuple[int, int, int], width: int) -> nn.Module:
    """Upsampling mirror of a conv feature extractor: per factor 2 of resolution, a 3x3
    convolution to 4x the channels and a pixel shuffle (sub-pixel convolution); a sigmoid to
    [0, 1] at the end. Cheap enough to train to ~30 dB in minutes on a CPU."""
    channels, height = latent_shape[0], latent_shape[1]
    steps = round(math.log2(image_shape[1] / height)) if height else -1
    if steps < 0 or height * 2**steps != image_shape[1]:
        raise ConfigError(f"scale_mia: cannot decode a {tuple(latent_shape)} latent to {image_shape} images")
    layers: list[nn.Module] = [nn.Unflatten(1, tuple(latent_shape))]
    for _ in range(steps - 1):
        layers += [nn.Conv2d(channels, 4 * width, 3, padding=1), nn.PixelShuffle(2), nn.ReLU()]
        channels = width
    if steps == 0:
        layers += [nn.Conv2d(channels, image_shape[0], 3, padding=1)]
    else:
        layers += [nn.Conv2d(channels, 4 * image_shape[0], 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers, nn.Sigmoid())


def identity_decoder(latent_shape: tuple[int, ...], image_shape: tuple[int, int, int], width: int) -> nn.Module:
    return nn.Unflatten(1, tuple(image_shape))


MODEL_ADAPTERS: dict[str, ModelAdapter] = {
    "cnn": ModelAdapter(_is_cnn, _cnn_layers, conv_decoder, True, "binned"),
    "mlp": ModelAdapter(_is_mlp, _mlp_layers, identity_decoder, False, "binned"),
    "resnet18": ModelAdapter(lambda m: isinstance(m, ResNet), _resnet_layers, conv_decoder, True, "class_rows"),
}


def adapter_for(model: nn.Module) -> ModelAdapter:
    for adapter in MODEL_ADAPTERS.values():
        if adapter.matches(model):
            return adapter
    raise ConfigError(
        f"scale_mia supports the models {sorted(MODEL_ADAPTERS)}; got a {type(model).__name__} it cannot map"
    )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- phase 1: the autoencoder ----------------------------------------------------------------


def dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random flip (and, for square images, rotation) per batch: eight times the auxiliary
    data with the same statistics."""
    square = images.shape[-1] == images.shape[-2]
    out = torch.rot90(images, int(torch.randint(4, (1,), generator=generator)), (2, 3)) if square else images
    return out.flip(3) if bool(torch.randint(2, (1,), generator=generator)) else out


def dihedral_copies(images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` images: ``images``, then their flips and (square images) rotations in turn."""
    square = images.shape[-1] == images.shape[-2]
    turns = [torch.rot90(images, k, (2, 3)) for k in range(4 if square else 1)]
    versions = torch.cat([v for turned in turns for v in (turned, turned.flip(3))])
    return versions.repeat(-(-count // len(versions)), 1, 1, 1)[:count]


def held_out_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The auxiliary indices kept out of the autoencoder's training (they calibrate the
    selection) and the rest."""
    holdout = max(1, round(fraction * count))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:holdout], order[holdout:]


class AutoEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_autoencoder(
    autoencoder: AutoEncoder, images: torch.Tensor, params: ScaleMiaParams, seed: int
) -> AutoEncoder:
    """MSE training with Adam on flipped/rotated auxiliary images (one-cycle learning rate)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=params.ae_lr)
    batches = math.ceil(len(images) / params.ae_batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, params.ae_lr, total_steps=max(1, params.ae_epochs * batches))
    device = _device(autoencoder)
    autoencoder.train()
    for _ in step_bar(range(params.ae_epochs), desc="scale_mia autoencoder", unit="epoch"):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), params.ae_batch_size):
            batch = dihedral(images[order[start : start + params.ae_batch_size]], generator).to(device)
            loss = F.mse_loss(autoencoder(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    autoencoder.eval()
    return autoencoder


@torch.no_grad()
def merge_distance(latents: torch.Tensor, quantile: float) -> float:
    """The ``quantile`` of the auxiliary latents' relative distance to their nearest other
    latent: two distinct images' latents are rarely closer, one sample's visits of several
    intervals (the same latent, give or take the encoder's drift) usually are."""
    distances = torch.cdist(latents.double(), latents.double())
    distances.fill_diagonal_(math.inf)
    nearest = distances.min(1).values / latents.double().norm(dim=1).clamp(min=1e-30)
    return float(torch.quantile(nearest.cpu(), quantile)) if quantile > 0 else 0.0


@torch.no_grad()
def reprojection_error(encoder: nn.Module, decoder: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """``|enc(dec(z)) - z| / |z|`` per latent: small for latents of real images, large for
    mixtures of several (the encoder's non-linear latent set is not convex)."""
    again = encoder(decoder(latents)).flatten(1)
    return (again - latents).norm(dim=1) / latents.norm(dim=1).clamp(min=1e-12)


# ---- the two ways a latent linear layer leaks ---------------------------------------------------


@dataclass
class CraftedLayers:
    """Parameters the server writes into the latent linear layer (and the layer after it)."""

    imprint_weight: torch.Tensor
    imprint_bias: torch.Tensor
    readout_weight: torch.Tensor | None = None
    readout_bias: torch.Tensor | None = None
    upstream: float = 1.0  # every sample's upstream gradient at the bins, times its batch size


@dataclass
class Solved:
    """Candidate latents of one round and how much of a sample each holds, from observations."""

    latents: torch.Tensor  # [M, D]
    where: torch.Tensor  # [M]: each candidate's interval (or class)
    shares: torch.Tensor  # [M]: the candidate's bias-gradient difference, in the units of ``one``
    one: tuple[float, float]  # the shares one sample makes (known local training, with slack)
    nonempty: int  # intervals (or classes) that hold any sample
    intervals: int  # K
    moves: bool  # whether a sample can leave its share in several candidates (bins move while clients train)

    @property
    def one_sample(self) -> torch.Tensor:
        """Candidates that hold one sample's share on their own."""
        return (self.shares >= self.one[0]) & (self.shares <= self.one[1])


def merge_visits(latents: torch.Tensor, shares: torch.Tensor, one: tuple[float, float], distance: float) -> torch.Tensor:
    """One latent per sample the candidates hold. While a client trains several steps its
    crafted bins move, so a sample can leave parts of its share in several intervals, each
    solving to its own latent (encoder drift aside): candidates within ``distance`` (relative)
    of the one with the largest share are its visits; a group is one sample when its shares
    sum to one sample's, and its latent is the share-weighted mean (the ratio of the group's
    summed weight- and bias-gradient differences). ``distance = 0`` groups identical latents only."""
    free = torch.ones(len(latents), dtype=torch.bool, device=latents.device)
    kept = []
    for leader in shares.argsort(descending=True).tolist():
        if not free[leader]:
            continue
        group = free & ((latents - latents[leader]).norm(dim=1) <= distance * latents[leader].norm())
        group[leader] = True
        free &= ~group
        total = shares[group].sum()
        if one[0] <= float(total) <= one[1]:
            kept.append((shares[group, None] * latents[group]).sum(0) / total)
    return torch.stack(kept) if kept else latents[:0]


def interval_of(pre: torch.Tensor) -> torch.Tensor:
    """Each sample's interval from its cumulative bins' pre-activations ``[B, K]``: the number
    of bins it passes, minus one (the numbering of ``solve_bins``' intervals)."""
    return (pre > 0).sum(1) - 1


def interval_owners(batches: Sequence[torch.Tensor], intervals: Sequence[torch.Tensor]) -> dict[int, set[int]]:
    """The samples that reached each interval over local steps (``batches``: each step's
    sample ids; ``intervals``: their ``interval_of``); an interval one sample alone reached is
    one the attack can read it from. Samples below every bin (interval -1) reach none."""
    owners: dict[int, set[int]] = {}
    for batch, step in zip(batches, intervals, strict=True):
        for sample, interval in zip(batch.tolist(), step.tolist()):
            if interval >= 0:
                owners.setdefault(interval, set()).add(sample)
    return owners


EMPTY_SHARE = 0.5  # an interval whose bias-gradient difference is below this share of one local step's holds no sample


class BinnedLayer:
    """A hidden latent layer (ReLU, then a linear readout): K cumulative bins of one query."""

    @staticmethod
    def craft(latents: torch.Tensor, layers: LatentLayers, params: ScaleMiaParams, num_classes: int) -> CraftedLayers:
        """Rows: one query (the auxiliary latents' first principal direction), thresholds at
        quantiles of it, pre-activation ``bin_slope * (h - edge) / std(h)`` (small crafted rows
        keep their update above float32 rounding). Readout: identical columns
        ``beta * alpha``, alpha = +-1 by class, and a bias that makes the softmax's mean of
        alpha zero, so every sample's upstream gradient is ``-+beta / batch`` whatever its label:
        one unit per sample, which the selection counts. ``beta`` lets the bins move a logit by
        at most ``logit_spread`` (the softmax stays soft)."""
        K = layers.imprint.out_features
        query = principal_direction(latents - latents.mean(0))
        h = latents @ query
        scale, offset = variant("cumulative").rows(quantile_edges(h, K).to(latents.device))
        slope = params.bin_slope / ((float(h.std()) or 1.0) * float(scale[0]))  # relu: positively homogeneous
        weight, bias = (slope * scale)[:, None] * query[None, :], slope * offset
        pooled = F.relu(h[:, None] * (slope * scale)[None, :] + bias[None, :]).sum(1)
        alpha = torch.tensor([1.0 if c % 2 == 0 else -1.0 for c in range(num_classes)], device=latents.device)
        positives, negatives = int((alpha > 0).sum()), int((alpha < 0).sum())
        prior = torch.where(alpha > 0, torch.tensor(max(negatives, 1) / positives), torch.tensor(1.0)).log()
        mean = float(pooled.mean())
        beta = params.logit_spread / max(float((pooled - mean).abs().max()), 1e-30)
        readout = (beta * alpha)[:, None].expand(num_classes, K).contiguous()
        return CraftedLayers(weight, bias, readout, prior.to(latents.device) - beta * mean * alpha, beta)

    @staticmethod
    def solve(weight: torch.Tensor, bias: torch.Tensor, view: ServerView, crafted: CraftedLayers, params: ScaleMiaParams) -> Solved:
        """bin_solve per interval; an interval's share is its bias-gradient difference over the
        upstream. One sample makes at most ``sample_weight_range``'s high end (known local
        training) and, when its bin moved between its local steps, leaves at least
        ``step_share_floor`` in each interval it visited (``merge_visits`` sums the visits);
        ``unit_tolerance`` widens both ends. Two samples make about twice as much, or cancel.
        With several local steps the readout's drift is taken out first
        (``subtract_readout_drift``; intervals below ``EMPTY_SHARE`` of one step's share are empty)."""
        _, high = sample_weight_range(view.num_samples, view.training)
        low = step_share_floor(view.num_samples, view.training)
        if several_local_steps(view.num_samples, view.training):
            bias_steps = torch.cat([bias, bias.new_zeros(1)])
            shares = (bias_steps[:-1] - bias_steps[1:]).abs() / crafted.upstream
            widths = crafted.imprint_bias[:-1] - crafted.imprint_bias[1:]
            widths = torch.cat([widths, widths[-1:]]).to(bias.device)
            weight, bias = subtract_readout_drift(weight, bias, widths, shares < EMPTY_SHARE * low)
        solution = solve_bins(weight, bias, "cumulative")
        candidates = solution.nonempty.nonzero().flatten()
        magnitude = solution.weight[candidates].abs() / crafted.upstream
        one = (low * (1 - params.unit_tolerance), high * (1 + params.unit_tolerance))
        return Solved(solution.inputs[candidates], candidates, magnitude, one, len(candidates), len(bias), moves=True)


CLASS_ROW_ONE = (0.5, 1.5)  # a class's sample count is an integer: one is within half of 1


class ClassRowLayer:
    """The latent feeds the output layer directly (ResNet's ``fc``): its rows are the classes.

    The server zeroes the layer, so every softmax is uniform and row c's gradient is
    ``(Z / C - Z_c) / N`` (Z: all latents' sum, Z_c: class c's) with bias gradient
    ``(n / C - m_c) / N``. A class absent from the round (the largest bias gradient) has row
    ``Z / (C N)``; ``bin_solve`` on the pair (absent class, class c) gives ``Z_c / m_c`` and the
    count ``m_c``: the latent itself when the class has one sample. Only K = C intervals: the
    attack recovers samples alone in their class, from rounds that miss some class."""

    @staticmethod
    def craft(latents: torch.Tensor, layers: LatentLayers, params: ScaleMiaParams, num_classes: int) -> CraftedLayers:
        zeros = torch.zeros_like(layers.imprint.weight)
        return CraftedLayers(zeros, torch.zeros_like(layers.imprint.bias))

    @staticmethod
    def solve(weight: torch.Tensor, bias: torch.Tensor, view: ServerView, crafted: CraftedLayers, params: ScaleMiaParams) -> Solved:
        n = sum(view.num_samples)
        absent = int(bias.argmax())
        if abs(float(bias[absent]) * n - n / len(bias)) > 0.5:  # every class present: Z unknown
            return Solved(weight[:0], torch.zeros(0, dtype=torch.long, device=bias.device), bias[:0], CLASS_ROW_ONE, len(bias), len(bias), moves=False)
        others = [c for c in range(len(bias)) if c != absent]
        pairs_w = torch.stack([torch.stack([weight[absent], weight[c]]) for c in others]).flatten(0, 1)
        pairs_b = torch.stack([torch.stack([bias[absent], bias[c]]) for c in others]).flatten()
        X, valid = bin_solve(pairs_w[None].contiguous(), pairs_b[None].contiguous(), 0.5 / n)
        counts = (pairs_b[0::2] - pairs_b[1::2]) * n
        present = valid[0, 0::2]
        classes = torch.tensor(others, device=bias.device)[present]
        return Solved(X[0, 0::2][present], classes, counts[present], CLASS_ROW_ONE, int(present.sum()), len(bias), moves=False)


LEAKAGE_LAYERS = {"binned": BinnedLayer, "class_rows": ClassRowLayer}


# ---- phase 1: the encoder's scale (what local training moves least) -----------------------------

RELU_CHAIN = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten)


def chain_convs(encoder: nn.Module) -> list[nn.Conv2d]:
    """The convolutions of an encoder that is a chain of convolutions, ReLUs, max-pools and a
    flatten (positively homogeneous: scaling a convolution's output scales all that follows);
    none for any other encoder (it keeps its scale)."""
    modules = list(encoder.children()) if isinstance(encoder, nn.Sequential) else [encoder]
    if not all(isinstance(m, RELU_CHAIN) for m in modules):
        return []
    return [m for m in modules if isinstance(m, nn.Conv2d)]


@torch.no_grad()
def scale_relu_chain(encoder: nn.Module, scales: torch.Tensor) -> None:
    """Convolution l's output times ``scales[l]`` (cumulative: weight times S_l / S_{l-1}, bias
    times S_l): the latent is ``scales[-1]`` times the original and the function of the model
    is the same once the imprint rows are divided by it."""
    previous = 1.0
    for conv, scale in zip(chain_convs(encoder), scales.tolist()):
        conv.weight.mul_(scale / previous)
        if conv.bias is not None:
            conv.bias.mul_(scale)
        previous = scale


def drift_by_group(model: nn.Module, layers: LatentLayers, images: torch.Tensor, labels: torch.Tensor, lr: float) -> dict[str, float]:
    """How far one local SGD step (the round's known learning rate, a batch of auxiliary images)
    moves the images' imprint pre-activation at their own bin, in bin widths, when only one
    parameter group takes the step: each convolution's weight and bias, the imprint's rows and
    bias (medians over the images). The crafted rows share one direction, so a bin's width in
    pre-activation is the difference of consecutive biases."""
    groups = {f"conv{i}.{kind}": getattr(conv, kind) for i, conv in enumerate(chain_convs(layers.encoder)) for kind in ("weight", "bias")}
    groups |= {"imprint.weight": layers.imprint.weight, "imprint.bias": layers.imprint.bias}
    groups = {name: p for name, p in groups.items() if p is not None}
    loss = F.cross_entropy(model(images), labels)
    grads = dict(zip(groups, torch.autograd.grad(loss, list(groups.values()))))
    with torch.no_grad():
        def pre() -> torch.Tensor:
            return layers.imprint(layers.encoder(images).flatten(1))

        before = pre()
        bins = interval_of(before).clamp(0, before.shape[1] - 2)
        bias = layers.imprint.bias
        width = (bias[bins] - bias[bins + 1]).abs().clamp(min=1e-30)
        rows = torch.arange(len(images))
        drift = {}
        for name, param in groups.items():
            param.sub_(lr * grads[name])
            drift[name] = float(((pre() - before)[rows, bins] / width).abs().median())
            param.add_(lr * grads[name])
    return drift


def balanced_scales(drift: dict[str, float], convs: int, encoder_weight: float) -> torch.Tensor:
    """The encoder's cumulative output scales S_1..S_m that minimise the summed drift: with
    conv l scaled by S_l / S_{l-1} (bias by S_l) and the imprint rows by 1 / S_m, a group's
    drift relative to a bin's width goes as the inverse square of its own scale: conv weights
    (S_{l-1} / S_l)^2, conv biases 1 / S_l^2, imprint rows S_m^2 (its bias is invariant). A
    convex problem in log S (sums of exponentials), solved with L-BFGS. The convolutions' terms
    count ``encoder_weight`` times their drift."""
    if convs == 0:
        return torch.ones(0, dtype=torch.float64)
    log_s = torch.zeros(convs, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_s], max_iter=200, line_search_fn="strong_wolfe")

    def total() -> torch.Tensor:
        previous = torch.cat([torch.zeros(1, dtype=torch.float64), log_s[:-1]])
        cost = drift["imprint.weight"] * torch.exp(2 * log_s[-1])
        for l in range(convs):
            cost = cost + encoder_weight * drift[f"conv{l}.weight"] * torch.exp(2 * (previous[l] - log_s[l]))
            cost = cost + encoder_weight * drift.get(f"conv{l}.bias", 0.0) * torch.exp(-2 * log_s[l])
        return cost

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        cost = total()
        cost.backward()
        return cost

    optimizer.step(closure)
    return log_s.detach().exp()


# ---- the server hook -------------------------------------------------------------------------


@dataclass
class Crafting:
    """What phase 1 produced: the autoencoder, the layer parameters, the selection threshold."""

    autoencoder: AutoEncoder
    layers: CraftedLayers
    reprojection_threshold: float
    merge_distance: float  # latents closer than this (relative) are one sample's visits
    seconds: float


def new_autoencoder(adapter: ModelAdapter, model: nn.Module, shape: tuple[int, int, int], params: ScaleMiaParams) -> AutoEncoder:
    """An untrained autoencoder whose encoder is (a copy of) ``model``'s feature extractor."""
    layers = adapter.layers(model, shape)
    decoder = adapter.decoder(layers.latent_shape, shape, params.decoder_width)
    return AutoEncoder(copy.deepcopy(layers.encoder), decoder).to(_device(model))


# The parameters the autoencoder depends on: the others only shape the (cheap) crafting, so
# attack rows (and logit spreads) that differ in them share one training.
AUTOENCODER_PARAMS = ("ae_epochs", "ae_batch_size", "ae_lr", "decoder_width", "holdout_fraction")


def autoencoder_codec(
    adapter: ModelAdapter, model: nn.Module, shape: tuple[int, int, int], params: ScaleMiaParams
) -> Codec[tuple[AutoEncoder, float]]:
    """A trained autoencoder and its training seconds as its state and one number."""

    def encode(trained: tuple[AutoEncoder, float]) -> State:
        return {"autoencoder": dict(trained[0].state_dict()), "seconds": trained[1]}

    def decode(state: State) -> tuple[AutoEncoder, float]:
        autoencoder = new_autoencoder(adapter, model, shape, params)
        autoencoder.load_state_dict(state["autoencoder"])
        return autoencoder.eval(), float(state["seconds"])

    return Codec(encode, decode)


def latent_scale(scales: torch.Tensor) -> float:
    """The model's latent over the autoencoder's, for the encoder's output ``scales``."""
    return float(scales[-1]) if len(scales) else 1.0


@torch.no_grad()
def install(layers: LatentLayers, encoder: nn.Module, crafted: CraftedLayers, scales: torch.Tensor) -> None:
    """Writes the crafting into a model's layers: the autoencoder's encoder with its
    convolutions' outputs scaled by ``scales`` (``scale_relu_chain``), the imprint rows divided
    by the latent's scale (the same function) and the readout."""
    layers.encoder.load_state_dict(encoder.state_dict())
    scale_relu_chain(layers.encoder, scales)
    layers.imprint.weight.copy_(crafted.imprint_weight / latent_scale(scales))
    layers.imprint.bias.copy_(crafted.imprint_bias)
    if crafted.readout_weight is not None:
        layers.readout.weight.copy_(crafted.readout_weight)
        layers.readout.bias.copy_(crafted.readout_bias)


@dataclass
class Sent:
    """A crafting as the server sent it: phase one's layers at one logit spread and the
    encoder's output scales it was installed with."""

    crafting: Crafting
    scales: torch.Tensor
    spread: float

    @property
    def latent_scale(self) -> float:
        return latent_scale(self.scales)


class ScaleMiaServer:
    """The malicious server's ServerModelHook (and ``ObservingServer``): same architecture,
    crafted parameters. Phase 1 runs at the first round, when the architecture is known.

    The server tries its logit spreads in turn (``spreads``: round 0 at ``logit_spread``,
    round 1 at ``trial_spread``), scores each trial round by its aggregate's clean solves
    (``observe``, ``clean_solve_count``: observations only), and sends the better spread from
    then on. Every crafting it sent is kept by the sent model's fingerprint, so an attacked
    round is read with the crafting it was sent with (``sent_for``)."""

    def __init__(self, params: ScaleMiaParams, knowledge: AttackerKnowledge) -> None:
        self.params = params
        self.knowledge = knowledge
        self.autoencoder: tuple[AutoEncoder, float] | None = None  # phase one's, and its training seconds
        self.by_spread: dict[float, Sent] = {}
        self.sent: dict[str, Sent] = {}  # by the sent model's fingerprint (``model_digest``)
        self.clean: dict[float, int] = {}  # clean solves of each spread's trial round

    @property
    def spreads(self) -> tuple[float, ...]:
        """The logit spreads tried, one per round from round 0."""
        first, trial = self.params.logit_spread, self.params.trial_spread
        return (first, trial) if trial > 0 and trial != first else (first,)

    def spread_for(self, round_index: int) -> float:
        """A trial round's spread, or the one whose trial gave the most clean solves (ties, and
        no observation: the first)."""
        spreads = self.spreads
        if round_index < len(spreads):
            return spreads[round_index]
        return max(spreads, key=lambda spread: self.clean.get(spread, -1))

    def before_round(self, round_index: int, model: nn.Module) -> nn.Module:
        adapter = adapter_for(model)
        sent = self.crafted_at(self.spread_for(round_index), adapter, model)
        install(adapter.layers(model, self.knowledge.image_shape), sent.crafting.autoencoder.encoder, sent.crafting.layers, sent.scales)
        self.sent[model_digest(model)] = sent
        return model

    def observe(self, view: ServerView) -> None:
        """Scores a trial round's spread by its aggregate's clean solves."""
        sent = self.sent.get(model_digest(view.model))
        if sent is None or len(self.spreads) == 1 or view.round_index >= len(self.spreads):
            return
        self.clean[sent.spread] = clean_solve_count(view, self.knowledge, sent, self.params)

    def sent_for(self, model: nn.Module) -> Sent:
        """The crafting ``model`` was sent with."""
        sent = self.sent.get(model_digest(model))
        if sent is None:
            raise FlauditError("scale_mia: the attacked round's model is not one this server crafted (prepare() and its server hook must run first)")
        return sent

    def crafted_at(self, spread: float, adapter: ModelAdapter, model: nn.Module) -> Sent:
        """The crafting at ``spread`` and its encoder scales, built once."""
        if spread not in self.by_spread:
            if self.autoencoder is None:
                self.autoencoder = self.phase_one_autoencoder(adapter, model)
            crafting = self.craft(adapter, model, *self.autoencoder, dataclasses.replace(self.params, logit_spread=spread))
            self.by_spread[spread] = Sent(crafting, self.balance_encoder(adapter, model, crafting), spread)
        return self.by_spread[spread]

    def balance_encoder(self, adapter: ModelAdapter, model: nn.Module, crafting: Crafting) -> torch.Tensor:
        """The encoder's output scales: the ReLU chain's scale invariance moves the crafted
        model's sensitivity to local training between the encoder's layers and the imprint rows
        without changing its function; the scales that minimise one simulated local step's drift
        of the bins (auxiliary images, the round's known learning rate and batch size) keep the
        bins still longest while clients train several steps. None to balance (no convolution
        chain, or no readout to train the bins through): no scaling."""
        crafted, device = crafting.layers, _device(model)
        probe = copy.deepcopy(model)
        layers = adapter.layers(probe, self.knowledge.image_shape)
        convs = chain_convs(layers.encoder)
        if not convs or crafted.readout_weight is None:
            return torch.ones(0, device=device)
        install(layers, crafting.autoencoder.encoder, crafted, torch.ones(0))
        aux, training = self.knowledge.auxiliary, self.knowledge.training
        pick = torch.randperm(len(aux), generator=torch.Generator().manual_seed(self.knowledge.seed))[: training.batch_size]
        drift = drift_by_group(probe, layers, aux.images[pick].to(device), aux.labels[pick].to(device), training.lr)
        return balanced_scales(drift, len(convs), self.params.encoder_drift_weight).float().to(device)

    def phase_one_autoencoder(self, adapter: ModelAdapter, model: nn.Module) -> tuple[AutoEncoder, float]:
        """The prepared autoencoder (``train_phase_one_autoencoder``), shared by every cell of
        the run with the same auxiliary data, autoencoder parameters and round-0 model
        (architecture and state); the crafting from it (``craft``) is the row's own."""
        aux, knowledge = self.knowledge.auxiliary, self.knowledge
        key = {
            "params": {name: getattr(self.params, name) for name in AUTOENCODER_PARAMS},
            "auxiliary": tensor_digest((aux.images, aux.labels)), "seed": knowledge.seed,
            "image_shape": knowledge.image_shape, "model": model_digest(model), "device": str(_device(model)),
        }
        codec = autoencoder_codec(adapter, model, knowledge.image_shape, self.params)
        build = Preparation("scale_mia.autoencoder", key, lambda: self.train_phase_one_autoencoder(adapter, model), codec)
        return knowledge.prepared.get(build)

    def train_phase_one_autoencoder(self, adapter: ModelAdapter, model: nn.Module) -> tuple[AutoEncoder, float]:
        """The autoencoder trained on the auxiliary data but its held-out part, and the seconds
        it took."""
        began = time.perf_counter()
        aux, shape = self.knowledge.auxiliary, self.knowledge.image_shape
        _, trained_on = held_out_split(len(aux), self.params.holdout_fraction, self.knowledge.seed)
        autoencoder = new_autoencoder(adapter, model, shape, self.params)
        if adapter.trains_autoencoder:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.knowledge.seed)
                for module in autoencoder.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            train_autoencoder(autoencoder, aux.images[trained_on], self.params, self.knowledge.seed)
        return autoencoder.eval(), time.perf_counter() - began

    def craft(self, adapter: ModelAdapter, model: nn.Module, autoencoder: AutoEncoder, seconds: float, params: ScaleMiaParams) -> Crafting:
        """The crafted layers (at ``params``' logit spread) from the auxiliary latents, the
        reprojection threshold from the held-out ones and the merge distance. It runs inside the
        simulation's random stream and draws nothing from it (no sampling here: keep it so, or
        fork the RNG)."""
        began = time.perf_counter()
        aux, shape, device = self.knowledge.auxiliary, self.knowledge.image_shape, _device(model)
        layers = adapter.layers(model, shape)
        held_out, _ = held_out_split(len(aux), params.holdout_fraction, self.knowledge.seed)
        with torch.no_grad():
            latents = autoencoder.encoder(aux.images.to(device)).flatten(1)
            held = autoencoder.encoder(aux.images[held_out].to(device)).flatten(1)
            errors = reprojection_error(autoencoder.encoder, autoencoder.decoder, held)
        threshold = float(torch.quantile(errors.double().cpu(), params.selection_quantile)) * params.selection_slack
        merge = merge_distance(latents, params.merge_quantile)
        crafted = LEAKAGE_LAYERS[adapter.leakage].craft(latents, layers, params, self.knowledge.num_classes)
        return Crafting(autoencoder, crafted, threshold, merge, seconds + time.perf_counter() - began)


# ---- phase 2: the round's solve and the selection's threshold ----------------------------------


def solve_round(
    view: ServerView, image_shape: tuple[int, int, int], crafting: Crafting, params: ScaleMiaParams, latent_scale: float
) -> tuple[Solved, torch.Tensor, torch.Tensor]:
    """The round's candidates, their latents in the autoencoder's scale and their reprojection
    errors. A latent is a ReLU's output: the negative entries that the readout's drift and the
    encoder's leave in a lone sample's solve are set to 0 before the reprojection judges it."""
    adapter = adapter_for(view.model)
    layers = adapter.layers(view.model, image_shape)
    update = view.layout.unflatten(view.aggregate)
    weight = gradient_estimate(update[f"{layers.imprint_name}.weight"].float(), view.num_samples, view.training)
    bias = gradient_estimate(update[f"{layers.imprint_name}.bias"].float(), view.num_samples, view.training)
    solved = LEAKAGE_LAYERS[adapter.leakage].solve(weight.contiguous(), bias.contiguous(), view, crafting.layers, params)
    latents = (solved.latents.to(_device(view.model)) / latent_scale).clamp(min=0)
    encoder, decoder = crafting.autoencoder.encoder, crafting.autoencoder.decoder
    errors = reprojection_error(encoder, decoder, latents) if len(latents) else latents.new_zeros(0)
    return solved, latents, errors


SHADOW_CLIENT = -1  # the simulated client's id: no real client has it


def lone_solve_errors(
    view: ServerView, knowledge: AttackerKnowledge, crafting: Crafting, params: ScaleMiaParams, latent_scale: float
) -> torch.Tensor:
    """The reprojection errors of a simulated client's lone solves. With several local steps a
    lone sample's solve is its latent under an encoder that moved while the client trained, plus
    what the readout's training adds, so it reprojects worse than a held-out latent. The attacker
    measures how much worse on its own held-out images: one client of the round's median size
    (flipped and rotated copies where the held-out images are fewer) trains on the sent model
    with the round's known hyperparameters (without the clients' defenses), its update is solved
    as the round's is, and the intervals that only one of its samples reached (a hook on the
    imprint layer reads every step's intervals: the attacker knows them for its own client) are
    its lone solves."""
    aux = knowledge.auxiliary
    held, _ = held_out_split(len(aux), params.holdout_fraction, knowledge.seed)
    count = max(1, sorted(view.num_samples)[len(view.num_samples) // 2])
    images = dihedral_copies(aux.images[held], count)
    labels = aux.labels[held].repeat(-(-count // len(held)))[:count]
    model = copy.deepcopy(view.model)
    visits: list[torch.Tensor] = []
    imprint = adapter_for(model).layers(model, knowledge.image_shape).imprint
    imprint.register_forward_hook(lambda module, inputs, out: visits.append(interval_of(out).cpu()))  # kept by train_client's deep copy
    loader = make_loader(images, labels, torch.arange(count), view.training.batch_size, knowledge.seed)
    local, trace = train_client(SHADOW_CLIENT, view.round_index, model, loader, view.training, [])
    owners = interval_owners(trace.batches, visits)
    lone = torch.tensor([k for k, samples in owners.items() if len(samples) == 1], dtype=torch.long)
    update = view.layout.flatten(local) - view.layout.flatten(view.model)
    shadow = dataclasses.replace(view, participants=(SHADOW_CLIENT,), num_samples=(count,), uploads=None, aggregate=update)
    solved, _, errors = solve_round(shadow, knowledge.image_shape, crafting, params, latent_scale)
    return errors[torch.isin(solved.where.cpu(), lone).to(errors.device)]


def selection_threshold(view: ServerView, knowledge: AttackerKnowledge, sent: Sent, params: ScaleMiaParams, solved: Solved) -> float:
    """The reprojection error a kept latent may reach: the held-out auxiliary latents' quantile
    times the slack (phase one) or, when the bins move while clients train several steps, the
    same of a simulated client's lone solves (``lone_solve_errors``), whichever is larger."""
    crafting = sent.crafting
    if not solved.moves or not several_local_steps(view.num_samples, view.training):
        return crafting.reprojection_threshold
    lone = lone_solve_errors(view, knowledge, crafting, params, sent.latent_scale)
    lone = lone[torch.isfinite(lone)].double().cpu()
    if not len(lone):
        return crafting.reprojection_threshold
    return max(crafting.reprojection_threshold, float(torch.quantile(lone, params.selection_quantile)) * params.selection_slack)


def clean_solve_count(view: ServerView, knowledge: AttackerKnowledge, sent: Sent, params: ScaleMiaParams) -> int:
    """The round's solves that hold one sample's share and reproject as well as held-out
    auxiliary latents (phase one's threshold, the same at every spread: the autoencoder is
    shared), a score that compares two craftings' rounds. The selection's own count does not:
    the simulated client's threshold is looser where the bins move more (about 3x at a spread of
    0.05 than at 0.01 on examples/label-skew's federations), so it admits more at a larger spread
    whatever the clients hold."""
    solved, _, errors = solve_round(view, knowledge.image_shape, sent.crafting, params, sent.latent_scale)
    clean = (errors <= sent.crafting.reprojection_threshold) & solved.one_sample.to(errors.device)
    return int(clean.sum())


@dataclass
class Selection:
    """What the selection kept of a round: one latent per sample, in the autoencoder's scale."""

    solved: Solved
    kept: torch.Tensor  # [S, D]
    threshold: float


def select(view: ServerView, knowledge: AttackerKnowledge, sent: Sent, params: ScaleMiaParams) -> Selection:
    """The round's solve, the candidates that reproject like real latents, their visits merged."""
    solved, latents, errors = solve_round(view, knowledge.image_shape, sent.crafting, params, sent.latent_scale)
    threshold = selection_threshold(view, knowledge, sent, params, solved)
    real = errors <= threshold
    distance = sent.crafting.merge_distance if solved.moves else 0.0
    kept = merge_visits(latents[real], solved.shares.to(latents.device)[real], solved.one, distance)
    return Selection(solved, kept, threshold)


# ---- the attack --------------------------------------------------------------------------------


@register_attack("scale_mia", "Scale-MIA: crafted latent linear layer + autoencoder; reads batches from the aggregate")
class ScaleMia(Attack):
    threat_model = ThreatModel.MALICIOUS_SERVER
    crafts_model = True
    needs_auxiliary = True
    Params = ScaleMiaParams
    needs_individual_updates = False

    def __init__(self, params: ScaleMiaParams | None = None) -> None:
        super().__init__(params)
        self.server: ScaleMiaServer | None = None

    def prepare(self, knowledge: AttackerKnowledge) -> ScaleMiaServer:
        aux = knowledge.auxiliary
        if aux is None or len(aux) < 10:
            raise ConfigError("scale_mia needs the attacker's auxiliary data: set scenario.auxiliary_samples (a few hundred)")
        self.server = ScaleMiaServer(self.params, knowledge)
        return self.server

    def prior_null(self, view, context: NullContext) -> None:
        """Latents are solved from the update alone; the decoder's image of the mean latent is close to the attacker's mean image, one of its nulls."""
        return None

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        if self.server is None:
            raise FlauditError("scale_mia: no crafted round to attack (prepare() and its server hook must run first)")
        sent = self.server.sent_for(view.model)
        crafting = sent.crafting
        began = time.perf_counter()
        selection = select(view, knowledge, sent, self.params)
        solved, kept = selection.solved, selection.kept
        decoder = crafting.autoencoder.decoder
        with torch.no_grad():
            images = decoder(kept).clamp(0, 1) if len(kept) else torch.zeros(0, *knowledge.image_shape)
        seconds = time.perf_counter() - began
        n = sum(view.num_samples)
        diagnostics = {
            "bins": float(solved.intervals),
            "samples": float(n),
            "nonempty_bins": float(solved.nonempty),
            "selected_bins": float(len(kept)),
            "reprojection_threshold": selection.threshold,
            "logit_spread": sent.spread,
            "isolation_bound": isolation_bound(n, solved.intervals),
            "oracle_recovery_upper_bound": min(solved.nonempty, n) / n,
            "reconstruction_seconds": seconds,
            "phase_one_seconds": crafting.seconds,
        }
        return AttackOutput(images.cpu(), target_clients=view.participants, diagnostics=diagnostics)
