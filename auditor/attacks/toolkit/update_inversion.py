"""Update inversion, shared by Inverting Gradients, DLF and the curious peer: optimise dummy
images so that the update their simulated local training produces points the way the observed
one does (cosine or L2 distance plus total variation; Adam on the signed gradient with step
decay; pixels boxed to [0, 1]; restarts batched, the lowest loss kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from flaudit.auditor.attacks.toolkit.image_priors import total_variation
from flaudit.auditor.attacks.toolkit.one_step_matching import OneStepMatching
from flaudit.auditor.attacks.toolkit.local_update import Distance, piecewise_distance, restarts_per_pass, simulate_updates
from flaudit.core.progress import step_bar
from flaudit.core.tables import bounded
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


DECAY_POINTS = (3 / 8, 5 / 8, 7 / 8)  # fractions of the budget where the step size drops 10x


@dataclass(frozen=True)
class IgParams:
    target_client: int | None = bounded(None, min=0, doc="the client whose upload is attacked (default: the first participant)")
    iterations: int = bounded(40, min=1, doc="Adam steps per restart (IG: 24000, DLF: 400 in their papers)")
    restarts: int = bounded(1, min=1, doc="independent random initialisations; the lowest loss is kept")
    lr: float = bounded(0.1, min=0.0, exclusive_min=True, doc="Adam step size on the signed gradient")
    tv_weight: float = bounded(1e-4, min=0.0, doc="weight of the total-variation prior")
    distance: Distance = "cosine"
    signed: bool = bounded(True, doc="step on the gradient's sign (the paper's choice)")


def optimise_images(
    shape: tuple[int, ...],
    objective: UpdateObjective,
    *,
    iterations: int,
    restarts: int,
    lr: float,
    signed: bool,
    seed: int,
    device: torch.device,
    desc: str,
) -> tuple[Tensor, float]:
    """Minimises ``objective`` over images of ``shape`` in [0, 1] (Adam, step decay, restarts
    from uniform noise); returns the best images and their loss. The R restarts are one tensor
    ``[R, *shape]`` that ``objective`` maps to R losses, as many per call as it takes
    (``UpdateObjective.passes``): Adam is elementwise, so each restart follows its own path, and
    one whose loss is not finite stops where it is."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((restarts, *shape), generator=generator).to(device).requires_grad_()
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = sorted({max(1, int(iterations * f)) for f in DECAY_POINTS})
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    running = torch.ones(restarts, dtype=torch.bool, device=device)
    passes = objective.passes(restarts)
    for _ in step_bar(range(iterations), desc=desc):
        grad = torch.zeros_like(x)
        for part in passes:
            if bool(running[part].any()):
                losses = objective(x[part])
                running[part] &= torch.isfinite(losses.detach())
                if bool(running[part].any()):
                    grad += torch.autograd.grad(losses[running[part]].sum(), x)[0]
        if not bool(running.any()):
            break
        x.grad = grad.sign() if signed else grad
        stopped = x.detach()[~running].clone()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(0, 1)
            x[~running] = stopped
    # not under no_grad: the simulated training differentiates its steps
    final = torch.cat([objective(x.detach()[part]).detach() for part in passes])
    best = int(torch.where(torch.isfinite(final), final, math.inf).argmin())
    return x.detach()[best], float(final[best])


@dataclass(frozen=True)
class UpdateObjective:
    """The matching loss of R batches of dummy images ``[R, ...]`` (one loss each), and how
    many restarts one call should take (``per_pass``; None: all)."""

    distance: Callable[[Tensor], Tensor]
    tv_weight: float
    regularizer: Callable[[Tensor], Tensor] | None
    per_pass: int | None

    def passes(self, restarts: int) -> list[slice]:
        """The restarts ``0..restarts-1`` as the calls that should take them."""
        step = self.per_pass or restarts
        return [slice(first, first + step) for first in range(0, restarts, step)]

    def __call__(self, images: Tensor) -> Tensor:
        loss = self.distance(images) + self.tv_weight * total_variation(images)
        return loss + torch.stack([self.regularizer(batch) for batch in images]) if self.regularizer is not None else loss


def update_objective(
    observed: Tensor,
    model: nn.Module,
    layout: ParamLayout,
    training: TrainingSpec,
    labels: Tensor,
    *,
    distance: str,
    tv_weight: float,
    regularizer: Callable[[Tensor], Tensor] | None = None,
    order: Tensor | None = None,
) -> UpdateObjective:
    """Distance of the dummy images' simulated update to ``observed`` over the parameter
    entries, + TV + an optional extra prior (of one batch). One gradient matched by cosine
    takes ``OneStepMatching`` (all restarts in one pass through the shared weights); anything
    else simulates each restart's update (``piecewise_distance``: BatchNorm statistics
    skipped, not masked)."""
    pieces = dict(zip(layout.names, observed.split([shape.numel() for shape in layout.shapes])))
    by_name = {name: pieces[name].reshape(shape) for name, shape in zip(layout.names, layout.shapes)}
    one_step = OneStepMatching.of(model, training, labels, by_name, distance)
    if one_step is not None:
        return UpdateObjective(one_step, tv_weight, regularizer, per_pass=None)
    kept = [i for i, is_param in enumerate(layout.is_parameter) if is_param]
    observed_params = [pieces[layout.names[i]] for i in kept]

    def simulated_distance(images: Tensor) -> Tensor:
        candidate = simulate_updates(model, layout, training, images, labels, order=order)
        return piecewise_distance([candidate[i] for i in kept], observed_params, distance)

    return UpdateObjective(simulated_distance, tv_weight, regularizer, per_pass=restarts_per_pass(model))


def invert_update(
    observed: Tensor,
    model: nn.Module,
    layout: ParamLayout,
    training: TrainingSpec,
    labels: Tensor,
    image_shape: tuple[int, int, int],
    params: IgParams,
    *,
    regularizer: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> Tensor:
    """Images ``[N, C, H, W]`` in [0, 1], one per label, whose simulated local training
    reproduces the direction of ``observed`` (``regularizer`` adds a prior on the images)."""
    device = next(model.parameters()).device
    objective = update_objective(
        observed.detach().to(device), model, layout, training, labels.to(device),
        distance=params.distance, tv_weight=params.tv_weight, regularizer=regularizer,
    )
    images, _ = optimise_images(
        (len(labels), *image_shape), objective, iterations=params.iterations, restarts=params.restarts,
        lr=params.lr, signed=params.signed, seed=seed, device=device, desc="inverting gradients",
    )
    return images
