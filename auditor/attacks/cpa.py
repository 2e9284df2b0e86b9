"""The Cocktail Party Attack (Kariyappa et al., ICML 2023): an honest-but-curious server unmixes
one client's update of the model's first fully-connected layer into the inputs that layer saw.

The layer's weight update is a linear mixture ``sum_i c_i x_i^T`` of its inputs, whatever the
local training did: E epochs of B-batches with momentum only change the coefficients ``c_i``
when the inputs stay fixed (an MLP's first layer sees the pixels), so the sources are all the
client's images, as many as the upload's ``num_samples`` (the study unmixed B sources and saw
the attack fail on multi-step updates). Behind convolutions the inputs are embeddings that
drift as the convolutions train: the mixture is exact for one step only. Weight decay adds a
non-input term to the update.

Images are separated by their spatial differences (a linear filter, so still mixed by the
same coefficients): natural images' edges are far from Gaussian, their pixels are not. ICA
(``unmixing``) leaves each source's sign and scale open; the bias update ``sum_i c_i`` closes
both: the unmixing rows applied to it give each source's coefficient sum, so dividing by it
returns the sources in their own units (pixel values, embedding values). Pixel sources are the
reconstruction; embeddings go through feature inversion (CPA-FI).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.feature_inversion import InversionSettings, invert_features
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.toolkit.image_priors import spatial_differences
from flaudit.auditor.attacks.toolkit.unmixing import UnmixingSettings, unmix, whiten
from flaudit.core.tables import bounded
from flaudit.core.errors import FlauditError
from flaudit.scenarios.views import ServerView

PIXEL_MARGIN = 0.1  # a source scaled by its bias sum may overshoot [0, 1] by this before it is stretched


@dataclass(frozen=True)
class CpaParams:
    iterations: int = bounded(250, min=1, doc="Adam steps on the unmixing matrix")
    lr: float = bounded(0.03, min=0.0, exclusive_min=True, doc="Adam learning rate of the unmixing matrix")
    negentropy_scale: float = bounded(
        1.0, min=0.0, exclusive_min=True, doc="a of the log-cosh negentropy approximation"
    )
    sparsity_weight: float = bounded(
        0.05, min=0.0, doc="prior on the unmixed signals' mean |value|: total variation (images), L1 (embeddings)"
    )
    nonnegativity_weight: float = bounded(
        10.0, min=0.0, doc="prior that each embedding source has one sign (registered models embed into >= 0)"
    )
    independence_weight: float = bounded(
        0.05, min=0.0, doc="weight of the mutual-independence penalty exp(T |cos|)"
    )
    temperature: float = bounded(2.0, min=0.0, doc="T of the mutual-independence penalty")
    max_components: int | None = bounded(
        None, min=1, doc="cap on the sources unmixed (default: the client's sample count)"
    )
    inversion_iterations: int = bounded(150, min=1, doc="feature-inversion Adam steps (embedding sources)")
    inversion_lr: float = bounded(0.05, min=0.0, exclusive_min=True, doc="feature-inversion learning rate")
    inversion_tv_weight: float = bounded(0.005, min=0.0, doc="total-variation prior of feature inversion")
    target_client: int | None = bounded(
        None, min=0, doc="the client attacked (default: the round's first participant)"
    )

    def unmixing(self, pixels: bool) -> UnmixingSettings:
        """Pixel sources are separated by their spatial differences, which have no sign prior."""
        return UnmixingSettings(
            self.iterations, self.lr, self.negentropy_scale, self.sparsity_weight,
            0.0 if pixels else self.nonnegativity_weight, self.independence_weight, self.temperature,
        )

    @property
    def inversion(self) -> InversionSettings:
        return InversionSettings(self.inversion_iterations, self.inversion_lr, self.inversion_tv_weight)


class FirstLinearInput:
    """The model's first fully-connected layer (in registration order) and the input it receives,
    read with a forward pre-hook, so any architecture works without knowing its layout."""

    def __init__(self, model: nn.Module) -> None:
        found = next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)), None)
        if found is None:
            raise FlauditError(
                f"cpa needs a fully-connected layer (nn.Linear) whose update mixes its inputs; "
                f"the model {type(model).__name__} has none"
            )
        self.name, self.layer = found
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
        try:
            self.model(images)
        finally:
            handle.remove()
        if not captured:
            raise FlauditError(f"cpa: the model's forward pass never reaches its first linear layer {self.name!r}")
        return captured[0].flatten(1)

    def sees_pixels(self, image_shape: tuple[int, int, int], device: torch.device) -> bool:
        probe = torch.rand((2, *image_shape), device=device)
        with torch.no_grad():
            return torch.equal(self(probe), probe.flatten(1))


def rescale(sources: torch.Tensor, unmixing_rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Each source divided by its coefficient sum (the unmixing rows applied to the bias
    update): the sign and scale ICA cannot see."""
    return sources / (unmixing_rows @ bias)[:, None]


