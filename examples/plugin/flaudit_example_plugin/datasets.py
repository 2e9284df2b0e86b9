"""A dataset plugin: ``factory(options: DataOptions)`` returning the train and test splits.

It may return ``flaudit.scenarios.datasets.DatasetSplits`` or, as here, plain
``((train_images, train_labels), (test_images, test_labels))``: images [N, C, H, W] (uint8, or
float in [0, 1]), integer labels. flaudit checks shapes, ranges and labels before any job.
"""

import numpy as np
import skimage.data
import torch

SOURCES = ("camera", "moon", "coins", "text", "page", "clock", "grass", "gravel", "brick")
CROPS_PER_IMAGE = 96
TEST_SHARE = 0.25


def textures(options):
    """Grayscale crops of scikit-image's bundled photographs and textures, 9 classes.

    16x16 random crops (``image_size`` changes it), labelled by their source image."""
    size = options.image_size or 16
    rng = np.random.default_rng(options.seed)
    images, labels = [], []
    for label, name in enumerate(SOURCES):
        picture = getattr(skimage.data, name)()
        for _ in range(CROPS_PER_IMAGE):
            top = rng.integers(0, picture.shape[0] - size + 1)
            left = rng.integers(0, picture.shape[1] - size + 1)
            images.append(picture[top:top + size, left:left + size])
            labels.append(label)
    order = rng.permutation(len(labels))
    images = torch.from_numpy(np.stack(images)[order][:, None].copy())  # uint8 [N, 1, H, W]
    labels = torch.tensor(labels)[order]
    cut = int(len(labels) * (1 - TEST_SHARE))
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
