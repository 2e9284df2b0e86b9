"""Image datasets of the simulated FL world, held in memory as float tensors in [0, 1].

Embedded datasets (``digits``, ``lfw_subset``, ``photo_patches``) ship inside scikit-learn and
scikit-image, so an audit runs offline. On-disk datasets are read from ``DataOptions.data_root``
and never downloaded: a missing file raises DataNotFoundError that says what to put where.
Third-party libraries are imported inside each loader because importing torchvision alone
takes seconds and most runs use one dataset.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flaudit.core.errors import ConfigError, DataNotFoundError, FlauditError
from flaudit.core.registry import Registry, callable_plugin

TEST_FRACTION = 0.2  # held-out share of datasets that come without a train/test split
PATCHES_PER_PHOTO = 256
PATCH_SIZE = 32
PHOTO_DOWNSCALE = 2  # halve the photos so a 32x32 crop holds an object part, not flat texture
CELEBA_ATTRIBUTE = "Smiling"  # binary label of `celeba`; identities are too many for a client


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class ImageDataset:
    name: str
    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return channels, height, width

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> ImageDataset:
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.name, self.images[index], self.labels[index], self.classes)

    def validate(self) -> None:
        """Raise FlauditError unless the tensors obey the invariants every consumer relies on."""
        images, labels = self.images, self.labels
        problem = None
        if images.dtype != torch.float32 or images.dim() != 4:
            problem = f"images must be float32 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
        elif labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            problem = f"labels must be int64 [{images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}"
        elif len(self) == 0:
            problem = "it holds no samples"
        elif not torch.isfinite(images).all():
            problem = "images contain NaN or infinite values"
        elif images.min() < 0 or images.max() > 1:
            problem = f"image values span [{images.min():.3g}, {images.max():.3g}], not [0, 1]"
        elif labels.min() < 0 or labels.max() >= self.num_classes:
            problem = f"labels span [{labels.min()}, {labels.max()}] but there are {self.num_classes} classes"
        if problem:
            raise FlauditError(f"dataset {self.name!r}: {problem}")


@dataclass(frozen=True)
class DatasetSplits:
    train: ImageDataset
    test: ImageDataset

    @classmethod
    def of(cls, name: str, value: Any) -> "DatasetSplits":
        """``value`` as splits: already ``DatasetSplits``, or what a plugin factory may return
        instead, ``((train_images, train_labels), (test_images, test_labels))`` as tensors or
        arrays (uint8 images are scaled to [0, 1]; classes are named by their index)."""
        if isinstance(value, DatasetSplits):
            return value
        try:
            (train_images, train_labels), (test_images, test_labels) = value
        except (TypeError, ValueError):
            raise FlauditError(
                f"dataset {name!r} returned {type(value).__name__}; expected DatasetSplits or "
                "((train_images, train_labels), (test_images, test_labels))"
            ) from None
        labels = [torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()]
        count = int(max(l.max() for l in labels if l.numel())) + 1 if any(l.numel() for l in labels) else 0
        classes = tuple(str(i) for i in range(count))
        parts = [ImageDataset(name, _unit_float(images), part_labels, classes)
                 for images, part_labels in zip((train_images, test_images), labels)]
        return cls(*parts)


def _unit_float(images: Any) -> torch.Tensor:
    tensor = torch.as_tensor(images)
    return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float().contiguous()


@dataclass(frozen=True)
class DataOptions:
    data_root: Path | None = None  # where on-disk datasets live
    image_size: int | None = None  # resize to image_size x image_size; patch size of photo_patches
    max_samples: int | None = None  # cap on each split, classes interleaved
    seed: int = 0  # train/test split, cap and patch positions

    def __post_init__(self) -> None:
        if self.data_root is not None:
            object.__setattr__(self, "data_root", Path(self.data_root).expanduser())
        for field in ("image_size", "max_samples"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{field} must be a positive integer or unset, got {value!r}")


Loader = Callable[[DataOptions], DatasetSplits]
DATASETS: Registry[Loader] = Registry("dataset", plugins="flaudit.datasets", accept=callable_plugin("dataset"))


def load_dataset(name: str, options: DataOptions = DataOptions()) -> DatasetSplits:
    loader = DATASETS.get(name)
    try:
        splits = DatasetSplits.of(name, loader(options))
    except Exception as exc:
        if isinstance(exc, FlauditError) or not DATASETS.is_plugin(name):
            raise
        raise FlauditError(f"dataset plugin {name!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in (splits.train, splits.test):
        part.validate()
    if (splits.train.classes, splits.train.image_shape) != (splits.test.classes, splits.test.image_shape):
        raise FlauditError(f"dataset {name!r}: train and test differ in classes or image shape")
    return splits


# ---- shared steps: split, cap, resize ---------------------------------------------------------


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test indices with each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    test = [
        rng.permutation(members)[: round(test_fraction * len(members))]
        for members in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    test_index = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_index), test_index


def _cap_indices(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """At most ``max_samples`` indices, taken round-robin over classes so a small cap stays balanced."""
    n = len(labels)
    if max_samples is None or max_samples >= n:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = labels[order]
    by_class = np.argsort(shuffled, kind="stable")
    first_of_class = np.searchsorted(shuffled[by_class], shuffled[by_class])
    rank = np.empty(n, dtype=np.int64)  # position of each sample among its class in `order`
    rank[by_class] = np.arange(n) - first_of_class
    return np.sort(order[np.argsort(rank, kind="stable")[:max_samples]])


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0, 1)


def _build(
    name: str,
    labels: np.ndarray,
    classes: Sequence[str],
    load: Callable[[np.ndarray], torch.Tensor],
    options: DataOptions,
) -> ImageDataset:
    """Cap the split by its labels first, so only the kept images are read and converted."""
    keep = _cap_indices(labels, options.max_samples, options.seed)
    if len(keep) == 0:
        raise FlauditError(f"dataset {name!r}: a split holds no samples")
    images = _resize(load(keep).float(), options.image_size)
    return ImageDataset(name, images.contiguous(), torch.as_tensor(labels[keep], dtype=torch.int64), tuple(classes))


def _embedded(
    name: str, images: torch.Tensor, labels: np.ndarray, classes: Sequence[str], options: DataOptions
) -> DatasetSplits:
    def part(index: np.ndarray) -> ImageDataset:
        return _build(name, labels[index], classes, lambda keep: images[torch.from_numpy(index[keep])], options)

    train, test = _stratified_split(labels, TEST_FRACTION, options.seed)
    return DatasetSplits(part(train), part(test))


# ---- embedded datasets ------------------------------------------------------------------------


@DATASETS.register("digits", "scikit-learn's bundled 1,797 handwritten digits, 1x8x8, 10 classes")
def _digits(options: DataOptions) -> DatasetSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
    return _embedded("digits", images, bunch.target.astype(np.int64), [str(d) for d in range(10)], options)


@DATASETS.register("lfw_subset", "scikit-image's bundled 200 25x25 grayscale faces (100) and non-faces (100)")
def _lfw_subset(options: DataOptions) -> DatasetSplits:
    import skimage.data

    images = torch.from_numpy(skimage.data.lfw_subset()).float().unsqueeze(1)
    labels = np.repeat(np.arange(2, dtype=np.int64), 100)  # the file holds 100 faces, then 100 non-faces
    return _embedded("lfw_subset", images, labels, ["face", "non_face"], options)


@lru_cache(maxsize=1)
def _photos() -> dict[str, torch.Tensor]:
    """scikit-image's bundled colour photographs as float [3, H, W], downscaled by PHOTO_DOWNSCALE."""
    import skimage.data as sk

    arrays = {
        "astronaut": sk.astronaut(),
        "coffee": sk.coffee(),
        "chelsea": sk.chelsea(),
        "rocket": sk.rocket(),
        "motorcycle": sk.stereo_motorcycle()[0],
        "immunohistochemistry": sk.immunohistochemistry(),
    }
    photos = {}
    for name, array in arrays.items():
        image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
        small = F.interpolate(image, scale_factor=1 / PHOTO_DOWNSCALE, mode="bilinear", antialias=True)
        photos[name] = small[0].clamp_(0, 1)
    return photos


