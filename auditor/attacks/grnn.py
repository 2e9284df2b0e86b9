"""GRNN (Ren et al., ACM TIST 2022): a generator whose weights, not its input, are optimised so
that the update its images and soft labels would produce matches the client's observed update.

The study's Algorithm 4: fixed Gaussian noise goes through a generator with two heads, images
(``ImageGenerator``, GLU blocks) and soft labels (a linear layer and a softmax); each iteration
simulates the client's local training on the generated pair (``simulate_update``: E epochs of
B-batches, the round's lr and momentum) and takes an RMSprop step on the generator's weights
against L2 + Wasserstein distance + total variation. No pretrained prior is needed: the
generator's structure is the prior.

Departures from the reference code: the L2 and Wasserstein terms are relative to the observed
update's energy (an update is lr x a sum of gradients, so its raw scale changes with lr, epochs
and client size; relative, the weights mean the same in every setting); the Wasserstein term is
the real 1-D Wasserstein-2 distance between the value distributions of each layer's candidate
and observed update (the reference's ``wasserstein_distance`` reduces to the L2 norm of the
difference); the TV term is the shared anisotropic one (mean absolute neighbour difference, the
reference squares the differences); the images returned are those of the lowest objective seen.
The default budget (100 iterations at lr 1e-3) fits an audit cell; the paper's (1000 at 1e-4,
momentum 0.99) is the ``full`` profile. GRNN reconstructs one batch (the study sets the reconstruction batch
to the local batch size); when the client holds more samples than that, the simulated update of
the generated batch is scaled by the ratio of the client's local steps to the batch's, a
first-order stand-in for the steps the missing samples would have taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.generators import ImageGenerator
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.toolkit.imprint import local_steps
from flaudit.auditor.attacks.toolkit.image_priors import total_variation
from flaudit.auditor.attacks.toolkit.local_update import gradient_distance, parameter_mask, simulate_update
from flaudit.core.tables import bounded
from flaudit.core.errors import FlauditError
from flaudit.scenarios.scenario import derive_seed
from flaudit.scenarios.updates import ParamLayout
from flaudit.scenarios.views import ServerView
from flaudit.core.progress import step_bar

SEED_STREAM = 5151  # derive_seed stream of the generator's initialisation and input noise


@dataclass(frozen=True)
class GrnnParams:
    iterations: int = bounded(100, min=1, doc="RMSprop steps on the generator's weights (the paper: 1000)")
    lr: float = bounded(1e-3, min=0.0, exclusive_min=True, doc="RMSprop learning rate (the paper: 1e-4)")
    momentum: float = bounded(0.9, min=0.0, max=1.0, doc="RMSprop momentum (the paper: 0.99)")
    latent_dim: int = bounded(128, min=1, doc="size of the fixed noise vectors fed to the generator")
    width: int = bounded(64, min=4, doc="channels of the generator's 4x4 map (halved by each upsampling block)")
    images: int | None = bounded(
        None, min=1,
        doc="images generated (default: one local batch, as in the study); at most the target's sample count, "
        "which reproduces its local steps exactly (better on multi-step updates, slower)",
    )
    wasserstein_weight: float = bounded(1.0, min=0.0, doc="weight of the per-layer Wasserstein-2 term")
    wasserstein_entries: int = bounded(4096, min=1, doc="entries per layer the Wasserstein term compares (a fixed random subset)")
    tv_weight: float = bounded(1e-3, min=0.0, doc="weight of the generated images' total variation")
    target_client: int | None = bounded(None, min=0, doc="the client attacked (default: the round's first participant)")


class GrnnGenerator(nn.Module):
    """Noise ``[N, latent_dim]`` -> (images ``[N, C, H, W]`` in (0, 1), soft labels ``[N, classes]``)."""

    def __init__(self, latent_dim: int, num_classes: int, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.images = ImageGenerator(latent_dim, image_shape, width)
        self.labels = nn.Linear(latent_dim, num_classes)

    def forward(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        return self.images(noise), self.labels(noise).softmax(dim=1)


class LayerWasserstein:
    """Sum over parameter tensors of n * W2^2 between the empirical distributions of a
    candidate's and the observed update's entries (sorted values paired in order, the optimal
    coupling in 1-D): it compares how each layer's update is spread, whatever sits where. A
    layer of more than ``entries`` values is compared on a fixed random subset of them (scaled
    back to n), because sorting a whole large layer every iteration costs more than simulating
    the local training."""

    def __init__(self, observed: Tensor, layout: ParamLayout, entries: int, seed: int) -> None:
        draws = torch.Generator().manual_seed(seed)
        self.parts: list[tuple[Tensor, Tensor, float]] = []  # (flat indices, sorted observed, n / m)
        offset = 0
        for shape, is_param in zip(layout.shapes, layout.is_parameter):
            n = shape.numel()
            if is_param:
                pick = torch.randperm(n, generator=draws)[:entries] if n > entries else torch.arange(n)
                index = (offset + pick).to(observed.device)
                self.parts.append((index, observed[index].sort().values, n / len(pick)))
            offset += n

    def __call__(self, candidate: Tensor) -> Tensor:
        total = candidate.new_zeros(())
        for index, observed_sorted, scale in self.parts:
            total = total + scale * (candidate[index].sort().values - observed_sorted).square().sum()
        return total


@register_attack("grnn", "GRNN: optimises a generator's weights so its images' simulated update matches the client's")
class Grnn(HonestServerAttack):
    Params = GrnnParams
    profiles = {"full": {"iterations": 1000, "lr": 1e-4, "momentum": 0.99}}

    def prior_null(self, view, context: NullContext) -> torch.Tensor | None:
        """Images with generated labels: the attacker's class means of the label-blind labels."""
        return context.class_means()

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        p = self.params
        upload = self.target(view)
        model, layout, training = view.model, view.layout, view.training
        device = next(model.parameters()).device
        observed = upload.update.to(device)
        # parameter entries (BatchNorm statistics carry no gradient), by index: boolean masking
        # of a whole update costs more than simulating a step of a small model
        entries = parameter_mask(layout).nonzero().squeeze(1).to(device)
        count = min(p.images or training.batch_size, upload.num_samples)
        if count == 0:
            raise FlauditError(f"grnn: client {upload.client_id} trained on no samples in round {view.round_index}")
        step_ratio = local_steps(upload.num_samples, training) / local_steps(count, training)
        observed_params = observed.index_select(0, entries)
        energy = observed_params.square().sum().clamp(min=1e-30)

        seed = derive_seed(knowledge.seed, SEED_STREAM, view.round_index, upload.client_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = GrnnGenerator(p.latent_dim, knowledge.num_classes, knowledge.image_shape, p.width).to(device)
            noise = torch.randn(count, p.latent_dim).to(device)  # drawn on the CPU: the same on any device
        wasserstein_distance = LayerWasserstein(observed, layout, p.wasserstein_entries, seed)
        optimizer = torch.optim.RMSprop(generator.parameters(), lr=p.lr, momentum=p.momentum)
        best = (float("inf"), None, None, {})
        for _ in step_bar(range(p.iterations), desc="grnn"):
            images, soft_labels = generator(noise)
            candidate = step_ratio * simulate_update(model, layout, training, images, soft_labels)
            l2 = gradient_distance(candidate.index_select(0, entries), observed_params, "l2") / energy
            wasserstein = wasserstein_distance(candidate) / energy
            tv = total_variation(images).mean()
            loss = l2 + p.wasserstein_weight * wasserstein + p.tv_weight * tv
            if loss.item() < best[0]:
                terms = {"l2": l2.item(), "wasserstein": wasserstein.item(), "tv": tv.item()}
                best = (loss.item(), images.detach(), soft_labels.detach(), terms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        loss, images, soft_labels, terms = best
        diagnostics = {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()}, "images": float(count), "step_ratio": step_ratio}
        return AttackOutput(images.cpu(), (upload.client_id,), soft_labels.argmax(dim=1).cpu(), diagnostics)
