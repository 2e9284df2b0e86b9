"""Robbing the Fed (Fowl et al., ICLR 2022): a malicious server puts a binned imprint block in
front of the model and reads whole batches out of the (aggregated) update.

Preparation (``prepare``, on the attacker's auxiliary data): the query is the auxiliary
images' first principal direction, the bin edges sit at quantiles of its smoothed distribution.
Every round the server sends ``ImprintedModel(block, model)`` with the block's trainable rows
reset, after calibrating the block's input gain by simulating one client's local training on
auxiliary data (known epochs, batch size, lr, momentum) so that the bins move by at most
``max_drift`` of a bin width: with the study's fixed scaling the block blows up multi-step local
training of a CNN; with the calibrated one training stays finite and the backbone keeps learning.
A calibration is a ``toolkit.preparation`` keyed by the model sent: cells that send the same
one (every defense column at round 0) share it.

Reconstruction reads only the aggregate (works identically under secure aggregation): the
block's update (its zero-initialised per-bin rows) -> per-step gradient estimate ->
``bin_solve`` per interval -> the intervals that hold one sample, decided from the solve itself
(a lone sample's energy equals its energy feature; a mixture's does not, and its pixels must be
images) -> rows back to images (the block's centring undone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel, NullContext
from flaudit.auditor.attacks.toolkit.imprint import (
    ImprintBlock,
    gradient_estimate,
    isolation_bound,
    principal_direction,
    quantile_edges,
    solve_bins,
)
from flaudit.auditor.attacks.toolkit.preparation import Codec, Preparation, model_digest, tensor_digest
from flaudit.scenarios.client import make_loader, train_client
from flaudit.core.tables import bounded
from flaudit.scenarios.datasets import ImageDataset
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.scenario import derive_seed
from flaudit.scenarios.views import ServerView, TrainingSpec

TILT = "block.tilt.weight"  # the layout entry the attack reads
PIXEL_MARGIN = 0.05  # a solved image may overshoot [0, 1] by rounding, not by more
CALIBRATION_SEED_STREAM = 4040  # derive_seed stream of the calibration client's batches


@dataclass(frozen=True)
class RtfParams:
    bins: int = bounded(512, min=2, doc="K, the imprint block's bins")
    variant: Literal["cumulative", "sparse"] = "cumulative"
    readout_rms: float = bounded(
        0.2, min=0.0, exclusive_min=True, doc="pixel rms the bins add to an image (along the query), per std of their pooled activation"
    )
    max_drift: float = bounded(
        0.5, min=0.0, exclusive_min=True, doc="calibration target: how far local training may move a sample within its bin, in bin widths"
    )
    calibration_samples: int = bounded(
        64, min=1,
        doc="auxiliary samples of the simulated client that calibrates the gain: the clients' size where it is known "
        "(FedAvg weighs every update by it); a larger one simulates more local steps, a smaller gain, an update closer "
        "to secure aggregation's fixed-point step",
    )
    max_update: float = bounded(
        0.01, min=0.0, exclusive_min=True, doc="largest entry of the block's update the calibration allows (secure aggregation clips at 1)"
    )
    input_gain: float | None = bounded(
        None, min=0.0, exclusive_min=True, doc="fix the block's input gain instead of calibrating it"
    )
    energy_tolerance: float = bounded(
        0.02, min=0.0, exclusive_min=True,
        doc="relative mismatch of a solve's energy and energy feature above which it is a mixture "
        "(a two-sample mixture within it is >= 40 dB from its main sample)",
    )


class ImprintedModel(nn.Module):
    """The architecture the malicious server sends: the imprint block, then the model."""

    def __init__(self, block: ImprintBlock, backbone: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.block(x))


@torch.no_grad()
def bin_drift(block: ImprintBlock, trained_tilt: torch.Tensor, images: torch.Tensor) -> float:
    """How far a tilt moved the bins around ``images``: per image, the shift of the two edges of
    its interval in units of the interval's width; the 99th percentile over the images."""
    z = block.features(images)
    shift = (z @ trained_tilt.t()) / block.scale  # pre = scale * (h - edge): edge shift in h
    k = block.bin_of(images)
    upper = (k + 1).clamp(max=block.bins - 1)
    width = (block.edges[k + 1] - block.edges[k]).clamp(min=1e-30)
    rows = torch.arange(len(k))
    moved = torch.maximum(shift[rows, k].abs(), shift[rows, upper].abs()) / width
    return float(torch.quantile(moved.double(), 0.99))


def calibrate_gain(
    model: ImprintedModel, auxiliary: ImageDataset, training: TrainingSpec, params: RtfParams, seed: int
) -> tuple[float, float]:
    """The block's input gain, from one simulated client (auxiliary data, the round's known
    hyperparameters) trained at gain 1: the largest gain at which local training moves the bins
    by at most ``params.max_drift`` of a bin width (the tilt's effect on the bins grows with
    gain**2; a single local step cannot move them before they are read) and keeps the block's
    update within ``params.max_update`` (it grows with gain). Returns (gain, drift at gain 1)."""
    block = model.block
    block.set_gain(1.0)
    block.reset()
    count = min(params.calibration_samples, len(auxiliary))
    pick = torch.randperm(len(auxiliary), generator=torch.Generator().manual_seed(seed))[:count]
    device = next(model.parameters()).device
    loader = make_loader(auxiliary.images[pick], auxiliary.labels[pick], pick, training.batch_size, seed)
    local, trace = train_client(-1, -1, model, loader, training, [])
    tilt = local.block.tilt.weight.detach()
    if not bool(torch.isfinite(tilt).all()):
        raise FlauditError("rtf: local training diverged while calibrating the imprint gain")
    largest = float(tilt.abs().max())
    if largest == 0.0:
        return 1.0, 0.0
    gain = params.max_update / largest
    drift = bin_drift(block, tilt, auxiliary.images.to(device))
    if len(trace.batches) > 1 and drift > 0.0:
        gain = min(gain, math.sqrt(params.max_drift / drift))
    return gain, drift


