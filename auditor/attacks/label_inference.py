"""Label inference from a client's update (study, section III-A).

* iDLG's sign rule (Zhao et al.): for one sample's gradient, the true class is the only one
  whose last-layer bias gradient (or weight row, behind non-negative activations) is negative.
* Zero-shot batch label counts (Geng et al., eq. 6-7): the last layer's gradient holds
  ``mean_i (p_ic - y_ic)`` (times the activations); the mean prediction ``p_c`` (and the mean
  activation sum ``O``) are estimated by pushing probe images through the model.
* Several local steps (Dimitrov et al.'s DLF, eq. 8-9): the update is the sum of U steps'
  gradients; the per-step ``p_c`` and ``O`` are interpolated linearly between the model the
  server sent and the client's trained model (``start + update``), both of which the server has.
* RLU (Chen and Vikalo, eq. 13-17): a trained model's mean prediction on the client's data
  follows the client's labels, not the probe's, so DLF's class-blind mean misleads. RLU instead
  estimates, per true class c, the expected softmax ``E_c[p]`` on labelled probes (the
  auxiliary data), so the mean gradient is linear in the label shares ``pi``:
  ``g = M^T pi`` with ``M[c] = E_c[(p - e_c) * s]`` (``s`` = 1 for the bias, the activation sum
  for weight rows). ``M`` is averaged over the models along an estimated local trajectory and
  ``pi`` solved by least squares on the probability simplex. It is the default for multi-step
  updates when the attacker has labelled auxiliary data (``method="auto"``).

The single-step case is the zero-shot estimate (U = 1 interpolates nothing). Counts are
rounded to sum to the client's sample count, as the study prescribes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.toolkit.imprint import gradient_estimate, local_steps, momentum_coefficients
from flaudit.auditor.attacks.toolkit.label_counts import round_counts
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ClientUpload, ServerView, TrainingSpec

Evidence = Literal["bias", "weight"]
CountMethod = Literal["auto", "dlf", "rlu"]  # auto: RLU for multi-step updates with labelled probes, else DLF
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
class ProbeOutputs:
    """Per probe image: the softmax output ``[N, K]`` and the activation sum ``[N]`` of the
    last layer's inputs (``O`` in Geng et al.'s eq. 7)."""

    predictions: Tensor
    activation_sums: Tensor


@torch.no_grad()
def probe_outputs(model: nn.Module, layer: LastLayer, probe: Tensor) -> ProbeOutputs:
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
    return ProbeOutputs(F.softmax(logits, 1), captured[0].flatten(1).sum(1))


def project_to_simplex(v: Tensor) -> Tensor:
    """The closest point to ``v`` with non-negative entries summing to 1 (Duchi et al. 2008)."""
    ordered = v.sort(descending=True).values
    excess = ordered.cumsum(0) - 1
    ranks = torch.arange(1, len(v) + 1, device=v.device, dtype=v.dtype)
    last = int((ordered - excess / ranks > 0).nonzero().max())
    return (v - excess[last] / (last + 1)).clamp(min=0)


SIMPLEX_ITERATIONS = 2000


def simplex_least_squares(matrix: Tensor, target: Tensor) -> Tensor:
    """``argmin ||matrix @ x - target||`` over the probability simplex, by projected gradient
    descent (RLU's eq. 15; K is small, so a fixed number of exact-step iterations suffices)."""
    matrix, target = matrix.double(), target.double()
    step = 1 / max(float(torch.linalg.matrix_norm(matrix, 2)) ** 2, 1e-12)
    x = torch.full((matrix.shape[1],), 1 / matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for _ in range(SIMPLEX_ITERATIONS):
        x = project_to_simplex(x - step * matrix.T @ (matrix @ x - target))
    return x


@dataclass(frozen=True)
class CountProblem:
    """What every counting method reads: the model the server sent and the client's update
    (the ends of its local training), the labelled or unlabelled probe images, the number of
    local steps, the average per-step last-layer gradient as a class vector (bias, or
    weight-row sums) and whether it came from the weight rows (then each sample's residual is
    weighted by its activation sum)."""

    model: nn.Module
    layout: ParamLayout
    layer: LastLayer
    update: Tensor
    training: TrainingSpec
    steps: int
    probe: Tensor
    probe_labels: Tensor | None
    gradient: Tensor
    weighted: bool

    def outputs_at(self, fraction: float) -> ProbeOutputs:
        """The probe outputs at ``start + fraction * update`` (0: the sent model)."""
        if fraction == 0:
            return probe_outputs(self.model, self.layer, self.probe)
        moved = copy.deepcopy(self.model)
        self.layout.load(moved, self.layout.flatten(self.model).to(self.update) + fraction * self.update)
        return probe_outputs(moved, self.layer, self.probe)


def dlf_shares(problem: CountProblem) -> Tensor:
    """DLF (eq. 8-9): the label shares from the class-blind mean prediction, interpolated
    linearly over the steps between the sent and the trained model."""
    before, after = problem.outputs_at(0.0), problem.outputs_at(1.0)
    fraction = (torch.arange(problem.steps, device=problem.update.device, dtype=torch.float32) / problem.steps)[:, None]
    mean_before, mean_after = before.predictions.mean(0), after.predictions.mean(0)
    predictions = mean_before + fraction * (mean_after - mean_before)  # [U, K]
    if not problem.weighted:
        # bias gradient per step: mean_c(p) - n_c / B; summed over the steps of every epoch
        return predictions.mean(0) - problem.gradient
    # weight-row sums per step: O_u * (mean_c(p) - n_c / B)  (Geng et al.'s eq. 6-7)
    sum_before, sum_after = before.activation_sums.mean(), after.activation_sums.mean()
    sums = sum_before + fraction[:, 0] * (sum_after - sum_before)  # [U]
    return ((sums[:, None] * predictions).sum(0) - problem.gradient * problem.steps) / sums.sum()


def class_response(outputs: ProbeOutputs, labels: Tensor, weighted: bool) -> Tensor:
    """RLU's coefficient matrix ``M[c] = E_c[(p - e_c) * s]`` over the labelled probes ``[K, K]``;
    a class without probes gets the class-blind mean (DLF's assumption) in its row."""
    num_classes = outputs.predictions.shape[1]
    scale = outputs.activation_sums if weighted else torch.ones_like(outputs.activation_sums)
    residual = (outputs.predictions - F.one_hot(labels, num_classes).to(outputs.predictions)) * scale[:, None]
    seen = torch.bincount(labels, minlength=num_classes).to(residual)
    sums = torch.zeros(num_classes, num_classes, dtype=residual.dtype, device=residual.device).index_add_(0, labels, residual)
    fallback = (outputs.predictions * scale[:, None]).mean(0) - torch.eye(num_classes).to(residual) * scale.mean()
    return torch.where((seen == 0)[:, None], fallback, sums / seen.clamp(min=1)[:, None])


TRAJECTORY_GRID = 6  # models along the update at which RLU probes (interpolated in between)
TRAJECTORY_REFINEMENTS = 3  # re-estimates of the trajectory from the label shares found so far


def heavy_ball_positions(speed: Callable[[float], float], steps: int, momentum: float, scale: float) -> list[float]:
    """Where along the update (0: the sent model, 1: the trained one) each local step takes its
    gradient, when heavy-ball SGD's velocity gathers ``speed(position)`` per step and moves the
    model by ``velocity / scale`` of the update. A constant unit speed with ``scale`` the
    momentum coefficients' sum ends exactly at 1 (the constant-gradient trajectory)."""
    position, velocity, positions = 0.0, 0.0, []
    for _ in range(steps):
        positions.append(position)
        velocity = momentum * velocity + speed(position)
        position += velocity / scale
    return positions


def rlu_shares(problem: CountProblem) -> Tensor:
    """RLU (eq. 13-17): ``g = M^T pi`` with the class-conditional ``M`` averaged over the local
    steps as the update weighs them (momentum coefficients), solved for ``pi`` on the simplex.

    Where each step sits along the update is estimated, not assumed linear: a fitting model's
    gradients shrink, so it covers most of the way early. Starting from the constant-gradient
    trajectory, the gradient's size along the way is predicted from the shares found so far
    (``pi^T M(position)`` along the observed gradient) and the heavy-ball trajectory re-run."""
    labels = problem.probe_labels
    if labels is None:
        raise ConfigError("label counts method 'rlu' needs labelled probe images (the attacker's auxiliary data)")
    grid = torch.linspace(0, 1, TRAJECTORY_GRID)
    responses = torch.stack([class_response(problem.outputs_at(float(f)), labels, problem.weighted) for f in grid]).double()
    gradient = problem.gradient.double()
    coefficients = momentum_coefficients(problem.steps, problem.training.momentum).to(gradient)

    def response_at(position: float) -> Tensor:
        x = min(max(position, 0.0), 1.0) * (TRAJECTORY_GRID - 1)
        i = min(int(x), TRAJECTORY_GRID - 2)
        return responses[i] + (x - i) * (responses[i + 1] - responses[i])

    def solve(positions: list[float]) -> Tensor:
        response = sum(float(c) * response_at(p) for c, p in zip(coefficients, positions)) / coefficients.sum()
        return simplex_least_squares(response.T, gradient)

    def speed_of(shares: Tensor) -> Callable[[float], float]:
        return lambda position: float(shares @ response_at(position) @ direction)

    mu, total = problem.training.momentum, float(coefficients.sum())
    size = gradient.norm().clamp(min=1e-12)
    direction = gradient / size
    shares = solve(heavy_ball_positions(lambda position: 1.0, problem.steps, mu, total))
    for _ in range(TRAJECTORY_REFINEMENTS):
        shares = solve(heavy_ball_positions(speed_of(shares), problem.steps, mu, total * float(size)))
    return shares


COUNT_METHODS: dict[str, Callable[[CountProblem], Tensor]] = {"dlf": dlf_shares, "rlu": rlu_shares}


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
    probe_labels: Tensor | None = None,
    method: CountMethod = "auto",
) -> Tensor:
    """How many of the client's ``num_samples`` samples carry each class, from its ``update``.

    ``probe``: images to estimate the model's mean prediction with (the attacker's auxiliary
    data; default: uniform noise of ``image_shape``, Geng et al.'s dummy data). ``evidence``:
    read the last layer's bias (needs no activation approximation) or its weight rows (Geng
    et al.'s original); a model without a bias uses the weights. ``update`` may be any
    estimate of the client's update (the peer attack passes an estimated aggregate).
    ``method``: a key of ``COUNT_METHODS`` ("rlu" needs the ``probe_labels``), or "auto": RLU
    for multi-step updates when the probes are labelled (it beat DLF there), DLF otherwise.
    """
    steps = local_steps(num_samples, training)
    if method == "auto":
        method = "rlu" if steps > 1 and probe_labels is not None else "dlf"
    if method not in COUNT_METHODS:
        raise ConfigError(f"label counts method {method!r} must be one of {['auto', *sorted(COUNT_METHODS)]}")
    layer = last_layer(layout, num_classes)
    update = update.detach().to(next(model.parameters()).device)
    if num_samples == 1 and steps == 1:
        return F.one_hot(torch.tensor(idlg_label(layout, update, num_classes), device=update.device), num_classes)
    if probe is None:
        if image_shape is None:
            raise ConfigError("infer_label_counts: pass the probe images or the image_shape of uniform-noise probes")
        g = torch.Generator().manual_seed(seed)
        probe = torch.rand(PROBE_SAMPLES, *image_shape, generator=g).to(update.device)
    # the average per-step gradient (momentum undone as for a constant gradient), weight decay removed
    gradient = gradient_estimate(update, [num_samples], training)
    midway = layout.flatten(model).to(update.device) + update / 2
    gradient = layout.unflatten(gradient - training.weight_decay * midway)
    weighted = evidence == "weight" or layer.bias is None
    problem = CountProblem(
        model, layout, layer, update, training, steps, probe,
        probe_labels=None if probe_labels is None else probe_labels.to(update.device),
        gradient=gradient[layer.weight].sum(1) if weighted else gradient[layer.bias],
        weighted=weighted,
    )
    return round_counts(COUNT_METHODS[method](problem) * num_samples, num_samples)


def labels_from_counts(counts: Tensor) -> Tensor:
    """The label multiset as a sorted list of class ids."""
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def inferred_counts(
    view: ServerView,
    upload: ClientUpload,
    knowledge: AttackerKnowledge,
    evidence: Evidence = "bias",
    method: CountMethod = "auto",
) -> Tensor:
    """The label counts of ``upload``'s client, probing with the attacker's auxiliary images
    when it has some (RLU's choice), uniform noise otherwise (Geng et al.'s)."""
    aux = knowledge.auxiliary
    return infer_label_counts(
        view.model, view.layout, view.training, upload.update, upload.num_samples, knowledge.num_classes,
        probe=None if aux is None else aux.images[:PROBE_SAMPLES].to(knowledge.device),
        probe_labels=None if aux is None else aux.labels[:PROBE_SAMPLES],
        image_shape=knowledge.image_shape, evidence=evidence, seed=knowledge.seed, method=method,
    )


def inferred_labels(view: ServerView, upload: ClientUpload, knowledge: AttackerKnowledge) -> Tensor:
    """The label multiset of ``upload``'s client as sorted class ids."""
    return labels_from_counts(inferred_counts(view, upload, knowledge))


@dataclass(frozen=True)
class LabelParams:
    target_client: int | None = bounded(None, min=0, doc="the client whose upload is attacked (default: the first participant)")
    evidence: Evidence = "bias"
    method: CountMethod = "auto"


@register_attack("labels", "label counts of one client from its update: iDLG sign rule, zero-shot counts, DLF's or RLU's multi-step counts")
class LabelInference(HonestServerAttack):
    Params = LabelParams

    def prior_null(self, view, context: NullContext) -> None:
        """It returns no images; its labels' null is the label-blind guess."""
        return None

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        upload = self.target(view)
        labels = labels_from_counts(inferred_counts(view, upload, knowledge, self.params.evidence, self.params.method))
        images = torch.empty(0, *knowledge.image_shape)
        diagnostics = {"probe_auxiliary": float(knowledge.auxiliary is not None), "samples": float(upload.num_samples)}
        return AttackOutput(images, (upload.client_id,), labels.cpu(), diagnostics)
