"""The inconsistency attack on secure aggregation (Pasquini, Francati and Ateniese, "Eluding
Secure Aggregation in Federated Learning via Model Inconsistency", CCS 2022), in its config form.

Secure aggregation hides each update inside the sum, but nothing in it binds the server to send
every client the same model or config. A malicious server sends the target the honest training
config and every other participant ``lr = 0``: their updates are zero, so the aggregate the
protocol reveals is the target's update times its share of the samples (sample counts are
public). The attack divides that share out and hands the isolated update, as if it were the
target's own upload, to an honest-server attack (``attack``, default ``labels``). It needs the
server to choose per-client configs (``ClientConfigHook``); the view's ``client_training`` says
what was sent, so a recorded federation whose server did this is audited the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from flaudit.auditor.attacks.registry import register_attack
from flaudit.auditor.attacks.base import Attack, AttackerKnowledge, AttackOutput, ThreatModel
from flaudit.core.errors import ConfigError, FlauditError
from flaudit.core.tables import bounded
from flaudit.scenarios.views import ClientUpload, ServerView, TrainingSpec


@dataclass(frozen=True)
class InconsistencyParams:
    target_client: int = bounded(0, min=0, doc="the client the server isolates")
    attack: str = bounded("labels", doc="the honest-server attack run on the isolated update")


@dataclass(frozen=True)
class ConfigIsolation:
    """The malicious server's per-client configs: the honest one to the target, lr = 0 to all others."""

    target: int

    def training_for(self, client_id: int, round_index: int, spec: TrainingSpec) -> TrainingSpec:
        return spec if client_id == self.target else dataclasses.replace(spec, lr=0.0)


def isolated_update(view: ServerView, target: int) -> torch.Tensor | None:
    """The target's update from the aggregate, once every other participant was sent lr = 0;
    None when the server sent some of them a real config (a recorded honest server)."""
    if target not in view.participants:
        raise FlauditError(f"inconsistency: target client {target} did not take part in round {view.round_index} "
                           f"(participants: {list(view.participants)})")
    sent = view.client_training or {}
    if any(c != target and (c not in sent or sent[c].lr != 0.0) for c in view.participants):
        return None
    share = view.num_samples[view.participants.index(target)] / sum(view.num_samples)
    return view.aggregate / share


@register_attack("inconsistency", "model inconsistency (Pasquini et al. 2022): lr = 0 to all but the target isolates its update from the secure aggregate")
class Inconsistency(Attack):
    threat_model = ThreatModel.MALICIOUS_SERVER
    Params = InconsistencyParams
    needs_individual_updates = False

    def __init__(self, params: InconsistencyParams | None = None) -> None:
        super().__init__(params)
        self.inner = self._inner_attack()

    def prior_null(self, view, context):
        """The inner attack's prior: isolating the update adds nothing a data-blind guess has."""
        return self.inner.prior_null(view, context)

    def _inner_attack(self) -> Attack:
        from flaudit.auditor.attacks.registry import ATTACKS

        cls = ATTACKS.get(self.params.attack)
        if cls.threat_model is not ThreatModel.HONEST_SERVER:
            raise ConfigError(
                f"attack.inconsistency.attack={self.params.attack!r} is a {cls.threat_model.value} attack; "
                "choose an honest-server attack (it reads the isolated update)"
            )
        return cls()

    def prepare(self, knowledge: AttackerKnowledge) -> ConfigIsolation:
        if self.params.target_client >= knowledge.num_clients:
            raise ConfigError(f"attack.inconsistency.target_client={self.params.target_client}, "
                              f"but the federation has {knowledge.num_clients} clients")
        return ConfigIsolation(self.params.target_client)

    def reconstruct(self, view: ServerView, knowledge: AttackerKnowledge) -> AttackOutput:
        target = self.params.target_client
        update = isolated_update(view, target)
        if update is None:  # nothing was isolated: the server learned only the aggregate
            return AttackOutput(view.aggregate.new_zeros((0, *knowledge.image_shape)), (target,), diagnostics={"isolated": 0.0})
        count = view.num_samples[view.participants.index(target)]
        training = (view.client_training or {}).get(target, view.training)
        isolated = dataclasses.replace(view, uploads=(ClientUpload(target, count, update),), training=training)
        output = self.inner.reconstruct(isolated, knowledge)
        output.diagnostics.update(isolated=1.0, isolated_share=count / sum(view.num_samples), isolated_update_l2=float(update.norm()))
        return dataclasses.replace(output, target_clients=(target,))