@DATASETS.register(
    "photo_patches",
    f"{PATCHES_PER_PHOTO} random crops (32x32, or image_size) of each of 6 bundled colour photos; label = photo",
)
def _photo_patches(options: DataOptions) -> DatasetSplits:
    """Natural-image statistics offline: crops keep the photos' own (halved) resolution."""
    size = options.image_size or PATCH_SIZE
    photos = _photos()
    patches, labels = [], []
    for label, (name, photo) in enumerate(photos.items()):
        _, height, width = photo.shape
        if size > min(height, width):
            raise ConfigError(f"image_size {size} exceeds photo {name!r} ({height}x{width}) of photo_patches")
        rng = np.random.default_rng([options.seed, label])
        tops = rng.integers(0, height - size + 1, PATCHES_PER_PHOTO)
        lefts = rng.integers(0, width - size + 1, PATCHES_PER_PHOTO)
        patches += [photo[:, top : top + size, left : left + size] for top, left in zip(tops, lefts)]
        labels += [label] * PATCHES_PER_PHOTO
    return _embedded("photo_patches", torch.stack(patches), np.array(labels, dtype=np.int64), list(photos), options)


# ---- on-disk datasets -------------------------------------------------------------------------


def _require(name: str, root: Path | None, expected: Sequence[str], how: str) -> Path:
    """The data root, once every expected file exists under it; otherwise say what is missing."""
    if root is None:
        wanted = "".join(f"\n  <data_root>/{path}" for path in expected)
        raise DataNotFoundError(
            f"dataset {name!r} is read from disk: set `data_root` in the config or pass --data-root DIR."
            f"{' Expected under it:' if wanted else ''}{wanted}\n{how}"
        )
    missing = [root / path for path in expected if not (root / path).exists()]
    if not root.is_dir():
        missing = missing or [root]
    if missing:
        listed = "\n".join(f"  {path}" for path in missing)
        raise DataNotFoundError(f"dataset {name!r} not found; missing:\n{listed}\n{how}")
    return root


