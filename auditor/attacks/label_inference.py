"""Label inference from a client's update (study, section III-A).

* iDLG's sign rule (Zhao et al.): for one sample's gradient, the true class is the only one
  whose last-layer bias gradient (or weight row, behind non-negative activations) is negative.
* Zero-shot batch label counts (Geng et al., eq. 6-7): the last layer's gradient holds
  ``mean_i (p_ic - y_ic)`` (times the activations); the mean prediction ``p_c`` (and the mean
  activation sum ``O``) are estimated by pushing probe images through the model.
* Several local steps (Dimitrov et al.'s DLF, eq. 8-9): the update is the sum of U steps'
  gradients; the per-step ``p_c`` and ``O`` are interpolated linearly between the model the
  server sent and the client's trained model (``start + update``), both of which the server has.

The single-step case is the zero-shot estimate (U = 1 interpolates nothing). Counts are
rounded to sum to the client's sample count, as the study prescribes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from auditor.attacks import register_attack
from auditor.attacks.base import AttackerKnowledge, AttackOutput
from auditor.attacks.honest_server import HonestServerAttack
from auditor.attacks.imprint import gradient_estimate, local_steps
from scenarios.config import bounded
from scenarios.errors import ConfigError
from scenarios.updates import ParamLayout
from scenarios.views import ClientUpload, ServerView, TrainingSpec

Evidence = Literal["bias", "weight"]
PROBE_SAMPLES = 64  # probe images pushed through the model to estimate mean predictions


@dataclass(frozen=True)
class LastLayer:
    """The layout names of the classifier's weight ``[K, D]`` and bias ``[K]`` (or None)."""

    weight: str
    bias: str | None

    @property
    def module(self) -> str:
        return self.weight.rsplit(".", 1)[0]


def last_layer(layout: ParamLayout, num_classes: int) -> LastLayer:
    """The last parameter matrix with one row per class, and its bias if it has one."""
    entries = list(zip(layout.names, layout.shapes, layout.is_parameter))
    for i in range(len(entries) - 1, -1, -1):
        name, shape, is_param = entries[i]
        if is_param and len(shape) == 2 and shape[0] == num_classes:
            following = entries[i + 1] if i + 1 < len(entries) else None
            has_bias = following is not None and following[2] and tuple(following[1]) == (num_classes,)
            return LastLayer(name, following[0] if has_bias else None)
    raise ConfigError(f"label inference: the model has no {num_classes}-row classifier weight")


def idlg_label(layout: ParamLayout, update: Tensor, num_classes: int) -> int:
    """iDLG (eq. 5): the class whose last-layer gradient is negative. The update is
    ``-lr * gradient``, so it is the class whose bias update (or weight-row sum) is largest."""
    layer = last_layer(layout, num_classes)
    tensors = layout.unflatten(update)
    evidence = tensors[layer.bias] if layer.bias else tensors[layer.weight].sum(1)
    return int(evidence.argmax())


@dataclass(frozen=True)
class ProbeStats:
    """Mean softmax output ``[K]`` and mean activation sum ``O`` of the last layer's inputs."""

    mean_prediction: Tensor
    activation_sum: Tensor


