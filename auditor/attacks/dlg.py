"""Deep Leakage from Gradients (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020).

Both treat the client's update as ONE gradient of ONE batch, as the papers do: a dummy batch
(of the local batch size, or the client's size if smaller; the study's setting) is optimised
with L-BFGS so that its gradient matches ``-update / lr`` in squared L2 distance. DLG also
optimises the dummy labels (softmax of free logits); iDLG fixes them from the update (the sign
rule for one sample, the zero-shot/DLF counts for a batch). On a single gradient this is exact;
on a real FedAvg update (several momentum steps over different batches) the observed vector is
not a gradient of any batch, which is what the study shows breaks these attacks.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import AttackerKnowledge, AttackOutput, NullContext
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.auditor.attacks.label_inference import inferred_counts, labels_from_counts, round_counts
from flaudit.auditor.attacks.toolkit.local_update import gradient_distance, parameter_mask, simulate_update
from flaudit.core.tables import bounded
from flaudit.scenarios.views import ClientUpload, ServerView


@dataclass(frozen=True)
class DlgParams:
    target_client: int | None = bounded(None, min=0, doc="the client whose upload is attacked (default: the first participant)")
    iterations: int = bounded(100, min=1, doc="L-BFGS iterations (the study: 300)")
    images: int | None = bounded(None, min=1, doc="dummy batch size (default: min(client samples, local batch size))")
    lr: float = bounded(1.0, min=0.0, exclusive_min=True, doc="L-BFGS step size")
    history: int = bounded(100, min=1, doc="L-BFGS memory")


class GradientLeakage(HonestServerAttack):
    """DLG's loop; subclasses say how the dummy labels are obtained."""

    Params = DlgParams
    profiles = {"full": {"iterations": 300}}

    @abstractmethod
    def dummy_labels(
        self, view: ServerView, upload: ClientUpload, knowledge: AttackerKnowledge, n: int, generator: torch.Generator
    ) -> tuple[list[Tensor], Callable[[], Tensor]]:
        """The label variables L-BFGS also optimises, and the labels (ids or probabilities)."""

    def prior_null(self, view, context: NullContext) -> None:
        """Dummies start from uniform noise: no prior beyond the attacker's data (its nulls)."""
        return None

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        upload = self.target(view)
        device = next(view.model.parameters()).device
        n = self.params.images or min(upload.num_samples, view.training.batch_size)
        one_step = dataclasses.replace(view.training, epochs=1, batch_size=n)
        observed = upload.update.detach().to(device) / view.training.lr  # = -gradient for one step
        mask = parameter_mask(view.layout).to(device)
        generator = torch.Generator().manual_seed(knowledge.seed)
        x = torch.rand(n, *knowledge.image_shape, generator=generator).to(device).requires_grad_()
        label_variables, labels = self.dummy_labels(view, upload, knowledge, n, generator)

        def loss() -> Tensor:
            candidate = simulate_update(view.model, view.layout, one_step, x, labels()) / view.training.lr
            return gradient_distance(candidate, observed, "l2", mask)

        optimizer = torch.optim.LBFGS(
            [x, *label_variables], lr=self.params.lr, max_iter=self.params.iterations,
            history_size=self.params.history, tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = loss()
            value.backward()
            return value

        optimizer.step(closure)
        final = float(loss().detach())
        chosen = labels().detach()
        chosen = chosen.argmax(1) if chosen.dim() == 2 else chosen
        return AttackOutput(x.detach().clamp(0, 1).cpu(), (upload.client_id,), chosen.cpu(), {"gradient_l2": final})


@register_attack("dlg", "DLG: L-BFGS on dummy images and labels, L2 distance to the update read as one gradient")
class Dlg(GradientLeakage):
    def dummy_labels(self, view, upload, knowledge, n, generator):
        """DLG: free logits, softmax-ed into soft labels, optimised with the images."""
        logits = torch.randn(n, knowledge.num_classes, generator=generator).to(knowledge.device).requires_grad_()
        return [logits], lambda: F.softmax(logits, 1)


@register_attack("idlg", "iDLG: DLG with the labels inferred from the update (sign rule / label counts)")
class Idlg(GradientLeakage):
    label_step = "labels"  # its label step is the labels row

    def dummy_labels(self, view, upload, knowledge, n, generator):
        """iDLG: the sign rule for one sample; for a dummy batch, the client's inferred label
        counts scaled to its size."""
        fixed = labels_from_counts(round_counts(inferred_counts(view, upload, knowledge), n)).to(knowledge.device)
        return [], lambda: fixed
