"""Cosine update matching for a single local step (one gradient: FedSGD, or E=1 with N <= B)
without forming any restart's gradient, so that R restarts share the model's weights in one
ordinary forward and backward pass over their R x N images.

One step of torch's SGD uploads ``c = -lr (g + wd theta0)`` (the momentum buffer starts as the
gradient), so the cosine distance to the observed update ``o`` needs, per restart, only
``<g, o>``, ``<g, theta0>`` and ``|g|^2``. Every Linear and Conv2d layer gives them from its
inputs ``a`` and output gradients ``d`` (one row per image): ``<g, V> = sum_n d_n . (V a_n)``
(one pass of the layer with weights ``V`` over all images), and for a Linear layer ``|g|^2 =
sum over the restart's image pairs of (a_n . a_m)(d_n . d_m)`` (Gram matrices of N x N); a
convolution's weight gradient is small and is formed per restart. The general path
(``local_update.simulate_updates``) instead builds every restart's update: R copies of the
study CNN's 8.5 MB gradient at 32x32, written and read by the distance and its double backward
(benches/bench_inverting_gradients.py times both).

Applies to models whose parameters all sit in Linear and Conv2d layers (zero padding) and that
hold no buffers (a BatchNorm layer would mix the restarts' statistics in one pass; so would
any layer that does not treat the images independently); ``OneStepMatching.of`` answers None
otherwise and the caller takes the general path. tests/test_one_step_matching.py checks that
both paths give the same losses and image gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from flaudit.auditor.attacks.toolkit.local_update import train_mode
from flaudit.scenarios.views import TrainingSpec

MATCHED_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LayerTargets:
    """A matched layer, its slice of the observed update (``observed_bias`` None: no bias) and
    what weight decay adds: ``<theta0, o>`` and ``|theta0|^2`` over its parameters (a layer the
    forward pass skips gets no gradient, so torch's SGD decays nothing there)."""

    module: nn.Module
    observed_weight: Tensor
    observed_bias: Tensor | None
    start_dot_observed: Tensor
    start_squared_norm: Tensor

    @staticmethod
    def of(module: nn.Module, observed_weight: Tensor, observed_bias: Tensor | None) -> "LayerTargets":
        pairs = [(module.weight.detach(), observed_weight)]
        if observed_bias is not None:
            pairs.append((module.bias.detach(), observed_bias))
        return LayerTargets(
            module, observed_weight, observed_bias,
            sum((p * o).sum() for p, o in pairs), sum(p.square().sum() for p, _ in pairs),
        )


@dataclass(frozen=True)
class GradientFigures:
    """Per restart ``[R]``: ``<g, o>``, ``<g, theta0>`` (None without weight decay) and ``|g|^2``."""

    dot_observed: Tensor
    dot_start: Tensor | None
    squared_norm: Tensor

    def __add__(self, other: "GradientFigures") -> "GradientFigures":
        start = None if self.dot_start is None else self.dot_start + other.dot_start
        return GradientFigures(self.dot_observed + other.dot_observed, start, self.squared_norm + other.squared_norm)

    @staticmethod
    def explicit(gradient: Tensor, observed: Tensor, start: Tensor | None) -> "GradientFigures":
        """The figures of gradients formed per restart, ``[R, *shape]``."""
        flat = gradient.flatten(1)
        return GradientFigures(
            flat @ observed.reshape(-1), None if start is None else flat @ start.reshape(-1), flat.square().sum(1)
        )


Calls = list[tuple[Tensor, Tensor]]  # a layer's (input, output gradient) per call, rows restart-major


@dataclass(frozen=True)
class OneStepMatching:
    """The cosine distance of R dummy batches' one-step updates to an observed update."""

    model: nn.Module
    training: TrainingSpec
    labels: Tensor
    layers: tuple[LayerTargets, ...]
    observed_norm: Tensor

    @staticmethod
    def of(
        model: nn.Module, training: TrainingSpec, labels: Tensor, observed: dict[str, Tensor], distance: str
    ) -> "OneStepMatching | None":
        """The matcher when one local step makes the update and the model's layers allow it
        (module docstring); ``observed``: the update's parameter entries by parameter name.
        None: take the general path."""
        if distance != "cosine" or training.epochs != 1 or len(labels) > training.batch_size or not _supported(model):
            return None
        layers = tuple(
            LayerTargets.of(
                module, observed[_joined(name, "weight")].detach(),
                None if module.bias is None else observed[_joined(name, "bias")].detach(),
            )
            for name, module in model.named_modules()
            if isinstance(module, MATCHED_LAYERS)
        )
        observed_norm = torch.sqrt(sum(observed[name].detach().square().sum() for name, _ in model.named_parameters()))
        return OneStepMatching(model, training, labels, layers, observed_norm)

    def __call__(self, images: Tensor) -> Tensor:
        """Cosine distances ``[R]`` of the restarts' images ``[R, N, C, H, W]`` (or
        ``[R, 1, N, C, H, W]``: the one epoch's copy)."""
        restarts, n = images.shape[0], len(self.labels)
        records: list[tuple[nn.Module, Tensor, Tensor]] = []  # (layer, input, output) per call

        def keep(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
            records.append((module, args[0], output))
            return output.clone()  # an in-place activation must not overwrite the output we differentiate

        hooks = [layer.module.register_forward_hook(keep) for layer in self.layers]
        try:
            with train_mode(self.model):
                logits = self.model(images.reshape(restarts * n, *images.shape[-3:]))
        finally:
            for hook in hooks:
                hook.remove()
        labels = self.labels.repeat(restarts, *(1,) * (self.labels.dim() - 1))
        loss = F.cross_entropy(logits, labels, reduction="sum") / n  # the sum of each restart's mean loss
        graph = images.requires_grad  # a search that only ranks images (GGL) needs no second-order graph
        grads = torch.autograd.grad(loss, [output for *_, output in records], create_graph=graph, allow_unused=True)
        calls: dict[nn.Module, Calls] = {layer.module: [] for layer in self.layers}
        for (module, inputs, output), grad in zip(records, grads):
            calls[module].append((inputs, torch.zeros_like(output) if grad is None else grad))
        ran = [layer for layer in self.layers if calls[layer.module]]  # a layer the pass skipped has no gradient
        decay = self.training.weight_decay
        total = _layer_figures(ran[0], calls[ran[0].module], restarts, bool(decay))
        for layer in ran[1:]:
            total = total + _layer_figures(layer, calls[layer.module], restarts, bool(decay))
        dot = -self.training.lr * (total.dot_observed + decay * sum(layer.start_dot_observed for layer in ran))
        squared = total.squared_norm
        if decay:
            squared = squared + 2 * decay * total.dot_start + decay**2 * sum(layer.start_squared_norm for layer in ran)
        norm = self.training.lr * squared.clamp(min=1e-60).sqrt()
        return 1 - dot / (norm * self.observed_norm).clamp(min=1e-30)


def _joined(module_name: str, parameter: str) -> str:
    return f"{module_name}.{parameter}" if module_name else parameter


def _supported(model: nn.Module) -> bool:
    """Parameters only as the weight and bias of Linear and zero-padded Conv2d layers, and no
    buffers (batch statistics would mix the restarts)."""
    if any(True for _ in model.buffers()):
        return False
    for module in model.modules():
        own = {id(p) for p in module.parameters(recurse=False)}
        if not own:
            continue
        if not isinstance(module, MATCHED_LAYERS) or own != {id(p) for p in (module.weight, module.bias) if p is not None}:
            return False
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return False
    return True


def _layer_figures(layer: LayerTargets, calls: Calls, restarts: int, with_start: bool) -> GradientFigures:
    module = layer.module
    weight = module.weight.detach() if with_start else None
    figures = (_linear_figures if isinstance(module, nn.Linear) else _conv_figures)(layer, calls, restarts, weight)
    if module.bias is None:
        return figures
    channel = -1 if isinstance(module, nn.Linear) else 1
    bias_grad = sum(
        d.movedim(channel, -1).reshape(restarts, -1, module.bias.shape[0]).sum(1) for _, d in calls
    )  # [R, out]
    return figures + GradientFigures.explicit(bias_grad, layer.observed_bias, module.bias.detach() if with_start else None)


def _linear_figures(layer: LayerTargets, calls: Calls, restarts: int, weight: Tensor | None) -> GradientFigures:
    """A restart's weight gradient is ``D^T A`` over its rows: its products with the observed
    and start weights are one pass of the layer, its squared norm two Gram matrices."""
    a = torch.cat([a.reshape(restarts, -1, a.shape[-1]) for a, _ in calls], 1)  # [R, rows, in]
    d = torch.cat([d.reshape(restarts, -1, d.shape[-1]) for _, d in calls], 1)  # [R, rows, out]
    dot = ((a @ layer.observed_weight.T) * d).sum(dim=(1, 2))
    start = None if weight is None else ((a @ weight.T) * d).sum(dim=(1, 2))
    squared = ((a @ a.transpose(1, 2)) * (d @ d.transpose(1, 2))).sum(dim=(1, 2))
    return GradientFigures(dot, start, squared)


def _conv_figures(layer: LayerTargets, calls: Calls, restarts: int, weight: Tensor | None) -> GradientFigures:
    """A convolution's weight gradient is small: formed per restart, all restarts in one
    grouped call (restart r's channels are the r-th block of R x groups groups)."""
    conv: nn.Conv2d = layer.module
    out, per_group = conv.weight.shape[0], conv.weight.shape[1:]

    def side_by_side(t: Tensor) -> Tensor:  # [R * N, C, H, W] -> [N, R * C, H, W]
        return t.reshape(restarts, -1, *t.shape[1:]).transpose(0, 1).flatten(1, 2)

    gradient = sum(
        conv2d_weight(
            side_by_side(a), (restarts * out, *per_group), side_by_side(d),
            conv.stride, conv.padding, conv.dilation, conv.groups * restarts,
        )
        for a, d in calls
    )
    return GradientFigures.explicit(gradient.reshape(restarts, out, *per_group), layer.observed_weight, weight)
