"""Deep Models under the GAN (Hitaj et al., CCS 2017): a participating client trains a generator
against the shared model and makes its peers reveal one class.

Precondition: the global model carries an extra "fake" output class (``scenario.extra_classes``
>= 1); a client cannot add it, so without it the attack is not applicable. Every round the
adversarial client (a ``scenarios.hooks.AdversarialClient`` in place of its honest training)
(a) trains its generator until the received global model, the discriminator, classifies the
generated images as the tracked class, then (b) trains locally as a GAN with the round's
hyperparameters: on each batch of its own data the local model learns the batch plus fresh
generated images labelled "fake", and the generator answers with a step against it. It
uploads that local model: the victims who hold the tracked class must then sharpen the
model's idea of it, which the next round's generator exploits. The adversary sees only what a
client sees: the global models it receives and its own data.

``reconstruct`` runs step (a) once more against the newest global model (the attacked round's
result) and returns the generator's images. They are class prototypes, not particular
samples, and the adversary cannot know which peers hold the class, so the targets are all its
peers, and each image represents the tracked class (``AttackOutput.represents``): it succeeds
when it is closer (SSIM) to the mean of the tracked class's samples its peers hold than to
their mean of any other class. That is measured on the victims' data, not on the model the
generator was trained against (which would call any image it was optimised for the tracked
class). Precondition (Hitaj et al.): the adversary holds none of the tracked class, else
seeing it proves nothing; its null is then its own mean image (the class mean of its data).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import OWN_DATA, Attack, AttackerKnowledge, AttackOutput, NullContext, ThreatModel
from flaudit.auditor.attacks.toolkit.curious_client import needs_full_participation, peers
from flaudit.auditor.attacks.toolkit.generators import ImageGenerator
from flaudit.defenses.base import Defense
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.scenarios.scenario import ScenarioConfig, derive_seed
from flaudit.scenarios.views import ClientTrace, PeerView, TrainingSpec

SEED_STREAM = 5150  # derive_seed(scenario seed, SEED_STREAM, ...) seeds the adversary's draws


@dataclass(frozen=True)
class DmganParams:
    tracked_class: int = bounded(3, min=0, doc="the class the adversary wants to see (Hitaj et al. track MNIST 3)")
    latent_dim: int = bounded(32, min=1, doc="the generator's noise dimension")
    width: int = bounded(32, min=1, doc="channels of the generator's first feature map (GRNN's design, generators.py)")
    generator_steps: int = bounded(100, min=1, doc="most generator Adam steps per round against the received global model")
    generator_batch: int = bounded(32, min=1, doc="noise vectors per generator step")
    fooled_loss: float = bounded(
        0.3, min=0.0, doc="a generator round stops once its loss is below this (the discriminator is fooled): "
        "pushing further only saturates pixels"
    )
    generator_lr: float = bounded(1e-3, min=0.0, exclusive_min=True, doc="the generator's Adam learning rate")
    fake_ratio: float = bounded(
        1.0, min=0.0, exclusive_min=True, doc="generated images labelled 'fake' per own sample in each of the adversary's local batches"
    )
    images: int = bounded(16, min=1, doc="images the attack outputs, and tracks round by round")


def frozen(model: nn.Module) -> nn.Module:
    """A copy of the global model in eval mode with no gradients of its own: the adversary
    reads it without touching the model the other clients train."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class GanClient:
    """The adversarial client: its generator, trained round after round against the global
    model, and the generator's images of the fixed tracking noise after every round."""

    def __init__(self, params: DmganParams, knowledge: AttackerKnowledge) -> None:
        self.params = params
        self.knowledge = knowledge
        self.fake_class = knowledge.num_classes  # the first class beyond the data's
        self.rng = torch.Generator().manual_seed(derive_seed(knowledge.seed, SEED_STREAM))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(knowledge.seed, SEED_STREAM, 0))
            self.generator = ImageGenerator(params.latent_dim, knowledge.image_shape, params.width).to(knowledge.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=params.generator_lr, betas=(0.5, 0.999))
        self.tracking_noise = self.noise(params.images)
        self.client_id: int | None = None
        self.first_model: nn.Module | None = None  # the global model as first received: no victim has trained it
        self.history: list[torch.Tensor] = []  # per generator round: the tracking noise's images
        self.own_tracked_samples = 0
        self.last_loss = float("nan")

    def noise(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.params.latent_dim, generator=self.rng).to(self.knowledge.device)

    @torch.no_grad()
    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise).detach()

    def check_fake_class(self, logits: torch.Tensor) -> None:
        if logits.shape[1] <= self.fake_class:
            raise FlauditError(
                f"dmgan: the global model has {logits.shape[1]} outputs, no 'fake' class beyond the data's "
                f"{self.fake_class} (set scenario.extra_classes = 1)"
            )

    def generator_step(self, discriminator: nn.Module) -> float:
        """One Adam step of the generator towards ``discriminator`` saying the tracked class."""
        batch = self.params.generator_batch
        logits = discriminator(self.generator(self.noise(batch)))
        self.check_fake_class(logits)
        target = torch.full((batch,), self.params.tracked_class, device=logits.device)
        loss = F.cross_entropy(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.last_loss = float(loss.detach())
        return self.last_loss

    def train_generator(self, model: nn.Module) -> None:
        """Step (a): the generator learns to make the received global model say the tracked class."""
        discriminator = frozen(model)
        for _ in range(self.params.generator_steps):
            if self.generator_step(discriminator) < self.params.fooled_loss:
                break

    def local_update(
        self, client_id: int, round_index: int, model: nn.Module, loader: DataLoader, spec: TrainingSpec
    ) -> tuple[nn.Module, ClientTrace]:
        """Step (a), then (b) as a local GAN with the round's hyperparameters: on every batch of
        its own data the local model (the discriminator) takes an SGD step on the batch plus
        fresh generated images labelled 'fake', and the generator a step against it. The local
        model is the upload; the trace records the adversary's own samples only."""
        self.client_id = client_id
        if self.first_model is None:
            self.first_model = frozen(model)
        self.train_generator(model)
        self.history.append(self.generate(self.tracking_noise).cpu())
        local = copy.deepcopy(model).train()
        optimizer = torch.optim.SGD(local.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        device = self.knowledge.device
        batches, tracked = [], set()
        for _ in range(spec.epochs):
            for images, labels, indices in loader:
                count = max(1, round(self.params.fake_ratio * len(labels)))
                inputs = torch.cat([images.to(device), self.generate(self.noise(count))])
                targets = torch.cat([labels.to(device), torch.full((count,), self.fake_class, device=device)])
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(local(inputs), targets).backward()
                optimizer.step()
                self.generator_step(local.eval())
                local.train()
                batches.append(indices.clone())
                tracked.update(indices[labels == self.params.tracked_class].tolist())
        self.own_tracked_samples = len(tracked)
        seen = torch.cat(batches).unique() if batches else torch.empty(0, dtype=torch.long)
        return local, ClientTrace(client_id, seen, tuple(batches))


@register_attack("dmgan", "Deep Models under the GAN: a client's generator against the shared model (needs a 'fake' class)")
class Dmgan(Attack):
    threat_model = ThreatModel.CURIOUS_CLIENT
    Params = DmganParams
    profiles = {"full": {"latent_dim": 100, "width": 64, "generator_steps": 200, "generator_batch": 64, "images": 64}}

    def __init__(self, params: DmganParams | None = None) -> None:
        super().__init__(params)
        self.adversary: GanClient | None = None

    def not_applicable(self, scenario: ScenarioConfig, defenses: Sequence[Defense]) -> str | None:
        if scenario.extra_classes < 1:
            return (
                "dmgan needs the global model to carry an extra 'fake' output class (scenario.extra_classes "
                ">= 1): the server must add it, a client cannot"
            )
        return needs_full_participation(self.name, scenario) or super().not_applicable(scenario, defenses)

    def prepare(self, knowledge: AttackerKnowledge) -> GanClient:
        if self.params.tracked_class >= knowledge.num_classes:
            raise ConfigError(
                f"attack.dmgan.tracked_class={self.params.tracked_class}: the data has {knowledge.num_classes} classes"
            )
        self.adversary = GanClient(self.params, knowledge)
        return self.adversary

    def prior_null(self, view, context: NullContext) -> torch.Tensor | None:
        """The same generator trained as many generator rounds against the first global model
        the adversary received (before any victim trained it), so it carries nothing of the
        victims; the class mean of its data (it holds none of the tracked class) is the
        ``mean`` null."""
        adversary = self.adversary
        if adversary is None or adversary.first_model is None:
            return None
        blind = GanClient(self.params, adversary.knowledge)
        for _ in adversary.history:
            blind.train_generator(adversary.first_model)
        return blind.generate(blind.tracking_noise)[: context.count].cpu()

    def reconstruct(self, view: PeerView, knowledge: AttackerKnowledge) -> AttackOutput:
        adversary = self.adversary
        if adversary is None or adversary.client_id is None:
            raise FlauditError("dmgan: the adversarial client never trained (its hook was not installed)")
        if adversary.client_id != view.client_id:
            raise FlauditError(
                f"dmgan: the adversarial client is client {adversary.client_id}, the view is client {view.client_id}'s"
            )
        tracked = self.params.tracked_class
        own = OWN_DATA[self.threat_model](view, knowledge)
        held = int((own.labels == tracked).sum()) if own.labels is not None else 0
        if held:
            raise FlauditError(
                f"dmgan presumes the adversary holds none of the tracked class {tracked}; client {view.client_id} holds "
                f"{held} (set attack.dmgan.tracked_class to a class it lacks, or audit.attacker_client)"
            )
        adversary.train_generator(view.model_after)
        images = adversary.generate(adversary.tracking_noise)
        adversary.history.append(images.cpu())
        with torch.no_grad():
            predicted = frozen(view.model_after)(images).argmax(1)
        diagnostics = {
            "tracked_class": float(self.params.tracked_class),
            "tracked_class_share": float((predicted == self.params.tracked_class).float().mean()),
            "fake_class_share": float((predicted == adversary.fake_class).float().mean()),
            "generator_rounds": float(len(adversary.history)),
            "generator_loss": adversary.last_loss,
            "own_tracked_samples": float(adversary.own_tracked_samples),
        }
        represents = torch.full((len(images),), tracked, dtype=torch.long)
        return AttackOutput(images.cpu(), target_clients=peers(view, knowledge), diagnostics=diagnostics, represents=represents)
