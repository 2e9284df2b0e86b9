"""The model registry: the architectures the study and the attack papers use.

Every builder takes the input shape ``(C, H, W)`` and the number of classes, plus its own
keyword options (checked: an unknown option is a ConfigError naming it), so a config string
and a table of options pick any model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import resnet18 as torchvision_resnet18

from flaudit.core.errors import ConfigError, FlauditError
from flaudit.core.registry import Registry, callable_plugin, check_options

ImageShape = tuple[int, int, int]
ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model", plugins="flaudit.models", accept=callable_plugin("model"))

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def _activation(name: str) -> Callable[[], nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model option activation={name!r}: choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _flat_features(features: nn.Module, shape: ImageShape) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).flatten(1).shape[1])


class FeatureClassifier(nn.Module):
    """``features`` (the part an autoencoder can mirror) followed by a ``classifier`` head.

    Scale-MIA and feature-inversion attacks address the two halves separately, so every
    registered model except ResNet keeps this split.
    """

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("cnn", "the study's CNN: conv32-conv64 (3x3, ReLU, max-pool) then fc512")
def cnn(shape: ImageShape, num_classes: int, width: int = 32, hidden: int = 512) -> nn.Module:
    channels = shape[0]
    features = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    flat = _flat_features(features, shape)
    classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return FeatureClassifier(features, classifier)


@MODELS.register("mlp", "one hidden layer of 256 (CPA's blind-source-separation model)")
def mlp(shape: ImageShape, num_classes: int, hidden: int = 256, activation: str = "relu") -> nn.Module:
    act = _activation(activation)
    features = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), hidden), act())
    return FeatureClassifier(features, nn.Linear(hidden, num_classes))


@MODELS.register("lenet", "LeNet-style, 5x5 convs; activation='sigmoid' is the DLG paper's")
def lenet(shape: ImageShape, num_classes: int, activation: str = "sigmoid") -> nn.Module:
    act = _activation(activation)
    channels = shape[0]
    # DLG's LeNet: stride-2 and stride-1 5x5 convs with padding 2, no pooling, smooth activations.
    features = nn.Sequential(
        nn.Conv2d(channels, 12, 5, padding=2, stride=2), act(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2), act(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1), act(),
        nn.Flatten(),
    )
    return FeatureClassifier(features, nn.Linear(_flat_features(features, shape), num_classes))


@MODELS.register("resnet18", "torchvision ResNet-18; small_input=True swaps in a 3x3 stem")
def resnet18(shape: ImageShape, num_classes: int, small_input: bool | None = None) -> nn.Module:
    model = torchvision_resnet18(weights=None, num_classes=num_classes)
    if small_input is None:
        small_input = min(shape[1:]) <= 64
    if small_input:
        model.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif shape[0] != 3:
        model.conv1 = nn.Conv2d(shape[0], 64, 7, stride=2, padding=3, bias=False)
    return model


@MODELS.register("fedmd_cnn", "FedMD/PLI's small net: one conv, max-pool, linear (ReLU)")
def fedmd_cnn(shape: ImageShape, num_classes: int, width: int = 64) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
    )
    return FeatureClassifier(features, nn.Linear(_flat_features(features, shape), num_classes))


def build_model(name: str, shape: ImageShape, num_classes: int, **options: Any) -> nn.Module:
    """Builds a registered model, rejecting options its builder does not take."""
    builder = MODELS.get(name)
    check_options("model", name, builder, options, positional=2)
    if not MODELS.is_plugin(name):
        return builder(shape, num_classes, **options)
    try:
        model = builder(shape, num_classes, **options)
    except Exception as exc:
        raise FlauditError(f"model plugin {name!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise FlauditError(f"model plugin {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
