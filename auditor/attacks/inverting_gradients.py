"""Inverting Gradients (Geiping et al., NeurIPS 2020), on a client's real FedAvg update.

A dummy dataset of the client's size, with the label counts inferred from the update
(``label_inference``), is optimised so that the update its simulated local training produces
(``simulate_update``: E epochs of B-batches with the round's lr/momentum/weight decay) points
the same way as the observed one: cosine distance (insensitive to the unknown effective step
size) plus total variation, Adam on the signed gradient with step decay at 3/8, 5/8 and 7/8 of
the budget, pixels boxed to [0, 1], several restarts (batched: ``simulate_updates``) keeping
the lowest loss. With E=1 and N <= B this is the paper's single-gradient attack, whose
restarts share the model's weights in one pass (``toolkit.one_step_matching``). The
simulation fixes the batch order (the client's shuffle is unknown): one source of the mismatch
the study reports on multi-step updates.
"""

from __future__ import annotations

import torch

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.label_inference import inferred_labels
from flaudit.auditor.attacks.toolkit.update_inversion import IgParams, invert_update
from flaudit.scenarios.views import ServerView


@register_attack("ig", "Inverting Gradients: cosine matching of the simulated local update, TV prior, inferred labels")
class InvertingGradients(HonestServerAttack):
    Params = IgParams
    profiles = {"full": {"iterations": 24000, "restarts": 4}}

    label_step = "labels"  # its label step is the labels row

    def prior_null(self, view, context: NullContext) -> torch.Tensor | None:
        """One image per inferred label: the attacker's class means of the label-blind labels."""
        return context.class_means()

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        upload = self.target(view)
        labels = inferred_labels(view, upload, knowledge)
        images = invert_update(
            upload.update, view.model, view.layout, view.training, labels, knowledge.image_shape, self.params,
            seed=knowledge.seed,
        )
        return AttackOutput(images.cpu(), (upload.client_id,), labels.cpu(), {"images": float(len(images))})