def _read_images(paths: Sequence[Path], size: int | None, crop: int | None = None) -> torch.Tensor:
    """Decode images to float [N, C, H, W]; one channel only when every image is grayscale."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop, pil_to_tensor

    tensors = []
    for path in paths:
        with Image.open(path) as image:
            tensor = pil_to_tensor(image.convert("L" if image.mode in ("1", "L") else "RGB")).float() / 255
        if crop is not None:
            tensor = center_crop(tensor, [crop, crop])
        tensors.append(_resize(tensor[None], size)[0])
    if len({t.shape[0] for t in tensors}) > 1:
        tensors = [t.expand(3, -1, -1) for t in tensors]
    if len({t.shape for t in tensors}) > 1:
        raise ConfigError(f"images under {Path(paths[0]).parents[1]} differ in size; set image_size")
    return torch.stack(tensors)


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str
    labels_key: str
    archive: str


_CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "label_names",
        "labels",
        "cifar-10-python.tar.gz",
    ),
    "cifar100": _CifarLayout(
        "cifar-100-python", ("train",), ("test",), "meta", "fine_label_names", "fine_labels", "cifar-100-python.tar.gz"
    ),
}


def _cifar(name: str, options: DataOptions) -> DatasetSplits:
    """Read the CIFAR pickles directly: torchvision's loader insists on the original checksums."""
    layout = _CIFAR[name]
    files = (*layout.train_files, *layout.test_files, layout.meta_file)
    how = (
        f"Get {layout.archive} from https://www.cs.toronto.edu/~kriz/cifar.html on a machine with "
        f"internet and extract it into the data root (it creates {layout.folder}/)."
    )
    folder = _require(name, options.data_root, [f"{layout.folder}/{f}" for f in files], how) / layout.folder

    def unpickle(file: str) -> dict:
        with open(folder / file, "rb") as handle:
            return pickle.load(handle, encoding="latin1")

    classes = unpickle(layout.meta_file)[layout.names_key]

    def part(batch_files: Sequence[str]) -> ImageDataset:
        batches = [unpickle(f) for f in batch_files]
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)  # rows are CHW
        labels = np.concatenate([b[layout.labels_key] for b in batches]).astype(np.int64)
        return _build(name, labels, classes, lambda keep: torch.from_numpy(data[keep]) / 255, options)

    return DatasetSplits(part(layout.train_files), part(layout.test_files))


@DATASETS.register("cifar10", "CIFAR-10 from <data_root>/cifar-10-batches-py (python pickles), 3x32x32")
def _cifar10(options: DataOptions) -> DatasetSplits:
    return _cifar("cifar10", options)


@DATASETS.register("cifar100", "CIFAR-100 from <data_root>/cifar-100-python, 3x32x32, 100 fine labels")
def _cifar100(options: DataOptions) -> DatasetSplits:
    return _cifar("cifar100", options)


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_like(name: str, torchvision_class: str, options: DataOptions) -> DatasetSplits:
    raw = f"{torchvision_class}/raw"
    how = (
        f"Put the four decompressed IDX files in <data_root>/{raw}/, e.g. by running "
        f"torchvision.datasets.{torchvision_class}(DIR, download=True) on a machine with internet "
        "and copying DIR."
    )
    root = _require(name, options.data_root, [f"{raw}/{f}" for f in _IDX_FILES], how)
    import torchvision.datasets

    def part(train: bool) -> ImageDataset:
        source = getattr(torchvision.datasets, torchvision_class)(str(root), train=train, download=False)
        images = source.data.unsqueeze(1)  # uint8 [N, 1, 28, 28]
        labels = source.targets.numpy()
        return _build(name, labels, source.classes, lambda keep: images[torch.from_numpy(keep)] / 255, options)

    return DatasetSplits(part(True), part(False))


