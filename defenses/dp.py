"""DP-SGD in each client's local training, through Opacus.

Every client owns one ``PrivacyEngine`` for the whole run: its accountant sees every noisy step
of every round the client takes part in, so the epsilon reported is what the client actually
spent (not one round's). Sampling is Poisson by default (the accountants assume it); the noise
is either a given multiplier or calibrated per client so that a client joining every round
spends exactly ``target_epsilon`` (fewer rounds spend less). Without Poisson sampling Opacus
still accounts as if it were used, which is an approximation.

Opacus cannot train BatchNorm (it mixes samples of a batch); ``DPSGD.prepare_model`` swaps it
for GroupNorm with ``ModuleValidator.fix``, and must be applied to the global model before the
first round, since the clients' updates must have the global model's keys.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from flaudit.defenses.base import Defense
from flaudit.defenses.registry import register_defense
from flaudit.core.tables import bounded
from flaudit.core.errors import ConfigError
from flaudit.scenarios.scenario import FLWorld, derive_seed

# Opacus is imported where it is used: importing it costs most of a second, and every
# `import defenses` (the CLI listing its registries, too) would pay it.
if TYPE_CHECKING:
    from opacus import PrivacyEngine

DEFAULT_NOISE_MULTIPLIER = 1.0
NOISE_SEED_STREAM = 501  # derive_seed stream of the DP noise (scenarios use small integers)

# Each round builds a fresh DataLoader over the same client shard, and audits are seeded for
# reproducibility (the CSPRNG of secure_mode needs torchcsprng); Opacus warns about both.
_EXPECTED_OPACUS_WARNINGS = ("PrivacyEngine detected new dataset object", "Secure RNG turned off")
# Opacus' per-sample-gradient hooks sit on the first layer too, whose input (the images) needs
# no gradient; torch warns on every backward pass of every DP client although nothing is wrong.
_HOOK_WARNING = (
    "Full backward hook is firing when gradients are computed with respect to module outputs "
    "since no inputs require gradients"
)


@dataclass(frozen=True)
class DPParams:
    """``[defense.dp]``: set ``noise_multiplier`` or ``target_epsilon`` (default: sigma 1.0)."""

    noise_multiplier: float | None = bounded(None, min=0.0, exclusive_min=True,
                                             doc="noise std / max_grad_norm")
    target_epsilon: float | None = bounded(None, min=0.0, exclusive_min=True,
                                           doc="epsilon of a client joining every round")
    max_grad_norm: float = bounded(1.0, min=0.0, exclusive_min=True, doc="per-sample L2 clip")
    delta: float = bounded(1e-5, min=0.0, max=1.0, exclusive_min=True)
    accountant: Literal["prv", "rdp"] = "prv"
    poisson_sampling: bool = True

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ConfigError(
                "[defense.dp] set either noise_multiplier or target_epsilon, not both "
                f"(got {self.noise_multiplier} and {self.target_epsilon})"
            )
        if self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "noise_multiplier", DEFAULT_NOISE_MULTIPLIER)


@dataclass
class ClientPrivacy:
    """One client's engine (its accountant spans the run) and the noise it trains with."""

    engine: PrivacyEngine
    noise_multiplier: float