@torch.no_grad()
def probe_stats(model: nn.Module, layer: LastLayer, probe: Tensor) -> ProbeStats:
    """Runs ``probe`` through ``model`` as the client's training would (train mode, BatchNorm
    on batch statistics) without touching the model's running statistics."""
    captured: list[Tensor] = []
    hook = model.get_submodule(layer.module).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
    params = dict(model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train()
    try:
        logits = functional_call(model, (params, buffers), (probe,))
    finally:
        hook.remove()
        model.train(was_training)
    return ProbeStats(F.softmax(logits, 1).mean(0), captured[0].flatten(1).sum(1).mean())


def round_counts(estimate: Tensor, total: int) -> Tensor:
    """Non-negative integer counts summing to ``total``, by largest remainder."""
    estimate = estimate.double().clamp(min=0)
    if float(estimate.sum()) <= 0:
        estimate = torch.ones_like(estimate)
    scaled = estimate * total / estimate.sum()
    counts = scaled.floor().long()
    remainder = total - int(counts.sum())
    counts[(scaled - counts).argsort(descending=True)[:remainder]] += 1
    return counts


def infer_label_counts(
    model: nn.Module,
    layout: ParamLayout,
    training: TrainingSpec,
    update: Tensor,
    num_samples: int,
    num_classes: int,
    *,
    probe: Tensor | None = None,
    image_shape: tuple[int, int, int] | None = None,
    evidence: Evidence = "bias",
    seed: int = 0,
) -> Tensor:
    """How many of the client's ``num_samples`` samples carry each class, from its ``update``.

    ``probe``: images to estimate the model's mean prediction with (the attacker's auxiliary
    data; default: uniform noise of ``image_shape``, Geng et al.'s dummy data). ``evidence``:
    read the last layer's bias (needs no activation approximation) or its weight rows (Geng
    et al.'s original); a model without a bias uses the weights. ``update`` may be any
    estimate of the client's update (the peer attack passes an estimated aggregate).
    """
    layer = last_layer(layout, num_classes)
    update = update.detach().to(next(model.parameters()).device)
    steps = local_steps(num_samples, training)
    if num_samples == 1 and steps == 1:
        return F.one_hot(torch.tensor(idlg_label(layout, update, num_classes), device=update.device), num_classes)
    if probe is None:
        if image_shape is None:
            raise ConfigError("infer_label_counts: pass the probe images or the image_shape of uniform-noise probes")
        g = torch.Generator().manual_seed(seed)
        probe = torch.rand(PROBE_SAMPLES, *image_shape, generator=g).to(update.device)
    trained = copy.deepcopy(model)
    layout.load(trained, layout.flatten(model) + update)
    before, after = probe_stats(model, layer, probe), probe_stats(trained, layer, probe)
    fraction = (torch.arange(steps, device=update.device, dtype=torch.float32) / steps)[:, None]
    predictions = before.mean_prediction + fraction * (after.mean_prediction - before.mean_prediction)  # [U, K]
    sums = before.activation_sum + fraction[:, 0] * (after.activation_sum - before.activation_sum)  # [U]

    # the average per-step gradient (momentum undone as for a constant gradient), weight decay removed
    gradient = gradient_estimate(update, [num_samples], training)
    midway = layout.flatten(model).to(update.device) + update / 2
    gradient = layout.unflatten(gradient - training.weight_decay * midway)
    if evidence == "bias" and layer.bias is not None:
        # bias gradient per step: mean_c(p) - n_c / B; summed over the steps of every epoch
        share = predictions.mean(0) - gradient[layer.bias]
    else:
        # weight-row sums per step: O_u * (mean_c(p) - n_c / B)  (Geng et al.'s eq. 6-7)
        rows = gradient[layer.weight].sum(1) * steps
        share = ((sums[:, None] * predictions).sum(0) - rows) / sums.sum()
    return round_counts(share * num_samples, num_samples)


def labels_from_counts(counts: Tensor) -> Tensor:
    """The label multiset as a sorted list of class ids."""
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def inferred_counts(
    view: ServerView, upload: ClientUpload, knowledge: AttackerKnowledge, evidence: Evidence = "bias"
) -> Tensor:
    """The label counts of ``upload``'s client, probing with the attacker's auxiliary images
    when it has some (RLU's choice), uniform noise otherwise (Geng et al.'s)."""
    aux = knowledge.auxiliary
    return infer_label_counts(
        view.model, view.layout, view.training, upload.update, upload.num_samples, knowledge.num_classes,
        probe=None if aux is None else aux.images[:PROBE_SAMPLES].to(knowledge.device),
        image_shape=knowledge.image_shape, evidence=evidence, seed=knowledge.seed,
    )


def inferred_labels(view: ServerView, upload: ClientUpload, knowledge: AttackerKnowledge) -> Tensor:
    """The label multiset of ``upload``'s client as sorted class ids."""
    return labels_from_counts(inferred_counts(view, upload, knowledge))


@dataclass(frozen=True)
class LabelParams:
    target_client: int | None = bounded(None, min=0, doc="the client whose upload is attacked (default: the first participant)")
    evidence: Evidence = "bias"


@register_attack("labels", "label counts of one client from its update: iDLG sign rule, zero-shot counts, DLF's multi-step interpolation")
class LabelInference(HonestServerAttack):
    Params = LabelParams

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        upload = self.target(view)
        labels = labels_from_counts(inferred_counts(view, upload, knowledge, self.params.evidence))
        images = torch.empty(0, *knowledge.image_shape)
        diagnostics = {"probe_auxiliary": float(knowledge.auxiliary is not None), "samples": float(upload.num_samples)}
        return AttackOutput(images, (upload.client_id,), labels.cpu(), diagnostics)
