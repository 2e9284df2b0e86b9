"""A model plugin: ``factory(image_shape, num_classes, **model_options) -> nn.Module``."""

from torch import nn

from flaudit.scenarios.models import FeatureClassifier


def wide_mlp(shape: tuple[int, int, int], num_classes: int, hidden: int = 1024) -> nn.Module:
    """One wide ReLU layer: its first layer sees raw pixels, which the row-ratio attack reads.

    Keeping the ``features`` / ``classifier`` split (FeatureClassifier) lets the attacks that
    address the two halves (Scale-MIA, feature inversion) run on it too."""
    channels, height, width = shape
    features = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, hidden), nn.ReLU())
    return FeatureClassifier(features, nn.Linear(hidden, num_classes))
