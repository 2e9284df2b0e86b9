"""Plain noise on each uploaded update (local DP on the update), to compare with DP-SGD.

Without ``clip_norm`` this is the "noisy gradients" defense of the DLG paper: noise of a fixed
scale and no formal guarantee. With ``clip_norm`` each upload is first clipped (L2 norm for the
Gaussian mechanism, L1 for the Laplace one), so any two possible uploads of a client differ by at
most ``2 * clip_norm`` and every upload is a local-DP release; the epsilon reported composes the
releases of each client over the rounds it joined.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from flaudit.defenses.base import Defense
from flaudit.defenses.registry import register_defense
from flaudit.core.tables import bounded
from flaudit.scenarios.scenario import FLWorld, derive_seed
from flaudit.scenarios.updates import ParamLayout

NOISE_SEED_STREAM = 502  # derive_seed stream of the update noise


class NoiseMechanism(ABC):
    """A noise distribution, the norm its sensitivity is measured in, and its privacy loss."""

    norm_order: float

    @abstractmethod
    def sample(self, like: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
        """Noise shaped like ``like`` with scale ``scale``."""

    @abstractmethod
    def epsilon(self, releases: int, sensitivity: float, scale: float, delta: float) -> float:
        """Epsilon of ``releases`` compositions at ``delta``."""

    @abstractmethod
    def reported_delta(self, delta: float) -> float:
        """The delta the reported epsilon holds at, given the configured one."""


class GaussianMechanism(NoiseMechanism):
    """N(0, scale^2) per entry; its k-fold composition is exactly mu-GDP with
    mu = sqrt(k) * sensitivity / scale (Dong, Roth, Su 2019), converted to (epsilon, delta)."""

    norm_order = 2.0

    def sample(self, like: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device) * scale

    def epsilon(self, releases: int, sensitivity: float, scale: float, delta: float) -> float:
        return gdp_epsilon(math.sqrt(releases) * sensitivity / scale, delta)

    def reported_delta(self, delta: float) -> float:
        return delta


class LaplaceMechanism(NoiseMechanism):
    """Laplace(0, scale) per entry: pure epsilon = sensitivity / scale per release, summed."""

    norm_order = 1.0

    def sample(self, like: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
        # The difference of two Exp(1) draws is Laplace(0, 1) (inverse-CDF sampling hits log(0)).
        first = torch.empty(like.shape, device=like.device).exponential_(generator=generator)
        second = torch.empty(like.shape, device=like.device).exponential_(generator=generator)
        return (first - second) * scale

    def epsilon(self, releases: int, sensitivity: float, scale: float, delta: float) -> float:
        return releases * sensitivity / scale

    def reported_delta(self, delta: float) -> float:
        return 0.0


MECHANISMS: dict[str, NoiseMechanism] = {"gaussian": GaussianMechanism(), "laplace": LaplaceMechanism()}


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of a mu-GDP mechanism: Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    return float(ndtr(-epsilon / mu + mu / 2) - math.exp(epsilon + log_ndtr(-epsilon / mu - mu / 2)))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon at which a mu-GDP mechanism is (epsilon, delta)-DP."""
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    upper = 1.0
    while gdp_delta(mu, upper) > delta:
        upper *= 2
    return float(brentq(lambda eps: gdp_delta(mu, eps) - delta, 0.0, upper, xtol=1e-10))


@dataclass(frozen=True)
class UpdateNoiseParams:
    """``[defense.update_noise]``."""

    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    scale: float = bounded(0.01, min=0.0, exclusive_min=True,
                           doc="noise std (gaussian) or Laplace b, in the update's units")
    clip_norm: float | None = bounded(None, min=0.0, exclusive_min=True,
                                      doc="clip uploads to this L2 (gaussian) / L1 (laplace) norm")
    delta: float = bounded(1e-5, min=0.0, max=1.0, exclusive_min=True)


class NoisyUpload:
    """The UpdateTransform: clip (optionally), add seeded noise, count each client's releases."""

    def __init__(self, params: UpdateNoiseParams, seed: int) -> None:
        self.params = params
        self.mechanism = MECHANISMS[params.mechanism]
        self.seed = seed
        self.releases: dict[int, int] = {}
        self.clipped = 0
        self.noise_to_signal_sum = 0.0  # of ||noise||_2 / ||upload before noise||_2

    def transform(
        self, client_id: int, round_index: int, update: torch.Tensor, layout: ParamLayout
    ) -> torch.Tensor:
        params = self.params
        norm = float(torch.linalg.vector_norm(update, ord=self.mechanism.norm_order))
        if params.clip_norm is not None and norm > params.clip_norm:
            update = update * (params.clip_norm / norm)
            self.clipped += 1
        generator = torch.Generator(device=update.device)
        generator.manual_seed(derive_seed(self.seed, NOISE_SEED_STREAM, round_index, client_id))
        noise = self.mechanism.sample(update, params.scale, generator)
        self.releases[client_id] = self.releases.get(client_id, 0) + 1
        self.noise_to_signal_sum += float(noise.norm()) / max(float(update.norm()), 1e-30)
        return update + noise

    def epsilons(self) -> dict[int, float]:
        sensitivity = 2 * self.params.clip_norm  # two clipped uploads differ by at most this
        return {
            client_id: self.mechanism.epsilon(count, sensitivity, self.params.scale, self.params.delta)
            for client_id, count in sorted(self.releases.items())
        }


@register_defense("update_noise", "Gaussian or Laplace noise on each upload (local DP with clip_norm)")
class UpdateNoise(Defense):
    """Noise added by the client to its update before upload."""

    Params = UpdateNoiseParams
    claims_dp = True  # with clip_norm; without it the audit still measures a lower bound

    def __init__(self, params: UpdateNoiseParams | None = None) -> None:
        super().__init__(params)
        self.last_run: NoisyUpload | None = None

    def update_transform(self, world: FLWorld) -> NoisyUpload:
        self.last_run = NoisyUpload(self.params, world.config.seed)
        return self.last_run

    def figures(self) -> dict[str, float]:
        """Noise scale and, with clipping, the epsilon each client spent (max and per client)."""
        figures = {"scale": self.params.scale}
        done = self.last_run
        if done is None or not done.releases:
            return figures
        uploads = sum(done.releases.values())
        figures["noise_to_signal"] = done.noise_to_signal_sum / uploads
        if self.params.clip_norm is None:
            return figures
        epsilons = done.epsilons()
        figures.update(
            epsilon=max(epsilons.values()),
            delta=done.mechanism.reported_delta(self.params.delta),
            clip_norm=self.params.clip_norm,
            clipped_fraction=done.clipped / uploads,
        )
        figures.update({f"epsilon_client_{cid}": eps for cid, eps in epsilons.items()})
        return figures