def separate(
    weight: torch.Tensor,
    bias: torch.Tensor,
    image_shape: tuple[int, int, int] | None,
    count: int,
    settings: UnmixingSettings,
) -> torch.Tensor:
    """At most ``count`` sources [k, D] of a layer's weight and bias update, in input units.
    ``image_shape``: the inputs' shape when they are images (separated by their differences)."""
    observed = spatial_differences(weight.view(-1, *image_shape)) if image_shape else weight
    whitened = whiten(observed, count)
    rows = unmix(whitened, settings) @ whitened.projection
    return rescale(rows @ weight, rows, bias)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Images within ``PIXEL_MARGIN`` of [0, 1] are clamped; the others (a badly resolved scale)
    are min-max normalised, which keeps their sign."""
    flat = images.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    plausible = (low >= -PIXEL_MARGIN) & (high <= 1 + PIXEL_MARGIN)
    stretched = (flat - low) / (high - low).clamp(min=1e-12)
    return torch.where(plausible, flat.clamp(0, 1), stretched).view_as(images)


@register_attack(
    "cpa", "Cocktail Party Attack: ICA of one client's first-FC-layer update (+ feature inversion for CNNs)"
)
class CocktailPartyAttack(HonestServerAttack):
    Params = CpaParams
    profiles = {"full": {"iterations": 25000, "lr": 0.001, "inversion_iterations": 25000, "inversion_lr": 0.001}}

    def prior_null(self, view, context: NullContext) -> None:
        """ICA unmixes the update alone: no prior beyond the attacker's data (its nulls)."""
        return None

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        params = self.params
        upload = self.target(view)
        model = copy.deepcopy(view.model).requires_grad_(False)
        layer = FirstLinearInput(model)
        device = next(model.parameters()).device
        update = view.layout.unflatten(upload.update.to(device))
        weight, bias = update.get(f"{layer.name}.weight"), update.get(f"{layer.name}.bias")
        if weight is None or bias is None:
            raise FlauditError(
                f"cpa reads the weight and bias update of the first fully-connected layer {layer.name!r}; "
                "the upload lacks them (a layer without bias leaves the sources' signs unresolved)"
            )
        pixels = layer.sees_pixels(knowledge.image_shape, device)
        count = min(upload.num_samples, params.max_components or upload.num_samples)
        shape = knowledge.image_shape if pixels else None
        sources = separate(weight.double(), bias.double(), shape, count, params.unmixing(pixels))
        diagnostics = {
            "components": float(len(sources)),
            "client_samples": float(upload.num_samples),
            "layer_rows": float(weight.shape[0]),
            "layer_inputs": float(weight.shape[1]),
        }
        if pixels:
            images = to_unit_range(sources.float().view(-1, *knowledge.image_shape))
        else:
            generator = torch.Generator().manual_seed(knowledge.seed)
            images, similarity = invert_features(
                layer, sources.float(), knowledge.image_shape, params.inversion, generator
            )
            diagnostics["mean_embedding_cosine"] = float(similarity.mean())
        return AttackOutput(images, target_clients=(upload.client_id,), diagnostics=diagnostics)
