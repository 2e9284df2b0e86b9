"""A FedAvg client's local training, simulated differentiably: the core of every attack that
matches a dummy dataset's update to an observed one (DLG, iDLG, Inverting Gradients, DLF, and
the generator and peer attacks built on them).

``simulate_update`` replays what ``scenarios.client.train_client`` does (E epochs of
mini-batch SGD with momentum and weight decay, mean cross-entropy, BatchNorm in train mode)
with ``torch.func.functional_call``, so the result stays a function of the dummy images and
(soft) labels and the attacker can differentiate through every local step. The real client
shuffles its data each epoch with a seed the server does not know; the simulation uses a
fixed, documented batch order instead (or the caller's own per-epoch orders). A single
gradient is the special case E=1, N <= B: the update is then ``-lr * gradient``.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from flaudit.core.errors import ConfigError
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import TrainingSpec


def simulate_update(
    model: nn.Module,
    layout: ParamLayout,
    training: TrainingSpec,
    images: Tensor,
    labels: Tensor,
    *,
    create_graph: bool = True,
    order: Tensor | None = None,
) -> Tensor:
    """The flat update (layout order, trained - start) a client holding ``images`` with
    ``labels`` would upload after ``training.epochs`` epochs of ``ceil(N / B)`` SGD steps.

    ``images``: ``[N, C, H, W]`` (every epoch sees the same images) or ``[E, N, C, H, W]`` (one
    copy per epoch, DLF's parametrisation). ``labels``: class ids ``[N]`` or probabilities
    ``[N, num_classes]``. Batch order: epoch e's k-th batch holds samples
    ``order[e, k*B:(k+1)*B]``; by default ``order[e] = 0..N-1`` in every epoch (the last batch
    of an epoch is the short one, as in the real loader). Parameter entries are differentiable
    w.r.t. images and soft labels (with ``create_graph``); BatchNorm running statistics are
    updated exactly as the real client's are, without gradient (they are detached statistics
    in the real client too).
    """
    epochs, n = training.epochs, images.shape[-4]
    per_epoch = images.dim() == 5
    if images.dim() not in (4, 5) or n == 0 or (per_epoch and images.shape[0] != epochs):
        raise ConfigError(
            f"simulate_update: images must be [N, C, H, W] or [epochs={epochs}, N, C, H, W] with N >= 1, "
            f"got {tuple(images.shape)}"
        )
    if labels.shape[0] != n or labels.dim() not in (1, 2):
        raise ConfigError(f"simulate_update: {n} images but labels of shape {tuple(labels.shape)}")
    if order is None:
        order = torch.arange(n, device=images.device).expand(epochs, n)
    if tuple(order.shape) != (epochs, n):
        raise ConfigError(f"simulate_update: order must be [{epochs}, {n}], got {tuple(order.shape)}")

    start = {name: p.detach() for name, p in model.named_parameters()}
    params = {name: p.detach().requires_grad_() for name, p in start.items()}  # a new leaf, same storage
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    velocity: dict[str, Tensor] = {}
    was_training = model.training
    model.train()
    try:
        for epoch in range(epochs):
            epoch_images = images[epoch] if per_epoch else images
            for batch in order[epoch].split(training.batch_size):
                logits = functional_call(model, (params, buffers), (epoch_images[batch],))
                loss = F.cross_entropy(logits, labels[batch])
                params = sgd_step(params, loss, velocity, training, create_graph)
    finally:
        model.train(was_training)
    start_buffers = dict(model.named_buffers())
    pieces = [
        params[name] - start[name] if is_param else (buffers[name] - start_buffers[name]).float()
        for name, is_param in zip(layout.names, layout.is_parameter)
    ]
    return torch.cat([p.reshape(-1) for p in pieces])


def sgd_step(
    params: dict[str, Tensor], loss: Tensor, velocity: dict[str, Tensor], training: TrainingSpec, create_graph: bool
) -> dict[str, Tensor]:
    """One step of torch's SGD (heavy-ball momentum, no dampening, coupled weight decay),
    written out so the new parameters stay a function of the batch. Updates ``velocity``."""
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    stepped = {}
    for (name, p), g in zip(params.items(), grads):
        if g is None:  # not used in the forward pass: torch's SGD skips it
            stepped[name] = p
            continue
        # torch.add(x, y, alpha=a) as torch's SGD writes it, so the rounding matches the client's
        if training.weight_decay:
            g = torch.add(g, p, alpha=training.weight_decay)
        if training.momentum:
            g = g if name not in velocity else torch.add(training.momentum * velocity[name], g)
            velocity[name] = g
        new = torch.add(p, g, alpha=-training.lr)
        stepped[name] = new if create_graph else new.detach().requires_grad_()
    if not create_graph:
        velocity.update({k: v.detach() for k, v in velocity.items()})
    return stepped


def _l2(candidate: Tensor, observed: Tensor) -> Tensor:
    return (candidate - observed).square().sum()


def _l1(candidate: Tensor, observed: Tensor) -> Tensor:
    return (candidate - observed).abs().sum()


def _cosine(candidate: Tensor, observed: Tensor) -> Tensor:
    return 1 - (candidate * observed).sum() / (candidate.norm() * observed.norm()).clamp(min=1e-30)


Distance = Literal["l2", "l1", "cosine"]
DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": _l2,  # DLG, iDLG: squared Euclidean distance
    "l1": _l1,
    "cosine": _cosine,  # Inverting Gradients, DLF: direction only, insensitive to step count and lr
}


def gradient_distance(candidate: Tensor, observed: Tensor, kind: str = "cosine", mask: Tensor | None = None) -> Tensor:
    """Distance ``kind`` (a key of ``DISTANCES``) between two flat updates, over the entries
    ``mask`` selects (all by default; a bool mask or its 0/1 float copy, which saves a
    conversion per call)."""
    if kind not in DISTANCES:
        raise ConfigError(f"unknown gradient distance {kind!r}; choose one of {sorted(DISTANCES)}")
    if candidate.shape != observed.shape:
        raise ConfigError(f"gradient_distance: shapes differ, {tuple(candidate.shape)} vs {tuple(observed.shape)}")
    if mask is not None:  # zeroed entries add nothing to any distance; cheaper than indexing
        candidate, observed = candidate * mask, observed * mask
    return DISTANCES[kind](candidate, observed)


def parameter_mask(layout: ParamLayout) -> Tensor:
    """Bool mask over a flat update: True at parameter entries, False at BatchNorm statistics
    (which the simulation reproduces but cannot differentiate)."""
    return torch.cat([torch.full((shape.numel(),), is_param) for shape, is_param in zip(layout.shapes, layout.is_parameter)])