class OpacusTraining:
    """The TrainingWrapper: makes each client's local SGD differentially private."""

    def __init__(self, params: DPParams, world: FLWorld) -> None:
        self.params = params
        self.world = world
        self.clients: dict[int, ClientPrivacy] = {}
        largest = max(len(c.train_indices) for c in world.clients)
        if params.delta >= 1.0 / largest:
            raise ConfigError(
                f"[defense.dp] delta={params.delta} is not below 1/n for a client holding "
                f"{largest} samples; such a delta allows releasing a sample outright"
            )

    def _client(self, client_id: int, loader: DataLoader) -> ClientPrivacy:
        from opacus import PrivacyEngine

        if client_id not in self.clients:
            with warnings.catch_warnings():
                _ignore_expected_warnings()
                engine = PrivacyEngine(accountant=self.params.accountant)
            self.clients[client_id] = ClientPrivacy(engine, self._noise_multiplier(len(loader)))
        return self.clients[client_id]

    def _noise_multiplier(self, steps_per_epoch: int) -> float:
        """The given sigma, or the one that spends target_epsilon if the client joins every round
        (Opacus samples each record with probability 1 / steps_per_epoch)."""
        params, cfg = self.params, self.world.config
        if params.target_epsilon is None:
            return params.noise_multiplier
        return calibrated_noise_multiplier(
            params.target_epsilon, params.delta, 1.0 / steps_per_epoch,
            cfg.rounds * cfg.local_epochs * steps_per_epoch, params.accountant,
        )

    def wrap(
        self, client_id: int, round_index: int, model: nn.Module, optimizer: torch.optim.Optimizer,
        loader: DataLoader,
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model)
        if problems:
            raise ConfigError(
                f"defense 'dp': Opacus cannot train this model ({problems[0]}); build the global "
                "model through DPSGD.prepare_model (ModuleValidator.fix: BatchNorm -> GroupNorm)"
            )
        client = self._client(client_id, loader)
        device = next(model.parameters()).device
        noise = torch.Generator(device=device)
        noise.manual_seed(derive_seed(self.world.config.seed, NOISE_SEED_STREAM, round_index, client_id))
        warnings.filterwarnings("ignore", message=_HOOK_WARNING)  # raised later, in backward()
        with warnings.catch_warnings():
            _ignore_expected_warnings()
            return client.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=client.noise_multiplier,
                max_grad_norm=self.params.max_grad_norm,
                poisson_sampling=self.params.poisson_sampling,
                noise_generator=noise,
            )

    def unwrap(self, client_id: int, model: nn.Module) -> nn.Module:
        from opacus.grad_sample import GradSampleModule

        return model.to_standard_module() if isinstance(model, GradSampleModule) else model

    def steps(self, client_id: int) -> int:
        """Noisy steps client ``client_id`` has taken over the run so far."""
        return sum(steps for _, _, steps in self.clients[client_id].engine.accountant.history)

    def epsilons(self) -> dict[int, float]:
        """Epsilon each participating client has spent so far, at ``delta``. A client whose batch
        is all its data samples at rate 1, where the PRV accountant takes log(1 - q) = -inf on
        purpose: numpy's warning about it is silenced, not the result."""
        with np.errstate(divide="ignore"):
            return {
                client_id: float(client.engine.get_epsilon(self.params.delta))
                for client_id, client in sorted(self.clients.items())
                if len(client.engine.accountant) > 0
            }


@functools.cache  # clients with as many batches share it; each search costs up to seconds
def calibrated_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the search visits small sigmas whose RDP order is capped
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant,
        )


def _ignore_expected_warnings() -> None:
    for message in _EXPECTED_OPACUS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@register_defense("dp", "DP-SGD (Opacus) in local training; per-client accountant over the run")
class DPSGD(Defense):
    """Record-level DP-SGD on each client's data: per-sample clipping, Gaussian noise, Poisson
    batches. Its figures are the epsilon each client spent over the run, and their maximum."""

    Params = DPParams
    claims_dp = True

    def __init__(self, params: DPParams | None = None) -> None:
        super().__init__(params)
        self.last_run: OpacusTraining | None = None

    @staticmethod
    def prepare_model(model: nn.Module) -> nn.Module:
        """The model Opacus can train: BatchNorm replaced by GroupNorm (same model otherwise)."""
        from opacus.validators import ModuleValidator

        return ModuleValidator.fix(model) if ModuleValidator.validate(model) else model

    def training_wrapper(self, world: FLWorld) -> OpacusTraining:
        self.last_run = OpacusTraining(self.params, world)
        return self.last_run

    def figures(self) -> dict[str, float]:
        """Epsilon spent over the last run: the maximum over clients and each client's own."""
        figures = {"delta": self.params.delta, "max_grad_norm": self.params.max_grad_norm}
        if self.last_run is None or not self.last_run.clients:
            return figures
        epsilons = self.last_run.epsilons()
        sigmas = [c.noise_multiplier for c in self.last_run.clients.values()]
        figures["epsilon"] = max(epsilons.values(), default=0.0)
        figures["noise_multiplier"] = min(sigmas)
        figures.update({f"epsilon_client_{cid}": eps for cid, eps in epsilons.items()})
        return figures

