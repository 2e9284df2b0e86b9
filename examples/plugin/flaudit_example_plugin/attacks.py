"""An attack plugin: a subclass of ``flaudit.auditor.attacks.base.Attack``.

``RowRatio`` is the analytic leakage of a fully-connected first layer (Phong et al. 2017;
Geiping et al. 2020, section 4): for one sample, row i of the weight gradient is the input
scaled by the bias gradient i, so ``dW_i / db_i`` *is* the input. A client's update sums many
samples, but a ReLU unit that only one of them activated still isolates that sample. The
attack reads the target client's update (an honest-but-curious server) and returns the rows
whose bias moved most, as images; flaudit matches and scores them like any attack's.
"""

from dataclasses import dataclass

import torch
from torch import nn

from flaudit.auditor.attacks.base import AttackOutput
from flaudit.auditor.attacks.toolkit.honest_server import HonestServerAttack
from flaudit.core.errors import FlauditError
from flaudit.core.tables import bounded


@dataclass(frozen=True)
class RowRatioParams:
    """Parameters are a frozen dataclass; ``bounded`` gives ranges checked before any job."""

    images: int = bounded(64, min=1, doc="rows returned as reconstructions")
    min_bias_share: float = bounded(1e-3, min=0.0, doc="skip rows whose |db| is below this share of the largest")
    target_client: int | None = bounded(None, min=0, doc="whose upload (default: the first participant)")


class RowRatio(HonestServerAttack):
    """Analytic inversion of the first linear layer: rows dW_i / db_i of one client's update."""

    Params = RowRatioParams
    profiles = {"full": {"images": 256}}  # `--profile full` budgets

    def prior_null(self, view, context):
        """Rows are solved from the update alone: no prior beyond the attacker's data (the
        auditor's own nulls)."""
        return None

    def reconstruct(self, view, knowledge) -> AttackOutput:
        upload = self.target(view)
        first = next((m for m in view.model.modules() if isinstance(m, nn.Linear)), None)
        if first is None or first.bias is None:
            raise FlauditError("row_ratio needs a model whose first linear layer has a bias")
        names = {id(p): n for n, p in view.model.named_parameters()}
        delta = view.layout.unflatten(upload.update)
        d_weight, d_bias = delta[names[id(first.weight)]], delta[names[id(first.bias)]]
        if d_weight.shape[1] != torch.Size(knowledge.image_shape).numel():
            raise FlauditError("row_ratio needs a first linear layer on the raw pixels (an MLP)")
        strength = d_bias.abs()
        usable = (strength > self.params.min_bias_share * strength.max()).nonzero().flatten()
        rows = usable[strength[usable].argsort(descending=True)][: self.params.images]
        images = (d_weight[rows] / d_bias[rows, None]).reshape(len(rows), *knowledge.image_shape)
        return AttackOutput(images.clamp(0, 1), target_clients=(upload.client_id,),
                            diagnostics={"usable_rows": float(len(usable))})
