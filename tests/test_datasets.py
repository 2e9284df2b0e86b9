import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flaudit.scenarios.datasets import DATASETS, DataOptions, ImageDataset, load_dataset
from flaudit.core.errors import ConfigError, DataNotFoundError, FlauditError, UnknownNameError


def assert_well_formed(dataset: ImageDataset, shape: tuple[int, int, int], num_classes: int) -> None:
    assert dataset.images.dtype == torch.float32 and dataset.labels.dtype == torch.int64
    assert dataset.image_shape == shape and dataset.images.shape[0] == len(dataset)
    assert dataset.num_classes == num_classes
    assert 0 <= dataset.images.min() and dataset.images.max() <= 1
    assert set(dataset.labels.tolist()) == set(range(num_classes))  # every class in every split


@pytest.mark.parametrize(
    "name, shape, classes, total",
    [("digits", (1, 8, 8), 10, 1797), ("lfw_subset", (1, 25, 25), 2, 200), ("photo_patches", (3, 32, 32), 6, 1536)],
)
def test_embedded_datasets(name, shape, classes, total):
    splits = load_dataset(name)
    assert_well_formed(splits.train, shape, classes)
    assert_well_formed(splits.test, shape, classes)
    assert len(splits.train) + len(splits.test) == total
    assert len(splits.test) == pytest.approx(0.2 * total, abs=classes)
    assert splits.train.classes == splits.test.classes


def test_embedded_values():
    digits = load_dataset("digits").train
    assert digits.images.max() == 1.0  # 16 -> 1
    lfw = load_dataset("lfw_subset")
    assert lfw.train.classes == ("face", "non_face")
    assert lfw.train.labels.bincount().tolist() == [80, 80]


def test_photo_patches_are_natural_crops():
    splits = load_dataset("photo_patches")
    assert len(splits.train) >= 1000
    assert "astronaut" in splits.train.classes
    patch_std = splits.train.images.flatten(1).std(dim=1)
    assert patch_std.median() > 0.05  # textured content, not flat colour
    big = load_dataset("photo_patches", DataOptions(image_size=64))
    assert big.train.image_shape == (3, 64, 64)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("photo_patches", DataOptions(image_size=512))


@pytest.mark.parametrize("name", ["digits", "photo_patches"])
def test_deterministic_by_seed(name):
    first, again = load_dataset(name, DataOptions(seed=3)), load_dataset(name, DataOptions(seed=3))
    other = load_dataset(name, DataOptions(seed=4))
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.test.labels, again.test.labels)
    assert not torch.equal(first.test.images, other.test.images)


def test_resize_and_cap():
    splits = load_dataset("digits", DataOptions(image_size=16, max_samples=50))
    assert splits.train.image_shape == (1, 16, 16)
    assert len(splits.train) == len(splits.test) == 50
    assert splits.train.labels.bincount().tolist() == [5] * 10  # the cap keeps classes balanced
    assert 0 <= splits.train.images.min() and splits.train.images.max() <= 1


def test_subset_and_validate():
    train = load_dataset("lfw_subset").train
    part = train.subset([0, 2, 4])
    assert len(part) == 3 and torch.equal(part.images[1], train.images[2])
    bad_images = train.images.clone()
    bad_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(FlauditError, match="NaN"):
        ImageDataset("x", bad_images, train.labels, train.classes).validate()
    with pytest.raises(FlauditError, match=r"\[0, 1\]"):
        ImageDataset("x", train.images * 2, train.labels, train.classes).validate()
    with pytest.raises(FlauditError, match="labels"):
        ImageDataset("x", train.images, train.labels + 5, train.classes).validate()


def test_bad_options_and_names():
    with pytest.raises(ConfigError, match="image_size"):
        DataOptions(image_size=0)
    with pytest.raises(ConfigError, match="max_samples"):
        DataOptions(max_samples=-1)
    assert DataOptions(data_root="~/data").data_root == Path("~/data").expanduser()
    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digit")
    assert {"digits", "lfw_subset", "photo_patches", "cifar10", "celeba", "imagefolder"} <= set(DATASETS.names())


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw/t10k-labels-idx1-ubyte"),
        ("celeba", "celeba/list_attr_celeba.txt"),
        ("imagefolder", ""),
    ],
)
def test_missing_files_name_what_to_place(tmp_path, name, expected):
    root = tmp_path / "data"
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, DataOptions(data_root=root))
    message = str(info.value)
    assert repr(name) in message and str(root / expected) in message
    with pytest.raises(DataNotFoundError, match="--data-root") as info:
        load_dataset(name)
    assert "data_root" in str(info.value)


def test_imagefolder_train_without_test(tmp_path):
    write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "test")):
        load_dataset("imagefolder", DataOptions(data_root=tmp_path))


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_imagefolder_with_train_and_test(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label, name in enumerate(("cat", "dog")):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", np.full((6, 5, 3), 10 * i + 100 * label, np.uint8))
    splits = load_dataset("imagefolder", DataOptions(data_root=tmp_path))
    assert splits.train.classes == ("cat", "dog")
    assert_well_formed(splits.train, (3, 6, 5), 2)
    assert splits.test.labels.tolist() == [0, 0, 1, 1]
    assert splits.train.images[4, 0, 0, 0].item() == pytest.approx(110 / 255)  # dog/1.png
    resized = load_dataset("imagefolder", DataOptions(data_root=tmp_path, image_size=4))
    assert resized.test.image_shape == (3, 4, 4)


def test_imagefolder_single_folder_grayscale(tmp_path):
    for label in ("a", "b"):
        for i in range(10):
            write_png(tmp_path / label / f"{i}.png", np.full((4, 4 + i % 2), 7 * i, np.uint8))
    with pytest.raises(ConfigError, match="image_size"):  # two image sizes
        load_dataset("imagefolder", DataOptions(data_root=tmp_path))
    splits = load_dataset("imagefolder", DataOptions(data_root=tmp_path, image_size=4))
    assert_well_formed(splits.train, (1, 4, 4), 2)
    assert len(splits.train) == 16 and len(splits.test) == 4


def test_fake_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(10)]
    batches = {}
    for file in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[file] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
    batches["batches.meta"] = {"label_names": names}
    for file, content in batches.items():
        (folder / file).write_bytes(pickle.dumps(content))
    splits = load_dataset("cifar10", DataOptions(data_root=tmp_path))
    assert splits.train.classes == tuple(names)
    assert len(splits.train) == 20 and splits.test.image_shape == (3, 32, 32)
    expected = torch.from_numpy(batches["test_batch"]["data"].reshape(4, 3, 32, 32)) / 255
    assert torch.equal(splits.test.images, expected)
    assert splits.test.labels.tolist() == batches["test_batch"]["labels"]


def write_idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fake_mnist(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    images = rng.integers(0, 256, (5, 28, 28))
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(5))
    splits = load_dataset("mnist", DataOptions(data_root=tmp_path))
    assert splits.train.image_shape == (1, 28, 28) and splits.train.num_classes == 10
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(images).float() / 255)
    assert splits.test.labels.tolist() == [0, 1, 2, 3, 4]
