"""A learned image prior from the attacker's own images: a small denoising autoencoder.

Wilson et al. regularise peer reconstructions with a pretrained diffusion model; no such
weights can be fetched here, so a denoising autoencoder trained in seconds on the attacker's
own data stands in. Trained to map noisy images back to clean ones through a bottleneck, it
leaves images like its training data nearly unchanged and moves others towards them; the
squared distance between an image and its reconstruction is then a penalty that is small on
the data's manifold and grows off it. Trained autoencoders are preparations (``preparation``),
keyed by data and spec, so the rounds and defenses of one audit share one training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flaudit.auditor.attacks.toolkit.preparation import Preparation, Preparations, module_codec, tensor_digest
from flaudit.scenarios.datasets import ImageDataset


@dataclass(frozen=True)
class AutoencoderSpec:
    """Everything that determines a trained autoencoder besides the data."""

    width: int
    steps: int
    batch_size: int
    lr: float
    noise: float  # std of the Gaussian noise added to its training inputs
    seed: int


class DenoisingAutoencoder(nn.Module):
    """Images ``[N, C, H, W]`` in [0, 1] -> their reconstructions through a quarter-side bottleneck."""

    def __init__(self, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        channels, height, side = image_shape
        self.size = (height, side)
        self.encode = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decode = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.decode(self.encode(images))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def train_autoencoder(data: ImageDataset, spec: AutoencoderSpec, device: torch.device) -> DenoisingAutoencoder:
    """Fits the autoencoder to reconstruct ``data``'s images from noisy copies (Adam, MSE);
    returns it frozen in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = DenoisingAutoencoder(data.image_shape, spec.width).to(device)
    images = data.images.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    draws = torch.Generator(device=device).manual_seed(spec.seed)
    batch = min(spec.batch_size, len(data))
    for _ in range(spec.steps):
        clean = images[torch.randint(len(data), (batch,), generator=draws, device=device)]
        noisy = (clean + spec.noise * torch.randn(clean.shape, generator=draws, device=device)).clamp(0, 1)
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def trained_autoencoder(
    prepared: Preparations, data: ImageDataset, spec: AutoencoderSpec, device: torch.device
) -> DenoisingAutoencoder:
    """``train_autoencoder``, prepared once per (data, spec, device)."""
    key = {"data": tensor_digest((data.images, data.labels)), "spec": spec, "device": str(device)}
    train = lambda: train_autoencoder(data, spec, device)  # noqa: E731
    architecture = module_codec(lambda: DenoisingAutoencoder(data.image_shape, spec.width).to(device))
    return prepared.get(Preparation("learned_prior.autoencoder", key, train, architecture))


def reconstruction_error(autoencoder: DenoisingAutoencoder, images: Tensor) -> Tensor:
    """Mean squared distance between ``images`` and their reconstructions."""
    return (autoencoder(images) - images).square().mean()


def autoencoder_penalty(autoencoder: DenoisingAutoencoder, weight: float) -> Callable[[Tensor], Tensor]:
    """The prior as a regularizer of an image optimisation: ``weight`` x the reconstruction error."""
    return lambda images: weight * reconstruction_error(autoencoder, images)