@DATASETS.register("mnist", "MNIST from <data_root>/MNIST/raw (IDX files), 1x28x28")
def _mnist(options: DataOptions) -> DatasetSplits:
    return _mnist_like("mnist", "MNIST", options)


@DATASETS.register("fashion_mnist", "Fashion-MNIST from <data_root>/FashionMNIST/raw (IDX files), 1x28x28")
def _fashion_mnist(options: DataOptions) -> DatasetSplits:
    return _mnist_like("fashion_mnist", "FashionMNIST", options)


_CELEBA_FILES = (
    "img_align_celeba",
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)


@DATASETS.register(
    "celeba",
    f"CelebA aligned faces from <data_root>/celeba, centre 178x178 crop, label = {CELEBA_ATTRIBUTE!r} attribute",
)
def _celeba(options: DataOptions) -> DatasetSplits:
    """Official train and test partitions (valid is unused); decoding 160k JPEGs is slow, so cap
    with max_samples and shrink with image_size."""
    how = (
        "Get the aligned images (img_align_celeba.zip, extracted) and the annotation text files from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into <data_root>/celeba/."
    )
    root = _require("celeba", options.data_root, [f"celeba/{f}" for f in _CELEBA_FILES], how)
    from torchvision.datasets import CelebA

    def part(split: str) -> ImageDataset:
        try:
            source = CelebA(str(root), split=split, target_type="attr", download=False)
        except RuntimeError:  # its message suggests download=True, which we never do
            raise DataNotFoundError(
                f"dataset 'celeba': the annotation files under {root / 'celeba'} fail torchvision's "
                f"checksum check. {how}"
            ) from None
        labels = source.attr[:, source.attr_names.index(CELEBA_ATTRIBUTE)].numpy().astype(np.int64)
        paths = [root / "celeba" / "img_align_celeba" / f for f in source.filename]

        def load(keep: np.ndarray) -> torch.Tensor:
            return _read_images([paths[i] for i in keep], options.image_size, crop=178)

        return _build("celeba", labels, ["not_smiling", "smiling"], load, options)

    return DatasetSplits(part("train"), part("test"))


@DATASETS.register(
    "imagefolder", "<data_root>/{train,test}/<class>/*.png, or <data_root>/<class>/*.png split 80/20 by seed"
)
def _imagefolder(options: DataOptions) -> DatasetSplits:
    how = (
        "Put images as <data_root>/train/<class>/<image>.png and <data_root>/test/<class>/<image>.png, "
        f"or as <data_root>/<class>/<image>.png to hold out {TEST_FRACTION:.0%} of each class by seed."
    )
    root = _require("imagefolder", options.data_root, [], how)
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    split_folders = (root / "train").is_dir()
    if split_folders:
        _require("imagefolder", root, ["train", "test"], how)
    class_root = root / "train" if split_folders else root
    try:
        classes, class_to_idx = find_classes(class_root)
    except FileNotFoundError:
        raise DataNotFoundError(f"dataset 'imagefolder': no class folders in {class_root}. {how}") from None

    def samples(folder: Path) -> tuple[list[Path], np.ndarray]:
        # Images sit directly in each class folder: never walk deeper (a data_root such as "/"
        # must be refused at once, not scanned).
        found = []
        for name, index in class_to_idx.items():
            if not (folder / name).is_dir():  # a test split may lack a class
                continue
            images = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
            if not images:
                raise DataNotFoundError(f"dataset 'imagefolder': class folder {folder / name} holds no images. {how}")
            found += [(path, index) for path in images]
        if not found:
            raise DataNotFoundError(f"dataset 'imagefolder': no images under {folder}. {how}")
        return [p for p, _ in found], np.array([c for _, c in found], dtype=np.int64)

    def part(paths: Sequence[Path], labels: np.ndarray) -> ImageDataset:
        def load(keep: np.ndarray) -> torch.Tensor:
            return _read_images([paths[i] for i in keep], options.image_size)

        return _build("imagefolder", labels, classes, load, options)

    if split_folders:
        unknown = sorted(set(find_classes(root / "test")[0]) - set(classes))
        if unknown:
            raise DataNotFoundError(f"dataset 'imagefolder': test classes {unknown} have no train folder. {how}")
        return DatasetSplits(part(*samples(root / "train")), part(*samples(root / "test")))
    paths, labels = samples(root)
    train, test = _stratified_split(labels, TEST_FRACTION, options.seed)
    return DatasetSplits(
        part([paths[i] for i in train], labels[train]), part([paths[i] for i in test], labels[test])
    )
