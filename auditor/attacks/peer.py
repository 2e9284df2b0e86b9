"""Peer reconstruction (Wilson et al., "Federated Learning Nodes Can Reconstruct Peers' Image
Data"): an honest-but-curious client inverts its peers' diluted updates.

The client sees the global models before and after the round and its own update. FedAvg moved
the model by the sample-weighted mean of every participant's update, so

    sum over peers k of n_k * update_k = (W_after - W_before) * N - n_own * update_own,

with N the round's total sample count (``others_update``). What the client must assume, as the
paper does: the number of participants (from the view when the protocol reveals it, else the
client roster: full participation) and the peers' sample counts (each as many as its own,
unless ``peer_samples`` says otherwise). Exact when those hold; otherwise the estimate keeps
a share of the client's own update (as it keeps what update transforms such as noise or
compression did to the client's own upload: the view's own update is the one before them).

Equal-size peers that run the same number of local steps move the model, on average, like one
client training on their union with a batch (P - 1) times larger (exact for one local step), so
the peers' mean update is inverted as that virtual client's with the Inverting Gradients
machinery (``invert_update``) and its inferred label counts (``infer_label_counts``, whose
mean-prediction probe is the client's own images). Prior ``local_autoencoder`` adds the
reconstruction error of a denoising autoencoder trained on the client's own training images of
the round (``PeerView.own_data``: a client holds its data, so it needs no auxiliary set) in
place of the paper's pretrained diffusion model, which cannot be downloaded here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel, NullContext
from flaudit.auditor.attacks.toolkit.curious_client import needs_full_participation, peers
from flaudit.auditor.attacks.toolkit.update_inversion import IgParams, invert_update
from flaudit.auditor.attacks.label_inference import PROBE_SAMPLES, infer_label_counts, labels_from_counts
from flaudit.auditor.attacks.toolkit.learned_prior import AutoencoderSpec, autoencoder_penalty, reconstruction_error, trained_autoencoder
from flaudit.defenses.base import Defense
from flaudit.core.tables import bounded
from flaudit.scenarios.scenario import ScenarioConfig
from flaudit.scenarios.views import PeerView, TrainingSpec

Prior = Literal["none", "local_autoencoder"]


@dataclass(frozen=True)
class PeerParams:
    prior: Prior = "none"
    peer_samples: int | None = bounded(
        None, min=1, doc="samples each peer trains on; None: as many as the attacker (the paper's assumption)"
    )
    iterations: int = bounded(8, min=1, doc="Adam steps per restart of the inversion")
    restarts: int = bounded(1, min=1, doc="independent initialisations of the inversion; the lowest loss is kept")
    lr: float = bounded(0.1, min=0.0, exclusive_min=True, doc="the inversion's step size on the signed gradient")
    tv_weight: float = bounded(1e-4, min=0.0, doc="weight of the total-variation prior")
    prior_weight: float = bounded(0.3, min=0.0, doc="weight of the autoencoder's reconstruction error (prior local_autoencoder)")
    prior_steps: int = bounded(200, min=1, doc="Adam steps training the autoencoder on the attacker's own images")
    prior_width: int = bounded(16, min=1, doc="channels of the autoencoder's first layer")
    prior_noise: float = bounded(0.1, min=0.0, doc="std of the noise the autoencoder learns to remove")


def others_update(view: PeerView, total_samples: int) -> Tensor:
    """The peers' sample-weighted update sum, ``sum_k n_k * update_k`` (float64), from the
    global change and the attacker's own contribution, given the round's total sample count."""
    return view.global_change.double() * total_samples - view.own_num_samples * view.own_update.double()


@dataclass(frozen=True)
class PeerEstimate:
    """What the curious client makes of its peers: who they are, how many samples it assumes
    they hold together, and their sample-weighted mean update."""

    clients: tuple[int, ...]
    samples: int
    mean_update: Tensor


def estimate_peers(view: PeerView, knowledge: AttackerKnowledge, peer_samples: int | None) -> PeerEstimate:
    """The peers' mean update, each peer assumed to hold ``peer_samples`` samples (None: as many
    as the attacker)."""
    clients = peers(view, knowledge)
    samples = (peer_samples or view.own_num_samples) * len(clients)
    total = view.own_num_samples + samples
    return PeerEstimate(clients, samples, others_update(view, total) / samples)


def virtual_training(training: TrainingSpec, peer_count: int) -> TrainingSpec:
    """The local training of one client standing for ``peer_count`` equal-size peers: the same
    steps on their union, batches ``peer_count`` times larger."""
    return dataclasses.replace(training, batch_size=training.batch_size * peer_count)


@register_attack("peer", "a curious client inverts its peers' aggregate update from consecutive global models (+ local prior)")
class PeerReconstruction(Attack):
    threat_model = ThreatModel.CURIOUS_CLIENT
    Params = PeerParams
    profiles = {"full": {"iterations": 24000, "restarts": 4, "prior_steps": 5000, "prior_width": 32}}

    def not_applicable(self, scenario: ScenarioConfig, defenses: Sequence[Defense]) -> str | None:
        return needs_full_participation(self.name, scenario) or super().not_applicable(scenario, defenses)

    def prior_null(self, view: PeerView, context: NullContext) -> torch.Tensor | None:
        """One image per inferred label: the attacker's class means of the label-blind labels
        (its label step is its own: no other row reports it)."""
        return context.class_means()

    def reconstruct(self, view: PeerView, knowledge: AttackerKnowledge) -> AttackOutput:
        params = self.params
        estimate = estimate_peers(view, knowledge, params.peer_samples)
        observed, peer_total = estimate.mean_update.float(), estimate.samples
        training = virtual_training(view.training, len(estimate.clients))
        model, layout = view.model_before, view.layout
        counts = infer_label_counts(
            model, layout, training, observed, peer_total, knowledge.num_classes,
            probe=view.own_data.images[:PROBE_SAMPLES].to(knowledge.device),
            image_shape=knowledge.image_shape, seed=knowledge.seed,
        )
        labels = labels_from_counts(counts)
        diagnostics = {
            "peers": float(len(estimate.clients)),
            "participants_known": float(view.num_participants is not None),
            "assumed_peer_samples": float(estimate.samples / len(estimate.clients)),
            "images": float(peer_total),
            "prior_local_autoencoder": float(params.prior == "local_autoencoder"),
        }
        regularizer = None
        if params.prior == "local_autoencoder":
            regularizer, prior_figures = self.local_prior(view, knowledge)
            diagnostics.update(prior_figures)
        ig = IgParams(iterations=params.iterations, restarts=params.restarts, lr=params.lr, tv_weight=params.tv_weight)
        images = invert_update(
            observed, model, layout, training, labels, knowledge.image_shape, ig,
            regularizer=regularizer, seed=knowledge.seed,
        )
        return AttackOutput(images.cpu(), estimate.clients, labels.cpu(), diagnostics)

    def local_prior(self, view: PeerView, knowledge: AttackerKnowledge) -> tuple[Callable[[Tensor], Tensor], dict[str, float]]:
        """The regularizer of prior ``local_autoencoder``, trained on the attacker's own training
        images of the round, and its figures for the diagnostics."""
        own, params = view.own_data, self.params
        spec = AutoencoderSpec(params.prior_width, params.prior_steps, 64, 1e-3, params.prior_noise, knowledge.seed)
        autoencoder = trained_autoencoder(knowledge.prepared, own, spec, knowledge.device)
        with torch.no_grad():
            error = float(reconstruction_error(autoencoder, own.images.to(knowledge.device)))
        figures = {"prior_own_training_images": float(len(own)), "prior_error_on_own_images": error}
        return autoencoder_penalty(autoencoder, params.prior_weight), figures