GAIN_CODEC: Codec[tuple[float, float]] = Codec(
    lambda calibrated: {"gain": calibrated[0], "drift": calibrated[1]}, lambda state: (state["gain"], state["drift"])
)


class RtfServer:
    """The malicious server's ServerModelHook: sends the calibrated imprint block each round."""

    def __init__(
        self, params: RtfParams, knowledge: AttackerKnowledge, centre: torch.Tensor, query: torch.Tensor, edges: torch.Tensor
    ) -> None:
        self.params = params
        self.knowledge = knowledge
        self.centre = centre
        self.query = query
        self.edges = edges
        self.calibrations: dict[int, tuple[float, float]] = {}  # round -> (gain, drift at gain 1)

    def new_block(self, device: torch.device) -> ImprintBlock:
        aux = self.knowledge.auxiliary
        block = ImprintBlock(
            self.knowledge.image_shape, self.params.variant, self.query, self.edges, self.centre, self.params.readout_rms
        ).to(device)
        block.standardise(aux.images.to(device))
        return block

    def before_round(self, round_index: int, model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        imprinted = model if isinstance(model, ImprintedModel) else ImprintedModel(self.new_block(device), model)
        if self.params.input_gain is not None:
            gain, drift = self.params.input_gain, float("nan")
        else:
            gain, drift = self.calibration(imprinted, round_index)
        imprinted.block.reset()
        imprinted.block.set_gain(gain)
        self.calibrations[round_index] = (gain, drift)
        return imprinted

    def calibration(self, imprinted: ImprintedModel, round_index: int) -> tuple[float, float]:
        """``calibrate_gain`` as a preparation: it reads the model sent (at gain 1, rows reset)
        and the auxiliary data only, so the defense columns that send the same model (round 0)
        share one."""
        aux, seed = self.knowledge.auxiliary, derive_seed(self.knowledge.seed, CALIBRATION_SEED_STREAM, round_index)
        imprinted.block.set_gain(1.0)
        imprinted.block.reset()
        key = {"params": self.params, "auxiliary": tensor_digest((aux.images, aux.labels)), "training": self.knowledge.training,
               "seed": seed, "model": model_digest(imprinted)}
        build = lambda: calibrate_gain(imprinted, aux, self.knowledge.training, self.params, seed)  # noqa: E731
        return self.knowledge.prepared.get(Preparation("rtf.calibration", key, build, GAIN_CODEC))


@register_attack("rtf", "Robbing the Fed: a binned imprint block in front of the model; reads batches from the aggregate")
class RobbingTheFed(Attack):
    threat_model = ThreatModel.MALICIOUS_SERVER
    crafts_model = True
    needs_auxiliary = True
    Params = RtfParams
    needs_individual_updates = False

    def prepare(self, knowledge: AttackerKnowledge) -> RtfServer:
        aux = knowledge.auxiliary
        if aux is None or len(aux) < 2:
            raise ConfigError("rtf needs the attacker's auxiliary data: set scenario.auxiliary_samples (a few hundred)")
        centred = aux.images.flatten(1) - aux.images.flatten(1).mean(0)
        query = principal_direction(centred)
        edges = quantile_edges(centred @ query, self.params.bins)
        return RtfServer(self.params, knowledge, aux.images.flatten(1).mean(0), query, edges)

    def prior_null(self, view, context: NullContext) -> None:
        """Images are solved from the update alone: no prior beyond the attacker's data (its nulls)."""
        return None

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        model = view.model
        if not isinstance(model, ImprintedModel):
            raise FlauditError("rtf: the attacked round's model has no imprint block (the rtf server hook was not installed)")
        block = model.block
        update = view.layout.unflatten(view.aggregate)[TILT]
        grad = gradient_estimate(update.detach().float().cpu(), view.num_samples, view.training)
        solution = solve_bins(grad, grad[:, -1].contiguous(), block.variant_name)
        images, mismatch = block.images_from_features(solution.inputs.to(block.centre.device))
        in_range = ((images >= -PIXEL_MARGIN) & (images <= 1 + PIXEL_MARGIN)).flatten(1).all(1)
        keep = solution.nonempty & (mismatch <= self.params.energy_tolerance) & in_range
        n = sum(view.num_samples)
        nonempty = int(solution.nonempty.sum())
        diagnostics = {
            "bins": float(block.bins),
            "samples": float(n),
            "nonempty_bins": float(nonempty),
            "selected_bins": float(keep.sum()),
            "isolation_bound": isolation_bound(n, block.bins),
            "oracle_recovery_upper_bound": min(nonempty, n) / n,
            "gain": block.gain,
            "update_rms": float(update.float().square().mean().sqrt()),
        }
        recovered = images[keep].clamp(0, 1)
        return AttackOutput(recovered, target_clients=view.participants, diagnostics=diagnostics)
