"""Image generators of the generative gradient-inversion attacks (GRNN, GGL).

Both attacks search images through a small convolutional generator instead of pixel by pixel:
GRNN optimises a fresh generator's weights, GGL searches the latent space of one trained on the
attacker's auxiliary data. The generator is GRNN's design: a transposed convolution lifts the
latent vector to a 4x4 map, then blocks of (nearest upsampling x2, 3x3 conv, BatchNorm, GLU)
double it up to the image side (GRNN chose GLU as more stable than ReLU and faster to learn
than sigmoid), a last 3x3 conv and a sigmoid give pixels in [0, 1]. Sides that are not 4 * 2^k
(e.g. 25x25 faces) are generated at the next such side and resized.

``train_decoder`` fits a label-conditional VAE on the auxiliary data and keeps its decoder: a
few seconds of CPU give a usable prior for small images, where a GAN would still be unstable.
Trained decoders are preparations (``preparation``), keyed by everything that determines them,
so the rounds and defenses of one audit share one training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flaudit.auditor.attacks.toolkit.preparation import Preparation, Preparations, module_codec, tensor_digest
from flaudit.scenarios.datasets import ImageDataset

ImageShape = tuple[int, int, int]
BASE_SIDE = 4  # side of the map the latent vector is lifted to
MIN_CHANNELS = 16  # channels never halve below this in the upsampling blocks


def upsampling_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Doubles the side; the conv emits twice the channels because GLU gates one half with the
    other."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1),
        nn.BatchNorm2d(2 * out_channels),
        nn.GLU(dim=1),
    )


class ImageGenerator(nn.Module):
    """Latent vectors ``[N, latent_dim]`` -> images ``[N, C, H, W]`` in (0, 1)."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, width: int = 64) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        self.size = (height, width_px)
        side, blocks = BASE_SIDE, 0
        while side < max(self.size):
            side, blocks = 2 * side, blocks + 1
        self.stem = nn.Sequential(nn.ConvTranspose2d(latent_dim, 2 * width, BASE_SIDE), nn.GLU(dim=1))
        body, current = [], width
        for _ in range(blocks):
            following = max(current // 2, MIN_CHANNELS)
            body.append(upsampling_block(current, following))
            current = following
        self.body = nn.Sequential(*body)
        self.head = nn.Conv2d(current, channels, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.head(self.body(self.stem(latent[:, :, None, None])))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class ConditionalDecoder(nn.Module):
    """GGL's generator: a latent vector and a class -> an image of that class."""

    def __init__(self, latent_dim: int, num_classes: int, image_shape: ImageShape, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.generator = ImageGenerator(latent_dim + num_classes, image_shape, width)

    def forward(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(latent.dtype)
        return self.generator(torch.cat([latent, one_hot], dim=1))


@dataclass(frozen=True)
class DecoderSpec:
    """Everything that determines a trained decoder besides the data."""

    latent_dim: int
    width: int
    steps: int
    batch_size: int
    lr: float
    seed: int


class ConditionalEncoder(nn.Module):
    """The VAE's encoder (discarded after training): image and class -> latent mean, log-variance."""

    def __init__(self, latent_dim: int, num_classes: int, image_shape: ImageShape, hidden: int = 256) -> None:
        super().__init__()
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.num_classes = num_classes
        self.net = nn.Sequential(nn.Linear(pixels + num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one_hot = F.one_hot(labels, self.num_classes).to(images.dtype)
        mean, log_var = self.net(torch.cat([images.flatten(1), one_hot], dim=1)).chunk(2, dim=1)
        return mean, log_var


def train_decoder(data: ImageDataset, spec: DecoderSpec, device: torch.device) -> ConditionalDecoder:
    """Fits a conditional VAE (Bernoulli pixel likelihood, standard normal prior) on ``data`` with
    Adam; returns its decoder in eval mode, so a latent drawn from N(0, I) gives an image like
    the data's."""
    shape = data.image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        decoder = ConditionalDecoder(spec.latent_dim, data.num_classes, shape, spec.width).to(device)
        encoder = ConditionalEncoder(spec.latent_dim, data.num_classes, shape).to(device)
    images, labels = data.images.to(device), data.labels.to(device)
    optimizer = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=spec.lr)
    draws = torch.Generator(device=device).manual_seed(spec.seed)
    batch = min(spec.batch_size, len(data))
    for _ in range(spec.steps):
        pick = torch.randint(len(data), (batch,), generator=draws, device=device)
        mean, log_var = encoder(images[pick], labels[pick])
        noise = torch.randn(mean.shape, generator=draws, device=device)
        recon = decoder(mean + noise * (0.5 * log_var).exp(), labels[pick])
        likelihood = F.binary_cross_entropy(recon, images[pick], reduction="sum") / batch
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum() / batch
        optimizer.zero_grad(set_to_none=True)
        (likelihood + kl).backward()
        optimizer.step()
    return decoder.eval().requires_grad_(False)


def trained_decoder(prepared: Preparations, data: ImageDataset, spec: DecoderSpec, device: torch.device) -> ConditionalDecoder:
    """``train_decoder``, prepared once per (data, spec, device)."""
    key = {"data": tensor_digest((data.images, data.labels)), "spec": spec, "device": str(device)}
    train = lambda: train_decoder(data, spec, device)  # noqa: E731
    architecture = module_codec(lambda: ConditionalDecoder(spec.latent_dim, data.num_classes, data.image_shape, spec.width).to(device))
    return prepared.get(Preparation("generators.conditional_decoder", key, train, architecture))


def untrained_decoder(
    latent_dim: int, num_classes: int, image_shape: ImageShape, width: int, seed: int, device: torch.device
) -> ConditionalDecoder:
    """The same decoder at its random initialisation (GGL's untrained-generator control)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = ConditionalDecoder(latent_dim, num_classes, image_shape, width).to(device)
    return decoder.eval().requires_grad_(False)
