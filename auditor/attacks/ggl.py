"""GGL, Generative Gradient Leakage (Li et al., CVPR 2022): search the latent space of a
generator trained on the attacker's auxiliary data, with CMA-ES, for the one image whose
simulated update matches the client's.

The label is read from the update first (iDLG's sign rule for a single gradient, the
label-count inference otherwise; GGL reconstructs ONE image, so it takes the most frequent
inferred class) and fixed; the latent is searched gradient-free (CMA-ES avoids the local minima
a gradient search through the generator gets stuck in), minimising the gradient distance of
the generated image's simulated local training (``update_objective``: E epochs of the known
hyperparameters; a CMA-ES generation is matched in one pass) plus GGL's latent regulariser,
which keeps the latent's mean square near the prior's 1 so the image stays on the generator's
manifold.

The generator is a label-conditional VAE decoder trained on ``knowledge.auxiliary`` the first
time it is needed (a preparation: every round and defense of an audit shares it); it is not
trained in ``prepare``, because an attack that overrides ``prepare`` is taken to shape the
server's model and gets a simulation of its own. ``pretrained_generator=False`` is the study's
control (section IV-J): the same search through the same decoder at its random initialisation,
which tells how much of GGL's result the gradient, rather than the prior, is responsible for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import cma
import numpy as np
import torch

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.generators import ConditionalDecoder, DecoderSpec, trained_decoder, untrained_decoder
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.toolkit.imprint import local_steps
from flaudit.auditor.attacks.label_inference import inferred_labels
from flaudit.auditor.attacks.toolkit.local_update import parameter_mask
from flaudit.auditor.attacks.toolkit.update_inversion import update_objective
from flaudit.defenses.base import Defense
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.scenario import ScenarioConfig, derive_seed
from flaudit.scenarios.views import ServerView
from flaudit.core.progress import step_bar

PRIOR_SEED_STREAM = 6161  # derive_seed stream of the generator's initialisation and training
SEARCH_SEED_STREAM = 6162  # derive_seed stream of CMA-ES's sampling


@dataclass(frozen=True)
class GglParams:
    pretrained_generator: bool = True
    evaluations: int = bounded(400, min=1, doc="CMA-ES evaluations of the matching loss (the paper: 25000)")
    population: int | None = bounded(None, min=2, doc="CMA-ES population per generation (default: cma's 4 + 3 ln d)")
    sigma: float = bounded(0.5, min=0.0, exclusive_min=True, doc="CMA-ES initial step size in latent units (the prior's std is 1)")
    distance: Literal["cosine", "l2"] = "cosine"
    latent_weight: float = bounded(0.1, min=0.0, doc="weight of GGL's latent regulariser (mean(z^2) - 1)^2")
    latent_dim: int = bounded(16, min=1, doc="the generator's latent size")
    width: int = bounded(32, min=4, doc="channels of the generator's 4x4 map")
    prior_steps: int = bounded(200, min=1, doc="Adam steps of the generator's VAE training on the auxiliary data")
    prior_batch: int = bounded(32, min=1, doc="auxiliary images per VAE training step")
    prior_lr: float = bounded(3e-3, min=0.0, exclusive_min=True, doc="Adam learning rate of the VAE training")
    target_client: int | None = bounded(None, min=0, doc="the client attacked (default: the round's first participant)")


def search_latent(
    losses: Callable[[Sequence[np.ndarray]], list[float]], p: GglParams, seed: int
) -> tuple[np.ndarray, float, int]:
    """CMA-ES from the latent origin (the prior's mean) with step size ``p.sigma``, until
    ``p.evaluations`` or cma's own convergence tests stop it; ``losses`` scores a generation at
    once. Returns the best latent, its loss and the evaluations spent."""
    options = {"seed": seed % (2**31 - 2) + 1, "maxfevals": p.evaluations, "verbose": -9}  # cma: seed 0 = random
    if p.population is not None:
        options["popsize"] = p.population
    search = cma.CMAEvolutionStrategy(np.zeros(p.latent_dim), p.sigma, options)
    with step_bar(total=p.evaluations, desc="ggl") as progress:
        while not search.stop():
            candidates = search.ask()
            search.tell(candidates, losses(candidates))
            progress.update(len(candidates))
    return np.asarray(search.result.xbest), float(search.result.fbest), int(search.result.evaluations)


@register_attack("ggl", "GGL: CMA-ES search of a generator's latent (trained on auxiliary data) to match one client's update")
class Ggl(HonestServerAttack):
    Params = GglParams
    profiles = {"full": {"evaluations": 25000, "prior_steps": 3000}}
    label_step = "labels"  # its label step is the labels row

    def not_applicable(self, scenario: ScenarioConfig, defenses: Sequence[Defense]) -> str | None:
        reason = super().not_applicable(scenario, defenses)
        if reason is None and self.params.pretrained_generator and scenario.auxiliary_samples == 0:
            return "ggl trains its generator on the attacker's auxiliary data: set scenario.auxiliary_samples"
        return reason

    def generator(self, knowledge: AttackerKnowledge, device: torch.device) -> ConditionalDecoder:
        p = self.params
        seed = derive_seed(knowledge.seed, PRIOR_SEED_STREAM)
        if not p.pretrained_generator:
            return untrained_decoder(p.latent_dim, knowledge.num_classes, knowledge.image_shape, p.width, seed, device)
        if knowledge.auxiliary is None:
            raise ConfigError("ggl trains its generator on the attacker's auxiliary data: set scenario.auxiliary_samples")
        spec = DecoderSpec(p.latent_dim, p.width, p.prior_steps, p.prior_batch, p.prior_lr, seed)
        return trained_decoder(knowledge.prepared, knowledge.auxiliary, spec, device)

    def prior_null(self, view: ServerView, context: NullContext) -> torch.Tensor | None:
        """The generator with no update to match: its image at the latent origin (where the
        search starts) of the label-blind guess's most frequent label."""
        if context.labels is None:
            return None
        label = torch.bincount(context.labels, minlength=context.knowledge.num_classes).argmax()[None]
        device = context.knowledge.device
        decoder = self.generator(context.knowledge, device)
        with torch.no_grad():
            image = decoder(torch.zeros(1, self.params.latent_dim, device=device), label.to(device))
        return image.expand(context.count, -1, -1, -1)

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        p = self.params
        upload = self.target(view)
        device = next(view.model.parameters()).device
        decoder = self.generator(knowledge, device)
        inferred = inferred_labels(view, upload, knowledge)
        label = torch.bincount(inferred, minlength=knowledge.num_classes).argmax()[None].to(device)
        # one generated image's update, scaled to the client's steps: for L2, matching it to
        # observed / ratio relative to that one's energy is the same number
        step_ratio = local_steps(upload.num_samples, view.training) / local_steps(1, view.training)
        observed = upload.update.to(device) / step_ratio
        matching = update_objective(observed, view.model, view.layout, view.training, label, distance=p.distance, tv_weight=0.0)
        normaliser = 1.0
        if p.distance == "l2":  # relative to the observed update's energy, so latent_weight means the same at any lr
            normaliser = observed[parameter_mask(view.layout).to(device)].square().sum().clamp(min=1e-30).item()

        def losses(latents: Sequence[np.ndarray]) -> list[float]:
            """One CMA-ES generation's losses, its images matched as many per call as
            ``matching`` takes."""
            z = torch.as_tensor(np.stack(latents), dtype=torch.float32, device=device)
            with torch.no_grad():
                images = decoder(z, label.expand(len(z)))
            distances = torch.cat([matching(images[part, None]).detach() for part in matching.passes(len(z))])
            return (distances / normaliser + p.latent_weight * (z.square().mean(1) - 1) ** 2).tolist()

        seed = derive_seed(knowledge.seed, SEARCH_SEED_STREAM, view.round_index, upload.client_id)
        start = losses([np.zeros(p.latent_dim)])[0]
        best, best_loss, evaluations = search_latent(losses, p, seed)
        if best_loss >= start:  # the search never beat the prior's mean image
            best, best_loss = np.zeros(p.latent_dim), start
        with torch.no_grad():
            image = decoder(torch.as_tensor(best, dtype=torch.float32, device=device)[None], label)
        diagnostics = {
            "loss_start": start,
            "loss": best_loss,
            "evaluations": float(evaluations),
            "label": float(label.item()),
            "pretrained_generator": float(p.pretrained_generator),
        }
        return AttackOutput(image.cpu(), (upload.client_id,), label.cpu(), diagnostics)
